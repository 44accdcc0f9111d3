"""A silent network cut between hosts: the broker in one network namespace, a worker in
another, joined by a veth pair (this kernel has no netem, so the far end's link is set
down: no FIN, no RST, packets just stop).  The cut-off worker is declared dead within
liveness, its task re-runs on a worker on the broker's side, its late result is dropped,
and once the link returns it rejoins by itself and gets work again."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import pytest

from tests.cluster import REPO, free_port, wait_for

HEARTBEAT, LIVENESS = 0.25, 3

# Runs inside namespace A: samples the broker's worker list every 20 ms, one JSON line each,
# stamped with CLOCK_MONOTONIC (not namespaced), so the test can time the declaration exactly.
_WATCHER = """
import json, sys, time
from shared.client import Client, CutqError
c = Client(sys.argv[1], timeout=2)
while True:
    try:
        states = {w["name"]: w["state"] for w in c.workers()}
    except CutqError:
        continue
    print(json.dumps([time.monotonic(), states]), flush=True)
    time.sleep(0.02)
"""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@pytest.fixture
def hosts():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    tag = uuid.uuid4().hex[:6]
    a, b, va, vb = f"cutqA{tag}", f"cutqB{tag}", f"cqa{tag}", f"cqb{tag}"
    made = _ip("netns", "add", a, check=False)
    if made.returncode != 0:
        pytest.skip(f"ip netns is not permitted here: {made.stderr.strip()}")
    try:
        _ip("netns", "add", b)
        _ip("link", "add", va, "type", "veth", "peer", "name", vb)
        _ip("link", "set", va, "netns", a)
        _ip("link", "set", vb, "netns", b)
        _ip("-n", a, "addr", "add", "10.231.0.1/24", "dev", va)
        _ip("-n", b, "addr", "add", "10.231.0.2/24", "dev", vb)
        for ns, dev in ((a, va), (b, vb)):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "up")
        yield {"a": a, "b": b, "vb": vb}
    finally:
        _ip("netns", "del", a, check=False)  # deleting a namespace deletes its end of the veth pair
        _ip("netns", "del", b, check=False)


@pytest.mark.timeout(180)  # a cut link, a death by silence, a rejoin; six 30 s waits
def test_cut_link_worker_declared_dead_task_reruns_worker_rejoins(hosts, tmp_path):
    endpoint = f"tcp://10.231.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs: list[subprocess.Popen] = []

    def spawn(ns: str, name: str, *args: str) -> subprocess.Popen:
        with open(tmp_path / f"{name}.log", "wb") as log:  # the child keeps its own copy of the fd
            proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "cli", *args],
                                    stdout=log, stderr=subprocess.STDOUT, env=env)
        procs.append(proc)  # `ip netns exec` execs: this pid is the daemon itself
        return proc

    def cli(*args: str) -> dict:
        """The real `cutq` command, run from the broker's namespace."""
        r = subprocess.run(["ip", "netns", "exec", hosts["a"], sys.executable, "-m", "cli", *args,
                            "--connect", endpoint, "--timeout", "3", "--json"],
                           capture_output=True, text=True, env=env, timeout=30)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    samples: list[tuple[float, dict]] = []

    def first_seen(name: str, state: str, after: float = 0.0) -> float | None:
        return next((t for t, s in list(samples) if t >= after and s.get(name) == state), None)

    hb = ["--heartbeat", str(HEARTBEAT), "--liveness", str(LIVENESS)]
    try:
        spawn(hosts["a"], "broker", "broker", "--bind", endpoint, "--data", str(tmp_path / "data"),
              "--insecure", *hb)
        watcher = subprocess.Popen(["ip", "netns", "exec", hosts["a"], sys.executable, "-c", _WATCHER, endpoint],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        procs.append(watcher)
        threading.Thread(target=lambda: [samples.append(tuple(json.loads(line))) for line in watcher.stdout],
                         daemon=True).start()
        wait_for(lambda: samples, 20, what="broker answering in namespace A")
        spawn(hosts["b"], "far", "worker", "--connect", endpoint, "--name", "far", "--preload", "", *hb)
        wait_for(lambda: first_seen("far", "alive"), 30, what="far worker")
        f = tmp_path / "t.png"
        f.write_bytes(b"t")
        job = cli("submit", str(f), "--processor", "sleep", "--seconds", "4")["job_id"]
        wait_for(lambda: cli("status", job)["running"] == 1, 20, what="task running on the far worker")
        near = spawn(hosts["a"], "near", "worker", "--connect", endpoint, "--name", "near", "--preload", "", *hb)
        wait_for(lambda: first_seen("near", "alive"), 30, what="near worker")

        cut = time.monotonic()
        _ip("-n", hosts["b"], "link", "set", hosts["vb"], "down")  # silent: no FIN, no RST
        dead_at = wait_for(lambda: first_seen("far", "dead", cut), 10, what="far worker declared dead")
        detected = dead_at - cut
        print(f"cut link: far worker declared dead {detected:.3f}s after the cut "
              f"(liveness {HEARTBEAT * LIVENESS}s)")
        # silent for liveness, noticed at the next purge (a heartbeat later at most), 20 ms sampling
        assert detected < HEARTBEAT * (LIVENESS + 1) + 0.3, detected

        status = wait_for(lambda: (s := cli("status", job))["state"] == "done" and s, 30, what="re-run")
        task = status["tasks"][0]
        names = {w["id"]: w["name"] for w in cli("workers")["workers"]}
        assert [(names[h["worker"]], h["outcome"]) for h in task["history"]] == [("far", "lost"), ("near", "done")]

        _ip("-n", hosts["b"], "link", "set", hosts["vb"], "up")
        back = time.monotonic()
        rejoined = wait_for(lambda: first_seen("far", "alive", back), 30, what="far worker rejoining")
        print(f"link restored: far worker rejoined after {rejoined - back:.3f}s")
        # its slot finished attempt 1 while cut off; whatever it sent late was not counted
        db = sqlite3.connect(f"file:{tmp_path / 'data' / 'cutq.db'}?mode=ro", uri=True)
        try:
            assert db.execute("SELECT COUNT(*) FROM attempts WHERE task_id = ? AND outcome = 'done'",
                              (task["task_id"],)).fetchone()[0] == 1
        finally:
            db.close()
        # and it gets work again: with the near worker gone, only it can run this
        near.terminate()
        assert near.wait(timeout=15) == 0
        again = cli("submit", str(f), "--processor", "sleep", "--seconds", "0")["job_id"]
        status = wait_for(lambda: (s := cli("status", again))["state"] == "done" and s, 30, what="work on far")
        names = {w["id"]: w["name"] for w in cli("workers")["workers"]}
        assert names[status["tasks"][0]["worker"]] == "far"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:  # the watcher's pipe (its reader thread has hit EOF)
                p.stdout.close()
