"""Property-based fuzzing of live daemons: random and malformed frames never crash the broker
(it keeps answering, then still runs a real job) nor a worker (it stays up, keeps its
heartbeats coming and still runs a well-formed task afterwards)."""

from __future__ import annotations

import random
import time

import msgpack
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import protocol as p
from tests.cluster import Cluster, free_port, wait_for

_TYPES = [t.decode() for t in p.MESSAGE_TYPES] + ["NOPE", "", "STATS\x00", "x" * 300]
_FIELDS = sorted({f for cls in p.MESSAGE_TYPES.values() for f in cls.__dataclass_fields__ if f != "blobs"})
_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=64),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)
_rng = random.Random(5)
_HUGE = [  # several MB each, built once
    msgpack.packb({"req": 1, "job_id": "x" * 3_000_000}),  # a string field over MAX_STR
    msgpack.packb({"req": 1, "names": ["a"], "options": {"k": b"\0" * 3_500_000}}),  # a 3.5 MB bin field
    _rng.randbytes(5 * 1024 * 1024),  # a body over MAX_BODY_BYTES
    msgpack.packb({"req": 1, "names": ["x"] * 90_000}),  # a long list
    msgpack.packb({"results": [{"task_id": i, "attempt": 1, "ok": True} for i in range(50_000)]}),
]
_bodies = st.one_of(
    st.binary(max_size=200),
    _values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    # the right field names with random values: wrong types, out-of-range numbers, odd nesting
    st.dictionaries(st.sampled_from(_FIELDS), _values, max_size=6).map(lambda d: msgpack.packb(d, use_bin_type=True)),
    st.sampled_from(_HUGE),
    st.integers(1, 200_000).map(lambda depth: b"\x91" * depth + b"\xc0"),  # deeply nested arrays
    st.integers(1, 200_000).map(lambda depth: b"\x81\xa1k" * depth + b"\xc0"),  # deeply nested maps
)
_frames = st.one_of(
    st.lists(st.binary(max_size=64), min_size=1, max_size=6),  # random bytes
    st.tuples(st.sampled_from([p.VERSION, b"CUTQ0", b"CUTQ2", b"cutq1", b""]),  # known and unknown versions
              st.sampled_from(_TYPES).map(str.encode), _bodies,
              st.lists(st.binary(max_size=32) | st.just(b"\xff" * (6 * 1024 * 1024)), max_size=3))
    .map(lambda t: [t[0], t[1], t[2], *t[3]]),
)


def test_fuzzed_frames_never_crash_the_broker(cluster: Cluster):
    cluster.start_broker()
    ctx = zmq.Context()
    raw = ctx.socket(zmq.DEALER)
    raw.linger = 0
    raw.connect(cluster.endpoint)
    client = cluster.client(timeout=5)
    sent = [0]

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(_frames, min_size=1, max_size=10))
    def run(batch):
        for frames in batch:
            raw.send_multipart(frames)
            sent[0] += 1
        assert client.stats() is not None  # it answered after every batch
        assert cluster.broker.poll() is None
        while raw.poll(0):
            raw.recv_multipart()

    try:
        started = time.monotonic()
        run()
        print(f"fuzz: {sent[0]} frame lists sent to the broker in {time.monotonic() - started:.1f}s")
    finally:
        raw.close()
        ctx.term()
    assert cluster.broker.poll() is None
    # still fully working: a real worker runs a real job (a fuzzed READY may have registered the raw
    # socket as a worker that never answers: it is declared dead and its task re-queued)
    cluster.start_worker(1, "--preload", "")
    client = cluster.client()
    job = client.submit([("after.png", b"after")], processor="noop")
    assert client.wait(job, timeout=30)["state"] == "done"


_task = st.dictionaries(
    st.sampled_from(["task_id", "attempt", "processor", "options", "name", "job_id"]),
    _values | st.sampled_from(["noop", "sleep", "rembg"]), max_size=6,
)
_worker_frames = st.one_of(
    _frames,
    # well-formed messages with malformed contents, the kinds a worker actually handles
    st.tuples(st.lists(_task, max_size=4), st.lists(st.binary(max_size=16), max_size=4)).map(
        lambda t: [p.VERSION, b"DISPATCH", msgpack.packb({"tasks": t[0]}), *t[1]]),
    st.lists(st.integers(-2**63, 2**64 - 1), max_size=5).map(
        lambda ids: [p.VERSION, b"CANCEL_TASKS", msgpack.packb({"task_ids": ids})]),
    st.sampled_from([p.encode(p.Disconnect(reason="fuzz")), p.encode(p.Heartbeat()),
                     p.encode(p.Reply(req=0, ok=False, error="fuzz"))]),
)


def test_fuzzed_frames_never_crash_a_worker(cluster: Cluster):
    """A fake broker (a raw ROUTER) the real worker connects to, sending it garbage."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.setsockopt(zmq.ROUTER_HANDOVER, 1)  # the worker may reconnect with its identity
    port = free_port()
    router.bind(f"tcp://127.0.0.1:{port}")
    cluster.endpoint = f"tcp://127.0.0.1:{port}"
    worker = cluster.start_worker(1, "--preload", "")
    try:
        assert router.poll(20_000), "worker never announced itself"
        ident = router.recv_multipart()[0]

        @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.lists(_worker_frames, min_size=1, max_size=5))
        def run(batch):
            for frames in batch:
                router.send_multipart([ident, *frames])
            assert worker.poll() is None
            while router.poll(0):
                router.recv_multipart()

        run()
        malformed = [p.VERSION, b"DISPATCH", msgpack.packb({"tasks": [{}, {"task_id": "x"}]}), b"a", b"b"]
        router.send_multipart([ident, *malformed])
        assert worker.poll() is None
        # still talking (heartbeats keep coming) and still working: a well-formed task gets its result
        while router.poll(0):
            router.recv_multipart()
        wait_for(lambda: router.poll(100) and isinstance(p.decode(router.recv_multipart()[1:]),
                                                         p.Heartbeat | p.Ready), 10, what="a heartbeat")
        task = {"task_id": 424242, "attempt": 7, "name": "ok.png", "processor": "noop", "options": {},
                "job_id": "j"}
        dispatch = p.Dispatch(tasks=[task])
        dispatch.blobs = [b"\x89PNG still works"]

        def answered() -> bool:
            router.send_multipart([ident, *p.encode(dispatch)])
            deadline = time.monotonic() + 1.0
            while router.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                msg = p.decode(router.recv_multipart()[1:])
                if isinstance(msg, p.Results) and any(r.get("task_id") == 424242 and r.get("ok")
                                                      for r in msg.results):
                    return msg.blobs == [b"\x89PNG still works"]
            return False

        assert wait_for(answered, 15, interval=0, what="a result for a well-formed task")
        assert worker.poll() is None
    finally:
        router.close()
        ctx.term()
