"""`cutq fetch --out DIR` writes only inside DIR (issue 8 item 2, client side), on real processes.

A real broker; a fake worker (a DEALER speaking the worker protocol) returns the results, so
the test decides what a hostile or buggy worker sends back; the real `cutq fetch` writes them.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import zmq
from PIL import Image

from shared import protocol as p
from tests.cluster import Cluster


def png(colour: tuple[int, int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (2, 2), colour).save(buf, "PNG")
    return buf.getvalue()


class FakeWorker:
    """A worker that answers every dispatched task with a result the test chose."""

    def __init__(self, endpoint: str, ctx: zmq.Context) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.setsockopt(zmq.ROUTING_ID, b"w-fake-fetch")
        self.sock.connect(endpoint)
        self.send(p.Ready(name="fake", host="test", pid=1, slots=8, processors=["sleep"]))

    def send(self, msg: p.Message) -> None:
        self.sock.send_multipart(p.encode(msg))

    def serve(self, until, ext: str, blobs: dict[str, bytes], timeout: float = 30.0) -> None:
        """Heartbeat, and answer every dispatched task at once with blobs[name] as a result of
        extension `ext` (re-dispatches of a failed attempt too), until `until()` is true."""
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, "the job did not end"
            self.send(p.Heartbeat())
            if self.sock.poll(50):
                msg = p.decode(self.sock.recv_multipart())
                if isinstance(msg, p.Dispatch):
                    self.answer(msg.tasks, ext, blobs)

    def answer(self, tasks: list[dict], ext: str, blobs: dict[str, bytes]) -> None:
        results = p.Results(results=[{"task_id": t["task_id"], "attempt": t["attempt"], "ok": True, "ext": ext,
                                      "error": "", "error_kind": ""} for t in tasks])
        results.blobs = [blobs[t["name"]] for t in tasks]
        self.send(results)


@contextmanager
def fake_worker(cluster: Cluster) -> Iterator[FakeWorker]:
    ctx = zmq.Context()
    worker = FakeWorker(cluster.endpoint, ctx)
    try:
        yield worker
    finally:
        worker.sock.close(0)
        ctx.term()


def files_under(root: Path) -> set[str]:
    """Every path under root except the broker's own (its data dir and the daemons' logs)."""
    return {str(q.relative_to(root)) for q in root.rglob("*")
            if q.relative_to(root).parts[0] != "data" and q.suffix != ".log"}


def run_job(cluster: Cluster, names: list[str], ext: str, blobs: dict[str, bytes]) -> str:
    client = cluster.client()
    job = client.submit([(n, b"input") for n in names], processor="sleep", options={"seconds": 0})
    with fake_worker(cluster) as worker:
        worker.serve(lambda: client.status(job, tasks=False)["state"] in ("done", "failed"), ext, blobs)
    return job


def test_a_worker_extension_with_a_path_writes_nothing_outside_the_folder(cluster: Cluster, tmp_path: Path):
    """ext = "./../../ESCAPED": an older broker stored it, today's fails the task as an unknown format;
    either way nothing lands outside DIR, no traceback, and every done result has a distinct name."""
    cluster.start_broker()
    blobs = {"a.jpg": png((255, 0, 0, 255)), "a.png": png((0, 255, 0, 255))}
    job = run_job(cluster, ["a.jpg", "a.png"], "./../../ESCAPED", blobs)
    arena = tmp_path / "arena"
    out = arena / "one" / "two" / "out"
    out.mkdir(parents=True)
    before = files_under(tmp_path)
    r = cluster.cli("fetch", job, "--out", str(out), "--json")
    # today's broker failed the escaping results (unknown format): fetch names them and exits 1
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    written = [Path(w) for w in json.loads(r.stdout)["written"]]
    assert all(w.resolve().parent == out.resolve() for w in written), written
    new = files_under(tmp_path) - before
    assert all(path.startswith("arena/one/two/out/") for path in new), new
    assert not [q for q in tmp_path.rglob("*ESCAPED*")]
    done = [t for t in cluster.client().status(job)["tasks"] if t["state"] == "done"]
    assert len(written) == len(done) == len({w.name for w in written})
    if done:  # the broker accepted the extension: both results, distinct names, the right bytes
        assert sorted(w.name for w in written) == ["a-2.png", "a.png"]
        assert {(out / "a.png").read_bytes(), (out / "a-2.png").read_bytes()} == set(blobs.values())


def test_two_inputs_with_one_stem_both_come_back(cluster: Cluster, tmp_path: Path):
    """a.jpg and a.png both give `a.png`: the second is `a-2.png`, not a silent overwrite."""
    cluster.start_broker()
    blobs = {"a.jpg": png((255, 0, 0, 255)), "a.png": png((0, 255, 0, 255)), "A.webp": png((0, 0, 255, 255))}
    job = run_job(cluster, ["a.jpg", "a.png", "A.webp"], "png", blobs)
    out = tmp_path / "out"
    r = cluster.cli("fetch", job, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert sorted(q.name for q in out.iterdir()) == ["A-3.png", "a-2.png", "a.png"]
    # names are given in task order: the first input keeps the plain name
    assert (out / "a.png").read_bytes() == blobs["a.jpg"]
    assert (out / "a-2.png").read_bytes() == blobs["a.png"]
    assert (out / "A-3.png").read_bytes() == blobs["A.webp"]
    assert r.stdout.splitlines()[-1] == f"3 result(s) in {out}"
    # fetching again overwrites the same three files, it does not add a-4, a-5...
    assert cluster.cli("fetch", job, "--out", str(out)).returncode == 0
    assert sorted(q.name for q in out.iterdir()) == ["A-3.png", "a-2.png", "a.png"]


def test_a_link_in_the_folder_is_refused_and_the_rest_still_written(cluster: Cluster, tmp_path: Path):
    cluster.start_broker()
    blobs = {"first.jpg": png((1, 2, 3, 255)), "second.jpg": png((4, 5, 6, 255))}
    job = run_job(cluster, ["first.jpg", "second.jpg"], "png", blobs)
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("keep me")
    (out / "first.png").symlink_to(victim)
    r = cluster.cli("fetch", job, "--out", str(out))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "first.jpg" in r.stderr and "outside" in r.stderr, r.stderr
    assert victim.read_text() == "keep me"
    assert (out / "second.png").read_bytes() == blobs["second.jpg"]
    assert "1 result(s) in" in r.stdout


def raw_submit(endpoint: str, names: list[str]) -> p.Reply:
    """A SUBMIT straight onto the wire, past the client library's own name checks."""
    ctx = zmq.Context()
    raw = ctx.socket(zmq.DEALER)
    raw.linger = 0
    raw.connect(endpoint)
    try:
        submit = p.Submit(req=1, names=names, processor="sleep", options={"seconds": 0})
        submit.blobs = [b"input"] * len(names)
        raw.send_multipart(p.encode(submit))
        assert raw.poll(15_000), "no reply to the raw submit"
        reply = p.decode(raw.recv_multipart())
    finally:
        raw.close(0)
        ctx.term()
    assert isinstance(reply, p.Reply)
    return reply


