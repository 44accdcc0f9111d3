"""Property-based fuzzing of live daemons: random and malformed frames never crash the
broker (it keeps answering) nor a worker (it stays up and connected)."""

from __future__ import annotations

import msgpack
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import protocol as p
from tests.cluster import Cluster, free_port, wait_for

_TYPES = [t.decode() for t in p.MESSAGE_TYPES] + ["NOPE", ""]
_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=64),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)
_bodies = st.one_of(
    st.binary(max_size=200),
    _values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    st.dictionaries(st.sampled_from(["req", "names", "job_id", "tasks", "results", "task_id", "state",
                                     "options", "slots", "running", "limit", "what"]), _values, max_size=6)
    .map(lambda d: msgpack.packb(d, use_bin_type=True)),
    st.just(msgpack.packb({"req": 1, "names": ["x"] * 50_000}, use_bin_type=True)),  # huge field
    st.just(b"\x91" * 5000 + b"\xc0"),  # deeply nested
)
_frames = st.one_of(
    st.lists(st.binary(max_size=64), min_size=1, max_size=6),
    st.tuples(st.sampled_from([p.VERSION, b"CUTQ0", b"CUTQ9", b""]), st.sampled_from(_TYPES).map(str.encode),
              _bodies, st.lists(st.binary(max_size=32), max_size=3))
    .map(lambda t: [t[0], t[1], t[2], *t[3]]),
)


def test_fuzzed_frames_never_crash_the_broker(cluster: Cluster):
    cluster.start_broker()
    ctx = zmq.Context()
    raw = ctx.socket(zmq.DEALER)
    raw.linger = 0
    raw.connect(cluster.endpoint)
    client = cluster.client(timeout=5)

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(_frames, min_size=1, max_size=10))
    def run(batch):
        for frames in batch:
            raw.send_multipart(frames)
        assert client.stats() is not None  # answered after every batch
        while raw.poll(0):
            raw.recv_multipart()

    try:
        run()
        assert cluster.broker.poll() is None
    finally:
        raw.close()
        ctx.term()


def test_fuzzed_frames_never_crash_a_worker(cluster: Cluster):
    """A fake broker (a raw ROUTER) the real worker connects to, sending it garbage."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = free_port()
    router.bind(f"tcp://127.0.0.1:{port}")
    cluster.endpoint = f"tcp://127.0.0.1:{port}"
    worker = cluster.start_worker(1, "--preload", "")
    try:
        assert router.poll(20_000), "worker never announced itself"
        ident = router.recv_multipart()[0]

        @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
        @given(_frames)
        def run(frames):
            router.send_multipart([ident, *frames])

        run()
        malformed_dispatch = [p.VERSION, b"DISPATCH", msgpack.packb({"tasks": [{}, {"task_id": "x"}]}), b"a", b"b"]
        router.send_multipart([ident, *malformed_dispatch])
        # still alive and still talking: its heartbeats keep coming
        while router.poll(0):
            router.recv_multipart()
        assert wait_for(lambda: router.poll(100) and p.decode(router.recv_multipart()[1:]), 10, what="a heartbeat")
        assert worker.poll() is None
    finally:
        router.close()
        ctx.term()
