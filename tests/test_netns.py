"""A silent network cut between hosts: broker and workers in separate network namespaces
joined by a veth pair (this kernel has no netem, so the far end's link is set down).
The cut-off worker is declared dead, its task re-runs elsewhere, and it rejoins by itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest

from tests.cluster import REPO, free_port, wait_for


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@pytest.fixture
def hosts():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    tag = uuid.uuid4().hex[:6]
    a, b, va, vb = f"cutqA{tag}", f"cutqB{tag}", f"cqa{tag}", f"cqb{tag}"
    if _ip("netns", "add", a, check=False).returncode != 0:
        pytest.skip("ip netns is not permitted here")
    try:
        _ip("netns", "add", b)
        _ip("link", "add", va, "type", "veth", "peer", "name", vb)
        _ip("link", "set", va, "netns", a)
        _ip("link", "set", vb, "netns", b)
        _ip("-n", a, "addr", "add", "10.231.77.1/24", "dev", va)
        _ip("-n", b, "addr", "add", "10.231.77.2/24", "dev", vb)
        for ns, dev in ((a, va), (b, vb)):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "up")
        yield {"a": a, "b": b, "vb": vb}
    finally:
        _ip("netns", "del", a, check=False)
        _ip("netns", "del", b, check=False)


def test_cut_link_worker_declared_dead_task_reruns_worker_rejoins(hosts, tmp_path):
    endpoint = f"tcp://10.231.77.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = []

    def spawn(ns: str, name: str, *args: str) -> subprocess.Popen:
        log = open(tmp_path / f"{name}.log", "wb")
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "shared.cli", *args],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        procs.append(proc)
        return proc

    def cli(*args: str) -> dict:
        r = subprocess.run(["ip", "netns", "exec", hosts["a"], sys.executable, "-m", "shared.cli", *args,
                            "--connect", endpoint, "--timeout", "3", "--json"],
                           capture_output=True, text=True, env=env, timeout=30)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    hb = ["--heartbeat", "0.5", "--liveness", "3"]
    try:
        spawn(hosts["a"], "broker", "broker", "--bind", endpoint, "--data", str(tmp_path / "data"),
              "--insecure", *hb)
        wait_for(lambda: _ok(cli, "stats"), 20, what="broker in namespace A")
        spawn(hosts["b"], "far", "worker", "--connect", endpoint, "--name", "far", "--preload", "", *hb)
        wait_for(lambda: _alive(cli, "far"), 30, what="far worker")
        f = tmp_path / "t.png"
        f.write_bytes(b"t")
        job = cli("submit", str(f), "--processor", "sleep", "--seconds", "4")["job_id"]
        wait_for(lambda: cli("status", job)["running"] == 1, 20, what="task running on the far worker")
        spawn(hosts["a"], "near", "worker", "--connect", endpoint, "--name", "near", "--preload", "", *hb)
        wait_for(lambda: _alive(cli, "near"), 30, what="near worker")
        _ip("-n", hosts["b"], "link", "set", hosts["vb"], "down")  # silent: no FIN, no RST
        wait_for(lambda: any(w["name"] == "far" and w["state"] == "dead" for w in cli("workers")["workers"]),
                 5, what="far worker declared dead")
        status = wait_for(lambda: (s := cli("status", job))["state"] == "done" and s, 30, what="re-run")
        names = {w["id"]: w["name"] for w in cli("workers")["workers"]}
        assert names.get(status["tasks"][0]["worker"]) == "near"
        _ip("-n", hosts["b"], "link", "set", hosts["vb"], "up")
        wait_for(lambda: _alive(cli, "far"), 30, what="far worker rejoining after the link returns")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def _ok(cli, *args) -> bool:
    try:
        cli(*args)
        return True
    except AssertionError:
        return False


def _alive(cli, name: str) -> bool:
    try:
        return any(w["name"] == name and w["state"] == "alive" for w in cli("workers")["workers"])
    except AssertionError:
        return False
