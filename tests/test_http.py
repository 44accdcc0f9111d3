"""The HTTP gateway (`cutq http`) end to end: a real uvicorn server in a subprocess, driven by httpx,
in front of a real broker and worker (tests/cluster.py).

Each test starts `python -m cli http ...` exactly as a user would, on a free loopback port,
with its own tokens file (made by the real `cutq tokens` command) or none.
"""

from __future__ import annotations

import io
import json
import signal
import socket
import stat
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.cluster import Cluster, free_port, sample_photo, wait_for
from tests.test_security import Keys, keys, secure  # noqa: F401  (fixtures)
from tests.test_systemd_units import (
    COMMON,
    INSTALL_PREFIX,
    TRUE,
    UNIT_DIR,
    _our_messages,
    _unusable_reason,
    _verify,
    one,
    parse_unit,
)

TINY = b"\x89PNG\r\n\x1a\n tiny"  # the noop processor hands its input back


class Gateway:
    """One `cutq http` process; `http(token)` gives an httpx client that sends that token."""

    def __init__(self, cluster: Cluster, *args: str, tokens: Path | None = None, env: dict | None = None,
                 name: str = "http") -> None:
        self.cluster, self.port = cluster, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cluster.tmp / f"{name}.log"
        # XDG_CONFIG_HOME: a default tokens file in the real home must not change what is tested
        self.env = {**cluster.env, "XDG_CONFIG_HOME": str(cluster.tmp / "config"), **(env or {})}
        self.env.pop("CUTQ_TOKENS", None)
        cmd = [sys.executable, "-m", "cli", "http", "--connect", cluster.endpoint,
               "--listen", f"127.0.0.1:{self.port}", "--timeout", "5", *args]
        if tokens is not None:
            cmd += ["--tokens", str(tokens)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=cluster.tmp)
        self._clients: list[httpx.Client] = []
        wait_for(self._up, 30, 0.1, what=f"cutq http on {self.url}")

    def _up(self) -> bool:
        assert self.proc.poll() is None, f"cutq http exited {self.proc.returncode}: {self.log.read_text()}"
        try:
            return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def http(self, token: str | None = None, timeout: float = 30.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        c = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._clients.append(c)
        return c

    def stop(self) -> int:
        for c in self._clients:
            c.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def gateways(cluster: Cluster) -> Iterator[list[Gateway]]:
    started: list[Gateway] = []
    yield started
    for g in started:
        g.stop()
        print(f"--- {g.log.name}\n{g.log.read_text(errors='replace')[-3000:]}")


def start(gateways: list[Gateway], cluster: Cluster, *args: str, **kwargs: Any) -> Gateway:
    g = Gateway(cluster, *args, **kwargs)
    gateways.append(g)
    return g


def cutq(cluster: Cluster, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=60,
                          env={**cluster.env, **(env or {})}, cwd=cluster.tmp, check=False)


def add_token(cluster: Cluster, path: Path, name: str, tenant: str, role: str = "client") -> str:
    r = cutq(cluster, "tokens", "add", name, "--tenant", tenant, "--role", role, "--file", str(path), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["token"]


def submit(http: httpx.Client, files: list[tuple[str, bytes]], **fields: Any) -> httpx.Response:
    return http.post("/v1/jobs", files=[("files", (n, data, "application/octet-stream")) for n, data in files],
                     data={k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()})


def wait_done(http: httpx.Client, job_id: str, timeout: float = 30) -> dict:
    def finished() -> dict | None:
        status = http.get(f"/v1/jobs/{job_id}").raise_for_status().json()
        return status if status["state"] in ("done", "failed", "cancelled") else None
    return wait_for(finished, timeout, 0.1, what=f"job {job_id} to end")


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))


# ---------------------------------------------------------------- the real pipeline