HOSTILE = ["../../up.jpg", "..\\..\\win.jpg", "nul\x00byte.jpg", "new\nline.jpg", "x" * 5000 + ".jpg", "..",
           ".hidden.jpg", "ok.jpg"]


def test_hostile_input_names_sent_past_the_client(cluster: Cluster, tmp_path: Path):
    """Names the client library would refuse, sent raw: the broker refuses some itself (one clean
    error each); the ones it stores are fetched inside DIR under safe, distinct names."""
    cluster.start_broker()
    accepted = []
    for name in HOSTILE:
        reply = raw_submit(cluster.endpoint, [name])
        if reply.ok:
            accepted.append(name)
        else:
            assert reply.error and "\n" not in reply.error and reply.code != "internal", reply
    assert "ok.jpg" in accepted
    reply = raw_submit(cluster.endpoint, accepted)
    assert reply.ok, reply.error
    job = reply.data["job_id"]
    blobs = {n: png((i, i, i, 255)) for i, n in enumerate(HOSTILE)}
    client = cluster.client()
    with fake_worker(cluster) as worker:
        worker.serve(lambda: client.status(job, tasks=False)["state"] in ("done", "failed"), "png", blobs)
    assert client.status(job, tasks=False)["state"] == "done"
    out = tmp_path / "deep" / "out"
    before = files_under(tmp_path)
    r = cluster.cli("fetch", job, "--out", str(out), "--json")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    written = sorted(q.name for q in out.iterdir())
    assert files_under(tmp_path) - before - {"deep", "deep/out"} == {f"deep/out/{n}" for n in written}
    assert len(written) == len(accepted)
    assert all(len(n.encode()) <= 200 and "/" not in n and not n.startswith(".") for n in written), written
    assert "ok.png" in written