@pytest.mark.timeout(240)  # real inference on two photos, twice (the queue's and rembg's own)
def test_rembg_cutouts_over_http_are_rembg_remove_pixels_and_the_zip_holds_them_all(
        cluster: Cluster, gateways: list[Gateway], needs_model):
    import onnxruntime as ort
    import rembg

    cluster.start_broker()
    cluster.start_worker(1, "--threads", "1")
    tokens = cluster.tmp / "tokens.json"
    alice = add_token(cluster, tokens, "alice", "A")
    http = start(gateways, cluster, tokens=tokens).http(alice)
    photos = {n: sample_photo(n).read_bytes() for n in ("chelsea.png", "coffee.png")}

    r = submit(http, list(photos.items()), processor="rembg", model="u2netp")
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert accepted["tasks"] == 2 and r.headers["location"] == accepted["status_url"]
    status = wait_done(http, accepted["job_id"], 150)
    assert status["state"] == "done", status
    assert status["tenant"] == "A"

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = rembg.new_session("u2netp", sess_opts=opts)
    results = {}
    for task in status["tasks"]:
        got = http.get(task["result_url"])
        assert got.status_code == 200, got.text
        assert got.headers["content-type"] == "image/png"
        want = pixels(rembg.remove(photos[task["name"]], session=session))
        have = pixels(got.content)
        assert have.shape == want.shape and have.shape[2] == 4
        assert np.array_equal(have, want), f"{task['name']}: {np.count_nonzero(have != want)} values differ"
        results[task["name"]] = got.content

    z = http.get(accepted["results_url"])
    assert z.status_code == 200 and z.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(z.content)) as archive:
        assert archive.testzip() is None
        assert sorted(archive.namelist()) == ["chelsea.png", "coffee.png"]
        for name in photos:
            assert archive.read(name) == results[name]  # every result, byte for byte


def test_zip_names_are_safe_and_distinct_and_jobs_and_tasks_must_match(cluster: Cluster, gateways: list[Gateway]):
    """noop hands each input back: the zip must hold one file per task under safe, distinct names."""
    cluster.start_broker()
    cluster.start_worker(1, "--preload", "")
    tokens = cluster.tmp / "tokens.json"
    alice, root = add_token(cluster, tokens, "alice", "A"), add_token(cluster, tokens, "root", "A", "admin")
    gw = start(gateways, cluster, tokens=tokens)
    http = gw.http(alice)
    inputs = [("a.png", TINY + b"1"), ("a.jpg", TINY + b"2"), ("../../etc/passwd", TINY + b"3"), ("A.PNG", TINY + b"4")]
    job = submit(http, inputs, processor="noop").json()["job_id"]
    status = wait_done(http, job)
    assert status["done"] == 4, status
    with zipfile.ZipFile(io.BytesIO(http.get(f"/v1/jobs/{job}/results.zip").content)) as archive:
        names = archive.namelist()
        assert len(names) == 4 and len({n.casefold() for n in names}) == 4, names
        assert all("/" not in n and "\\" not in n and not n.startswith(".") for n in names), names
        assert sorted(archive.read(n) for n in names) == sorted(d for _, d in inputs)
    # a task of this job under another job's id is not found; so is a task that does not exist
    other = submit(http, [("b.png", TINY)], processor="noop").json()["job_id"]
    wait_done(http, other)
    first = status["tasks"][0]["task_id"]
    assert http.get(f"/v1/jobs/{other}/tasks/{first}/result").status_code == 404
    assert http.get(f"/v1/jobs/{job}/tasks/999999/result").json()["code"] == "not_found"
    # bad options and files: 400 with the broker's or the gateway's message
    bad = submit(http, [("x.png", TINY)], processor="rembg", model="no-such-model")
    assert bad.status_code == 400 and "no-such-model" in bad.json()["error"]
    assert submit(http, [("x.png", TINY)], processor="noop", alpha_matting=True).status_code == 400
    assert submit(http, [("x.png", TINY)], processor="magic").status_code == 400
    assert http.post("/v1/jobs", data={"processor": "noop"}).json()["code"] == "bad_request"  # no files
    assert http.get("/v1/jobs", params={"limit": 0}).status_code == 400
    page = http.get("/v1/jobs", params={"limit": 1, "offset": 1, "state": "done"}).json()
    assert page["total"] == 2 and len(page["jobs"]) == 1 and page["offset"] == 1
    # an admin token in open mode sees every tenant's jobs, asking without as_tenant
    assert gw.http(root).get(f"/v1/jobs/{job}").json()["tenant"] == "A"


def test_queue_full_is_429_with_retry_after_and_a_big_body_is_413(cluster: Cluster, gateways: list[Gateway]):
    cluster.start_broker("--max-queued", "1")  # no worker: the first task stays queued
    http = start(gateways, cluster, "--max-upload-mb", "0.1").http()
    assert submit(http, [("one.png", TINY)], processor="noop").status_code == 202
    r = submit(http, [("two.png", TINY)], processor="noop")
    assert r.status_code == 429, r.text
    assert r.json()["code"] == "queue_full"
    assert int(r.headers["retry-after"]) >= 1
    # over --max-upload-mb: refused before the broker sees it
    big = submit(http, [("chelsea.png", sample_photo("chelsea.png").read_bytes())], processor="noop")
    assert big.status_code == 413 and big.json()["code"] == "too_large"
    head = b'--b\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n\r\n'
    chunked = http.post("/v1/jobs", content=iter([head, *[b"x" * 65536] * 4, b"\r\n--b--\r\n"]),
                        headers={"content-type": "multipart/form-data; boundary=b"})  # no Content-Length
    assert chunked.status_code == 413, chunked.text
    # once the queue has room again, the same submission is taken
    http.delete(f"/v1/jobs/{http.get('/v1/jobs').json()['jobs'][0]['job_id']}").raise_for_status()
    assert submit(http, [("two.png", TINY)], processor="noop").status_code == 202
    # the gateway's own metrics saw all of it, by route template and status
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(http.get("/metrics").text) for s in f.samples}
    posts = {dict(k[1])["status"]: v for k, v in samples.items()
             if k[0] == "cutq_http_requests_total" and dict(k[1]).get("route") == "/v1/jobs"
             and dict(k[1]).get("method") == "POST"}
    assert posts.get("202") == 2 and posts.get("429") == 1 and posts.get("413", 0) >= 1, posts
    refused = sum(v for k, v in samples.items() if k[0] == "cutq_http_requests_total" and dict(k[1])["status"] == "413")
    assert refused == 2  # one refused by its Content-Length before routing, one as it streamed in
    assert samples[("cutq_http_request_seconds_count", (("method", "DELETE"), ("route", "/v1/jobs/{job_id}")))] == 1


def test_a_job_no_live_worker_can_run_is_taken_with_a_warning_in_the_body(cluster: Cluster, gateways: list[Gateway]):
    """No worker at all: a u2netp job is still taken (202) and its body says why it will wait, instead of the
    library's CutqWarning going to the gateway's stderr; a noop job (no model: anyone runs it) has no `warning`."""
    cluster.start_broker()
    gw = start(gateways, cluster)
    http = gw.http()
    r = submit(http, [("a.png", TINY)], processor="rembg", model="u2netp")
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["warning"].startswith("no live worker serves model u2netp") and body["tasks"] == 1, body
    assert http.get(f"/v1/jobs/{body['job_id']}").json()["state"] == "queued"  # a warning, not a refusal
    r = submit(http, [("b.png", TINY)], processor="noop")
    assert r.status_code == 202 and "warning" not in r.json(), r.text
    assert "CutqWarning" not in gw.log.read_text()
    schema = http.get("/openapi.json").json()["components"]["schemas"]["JobAccepted"]
    assert "warning" in schema["properties"] and "warning" not in schema.get("required", [])


# ---------------------------------------------------------------- who sees what


def test_a_token_sees_only_its_tenant_through_a_gateway_key(cluster: Cluster, secure: Keys,
                                                            gateways: list[Gateway]):
    """CURVE on, the gateway holding a `gateway` broker key: each token acts for its own tenant."""
    secure.add("gw", "gateway")
    tokens = cluster.tmp / "tokens.json"
    alice_t, bob_t = add_token(cluster, tokens, "alice", "A"), add_token(cluster, tokens, "bob", "B")
    root_t = add_token(cluster, tokens, "root", "A", "admin")
    gw = start(gateways, cluster, "--key", str(secure.certs["gw"]), "--server-key", str(secure.server),
               "--access-log", tokens=tokens)
    alice, bob = gw.http(alice_t), gw.http(bob_t)
    job = submit(alice, [("a.png", TINY)], processor="noop").json()["job_id"]
    assert cluster.client(credentials=secure.creds("alice")).status(job)["tenant"] == "A"  # the broker agrees
    task = alice.get(f"/v1/jobs/{job}").json()["tasks"][0]["task_id"]
    for method, path in (("GET", f"/v1/jobs/{job}"), ("GET", f"/v1/jobs/{job}/results.zip"),
                         ("GET", f"/v1/jobs/{job}/tasks/{task}/result"), ("GET", f"/v1/jobs/{job}/events"),
                         ("DELETE", f"/v1/jobs/{job}"), ("POST", f"/v1/jobs/{job}/retry")):
        r = bob.request(method, path)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
        assert r.json()["code"] == "not_found"
    # a job over the client library's part size goes as a streamed upload: every part names the tenant too
    big = [(f"big-{i}.png", TINY + bytes([i]) * (5 * 1024 * 1024)) for i in range(2)]
    r = submit(alice, big, processor="noop")
    assert r.status_code == 202, r.text
    assert cluster.client(credentials=secure.creds("alice")).status(r.json()["job_id"])["total"] == 2
    assert bob.get("/v1/jobs").json()["total"] == 0
    assert alice.get("/v1/jobs").json()["total"] == 2
    assert bob.get("/v1/stats").json()["by_tenant"].keys() == {"B"}
    # a gateway key may not act as an admin: an admin token is refused by the broker, not widened
    assert gw.http(root_t).get("/v1/jobs").status_code == 403
    # no token, a wrong one, a revoked one: 401, and nothing about why
    anon = gw.http()
    r = anon.get(f"/v1/jobs/{job}")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert gw.http("cutq_" + "x" * 43).get("/v1/jobs").status_code == 401
    r = cutq(cluster, "tokens", "revoke", "bob", "--file", str(tokens))
    assert r.returncode == 0, r.stderr
    wait_for(lambda: bob.get("/v1/jobs").status_code == 401, 5, what="revocation to take effect")
    assert alice.get("/v1/jobs").status_code == 200
    # tokens are kept hashed, in a private file, and never logged
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    stored = tokens.read_text()
    text = gw.log.read_text()
    assert "GET /v1/jobs" in text  # the access log is on, so this check means something
    for t in (alice_t, bob_t, root_t):
        assert t not in stored and t not in text
    # /readyz works with a gateway key (which must always name a tenant)
    cluster.start_worker(1, "--preload", "", env=secure.worker_env("w1"))
    wait_for(lambda: anon.get("/readyz").status_code == 200, 30, what="readyz with a gateway key")


# ---------------------------------------------------------------- events and readiness


def test_events_arrive_in_order_as_server_sent_events(cluster: Cluster, gateways: list[Gateway]):
    cluster.start_broker()
    http = start(gateways, cluster).http()  # no tokens file: loopback, tenant default
    job = submit(http, [("slow.png", TINY)], processor="sleep", seconds=0.3).json()["job_id"]
    events: list[tuple[str, dict]] = []
    ids: list[int] = []
    first = threading.Event()

    def read() -> None:
        with http.stream("GET", f"/v1/jobs/{job}/events") as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            name, data = "", ""
            for line in r.iter_lines():
                if line.startswith("id: "):
                    ids.append(int(line[4:]))
                elif line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif line == "" and name:
                    events.append((name, json.loads(data)))
                    first.set()
                    name = ""
        first.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert first.wait(20)
    cluster.start_worker(1, "--preload", "")  # only now can the task run
    reader.join(40)
    assert not reader.is_alive(), "the stream did not end after the job did"
    kinds = [k for k, _ in events]
    assert kinds[0] == "status" and kinds[-1] == "end", kinds
    assert events[-1][1] == {"job_id": job, "state": "done"}
    states = [events[0][1]["tasks"][0]["state"]] + [e["state"] for k, e in events if k == "task"]
    assert states == ["queued", "running", "done"], events
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # a job's events stream ends at once when the job is over already
    with http.stream("GET", f"/v1/jobs/{job}/events") as r:
        lines = [ln for ln in r.iter_lines() if ln.startswith("event: ")]
    assert lines == ["event: status", "event: end"]


def test_readyz_follows_the_broker_and_its_workers(cluster: Cluster, gateways: list[Gateway]):
    cluster.start_broker()
    gw = start(gateways, cluster)
    http = gw.http()
    r = http.get("/readyz")
    assert r.status_code == 503 and r.json()["broker"] is True and r.json()["workers"] == 0  # no worker yet
    cluster.start_worker(1, "--preload", "")
    wait_for(lambda: http.get("/readyz").status_code == 200, 30, what="readyz 200 with a worker")
    cluster.broker.send_signal(signal.SIGINT)
    cluster.broker.wait(15)
    r = wait_for(lambda: (x := http.get("/readyz")).status_code == 503 and x, 15, what="readyz 503 without broker")
    assert r.json()["broker"] is False
    assert http.get("/healthz").status_code == 200  # the process itself is fine
    assert submit(http, [("x.png", TINY)], processor="noop").status_code == 503
    cluster.start_broker()
    wait_for(lambda: http.get("/readyz").status_code == 200, 30, what="readyz 200 after the broker is back")


# ---------------------------------------------------------------- the command and its unit


def test_without_tokens_it_serves_loopback_only_and_tells_systemd_when_ready(cluster: Cluster, tmp_path: Path):
    r = cutq(cluster, "http", "--listen", "0.0.0.0:1", env={"XDG_CONFIG_HOME": str(tmp_path / "cfg")})
    assert r.returncode == 2 and "--insecure" in r.stderr and "Traceback" not in r.stderr
    # sd_notify: READY=1 once serving, WATCHDOG=1 while the loop runs, STOPPING=1 on SIGTERM, exit 0
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(20)
    port = free_port()
    env = {**cluster.env, "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "NOTIFY_SOCKET": str(path),
           "WATCHDOG_USEC": "2000000"}
    log = tmp_path / "notify-http.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli", "http", "--connect", cluster.endpoint,
                                 "--listen", f"127.0.0.1:{port}"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        got: list[str] = []
        while not {"READY=1", "WATCHDOG=1"} <= set(got):
            got += sock.recv(4096).decode().splitlines()
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"ok": True}
        proc.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in got:
            got += sock.recv(4096).decode().splitlines()
        assert proc.wait(15) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()


def test_tokens_command_prints_a_token_once_and_keeps_only_its_hash(cluster: Cluster, tmp_path: Path):
    path = tmp_path / "private" / "tokens.json"
    r = cutq(cluster, "tokens", "add", "alice", "--tenant", "A", "--file", str(path))
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip().splitlines()[-1]
    assert token.startswith("cutq_") and len(token) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert token not in path.read_text()
    listed = cutq(cluster, "tokens", "list", "--file", str(path))
    assert "alice" in listed.stdout and token not in listed.stdout and "active" in listed.stdout
    again = cutq(cluster, "tokens", "add", "alice", "--tenant", "A", "--file", str(path))
    assert again.returncode == 2 and "exists" in again.stderr
    assert cutq(cluster, "tokens", "add", "../x", "--tenant", "A", "--file", str(path)).returncode == 2
    assert cutq(cluster, "tokens", "add", "nobody", "--file", str(path)).returncode == 2  # a client needs a tenant
    assert cutq(cluster, "tokens", "revoke", "alice", "--file", str(path)).returncode == 0
    entries = json.loads(cutq(cluster, "tokens", "--json", "list", "--file", str(path)).stdout)["tokens"]
    assert [(e["name"], bool(e["revoked"])) for e in entries] == [("alice", True)]
    assert cutq(cluster, "tokens", "revoke", "alice", "--file", str(path)).returncode == 2


def test_the_systemd_unit_is_like_the_others_and_passes_verify(tmp_path: Path):
    path = UNIT_DIR / "cutq-http.service"
    unit = parse_unit(path.read_text())
    for (section, key), value in COMMON.items():
        if key != "EnvironmentFile":
            assert one(unit, section, key) == value, (section, key)
    assert unit["Service"]["EnvironmentFile"] == ["-/etc/cutq/cutq.env", "-/etc/cutq/cutq-http.env"]
    exec_start = one(unit, "Service", "ExecStart")
    assert exec_start.startswith(f"{INSTALL_PREFIX} http --listen 127.0.0.1:") and "--tokens /var/lib/cutq-http/" in exec_start
    assert "/var/lib/cutq-http" in unit["Service"]["ReadWritePaths"]
    reason = _unusable_reason()
    if reason is not None:
        pytest.skip(reason)
    (tmp_path / path.name).write_text(path.read_text().replace(f"ExecStart={INSTALL_PREFIX}", f"ExecStart={TRUE}"))
    rc, out = _verify(tmp_path, path.name)
    assert rc == 0, out
    assert _our_messages(out) == [], out


def test_openapi_lists_every_route_under_v1_and_cors_is_opt_in(cluster: Cluster, gateways: list[Gateway]):
    http = start(gateways, cluster, "--cors-origin", "https://shop.example").http()
    spec = http.get("/openapi.json").json()
    paths = set(spec["paths"])
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/tasks/{task_id}/result",
            "/v1/jobs/{job_id}/results.zip", "/v1/jobs/{job_id}/retry", "/v1/jobs/{job_id}/events",
            "/v1/stats", "/healthz", "/readyz"} <= paths
    form = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form  # the upload form is documented
    preflight = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization"}
    r = http.options("/v1/jobs", headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://shop.example"
    r = http.options("/v1/jobs", headers={**preflight, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_broker_errors_map_to_http_statuses_with_retry_after():
    from gateway.errors import from_cutq, retry_after_s
    from shared.client import BrokerUnavailable, CutqError

    assert retry_after_s("queue full: 9 tasks queued, limit 1; retry after ~12s") == 12
    assert retry_after_s("retry after ~0s") == 1  # never "retry at once"
    assert retry_after_s("quota: tenant A has 3 tasks queued, limit 3") == 5
    quota = from_cutq(CutqError("quota: tenant A has 3 tasks queued, limit 3", "quota"))
    assert (quota.status, quota.headers["Retry-After"]) == (429, "5")
    assert from_cutq(CutqError("x", "too_large")).status == 413
    assert from_cutq(CutqError("x", "not_found")).status == 404
    assert from_cutq(CutqError("x", "bad_request")).status == 400
    gone = from_cutq(BrokerUnavailable("no reply"))
    assert gone.status == 503 and gone.code == "unavailable" and gone.headers["Retry-After"]


def test_the_gateway_loads_no_broker_worker_dashboard_or_inference_and_cutq_loads_no_gateway():
    from tests.test_import_boundaries import imported_names, loaded_after, modules_of

    gateway = modules_of("gateway")
    assert "gateway.app" in gateway and "gateway.routes.events" in gateway
    assert loaded_after(gateway) & {"broker", "worker", "tui", "cli", "textual", "rembg", "onnxruntime"} == set()
    for module in gateway:  # lazy imports too, statement by statement
        path = Path(__file__).resolve().parent.parent.joinpath(*module.split(".")).with_suffix(".py")
        path = path if path.exists() else path.with_suffix("") / "__init__.py"
        names = {name for _, name in imported_names(path)}
        assert names & {"broker", "worker", "tui", "cli", "textual", "rembg", "onnxruntime"} == set(), module
    # `cutq status` and friends start without the web stack
    assert loaded_after(["cli.main"]) & {"fastapi", "uvicorn", "starlette", "gateway"} == set()


def test_a_token_file_that_turns_bad_refuses_every_token(tmp_path: Path):
    from gateway.tokens import TokenStore

    store = TokenStore(tmp_path / "tokens.json")
    token = store.add("alice", "A")
    assert store.lookup(token).tenant == "A" and store.lookup(token + "x") is None
    (tmp_path / "tokens.json").write_text("{not json")
    assert store.lookup(token) is None  # fail closed, not open
    store2 = TokenStore(tmp_path / "other.json")
    t2 = store2.add("bob", "B", "admin")
    assert store2.lookup(t2).as_tenant is None  # an admin names no tenant
    store2.revoke("bob")
    assert store2.lookup(t2) is None
