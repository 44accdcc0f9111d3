"""CURVE security end to end: keys made with the real `cutq keys` command, a real
broker that turns CURVE on because its key exists, real workers holding keys.

Who may connect (no key, unknown key, revoked key), what goes over the wire (a
TCP relay records it), what each role may see and do, and the safe defaults.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq

from shared import protocol as p
from shared.client import BrokerUnavailable, Client, CutqError
from shared.security import Credentials
from tests.cluster import Cluster, free_port, wait_for

# ---------------------------------------------------------------- keys


def cutq_keys(data: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real `cutq keys --data DATA ...` command."""
    return subprocess.run([sys.executable, "-m", "cli", "keys", "--data", str(data), *args],
                          capture_output=True, text=True, env=env, timeout=60, check=False)


@dataclass
class Keys:
    data: Path
    server: Path  # the broker's public certificate
    certs: dict[str, Path]  # name -> secret certificate
    env: dict

    def creds(self, name: str) -> Credentials:
        return Credentials.load(self.certs[name], self.server)

    def add(self, name: str, role: str, tenant: str | None = None) -> Path:
        r = cutq_keys(self.data, "--json", "add", name, "--role", role, *(["--tenant", tenant] if tenant else []),
                      env=self.env)
        assert r.returncode == 0, r.stderr
        self.certs[name] = Path(json.loads(r.stdout)["secret_certificate"])
        return self.certs[name]

    def revoke(self, name: str) -> None:
        r = cutq_keys(self.data, "revoke", name, env=self.env)
        assert r.returncode == 0, r.stderr

    def worker_env(self, name: str) -> dict:
        return {**self.env, "CUTQ_KEY": str(self.certs[name]), "CUTQ_SERVER_KEY": str(self.server)}


KEYS = (("alice", "client", "A"), ("bob", "client", "B"), ("root", "admin", None),
        ("w1", "worker", None), ("w2", "worker", None))


@pytest.fixture
def keys(cluster: Cluster) -> Keys:
    """Broker keys plus one key per role, made before the broker starts; the cluster's
    own client (start_broker, wait_workers) uses the admin key."""
    r = cutq_keys(cluster.data, "init", env=cluster.env)
    assert r.returncode == 0, r.stderr
    server = cluster.data / "keys" / "broker.key"
    k = Keys(cluster.data, server, {}, cluster.env)
    for name, role, tenant in KEYS:
        k.add(name, role, tenant)
    cluster.credentials = k.creds("root")
    return k


@pytest.fixture
def secure(cluster: Cluster, keys: Keys) -> Keys:
    cluster.start_broker()
    assert "CURVE" in (cluster.tmp / "broker.log").read_text()
    return keys


def broker_log(cluster: Cluster) -> str:
    return (cluster.tmp / "broker.log").read_text(errors="replace")


def _noop_files(n: int, tag: str) -> list[tuple[str, bytes]]:
    return [(f"{tag}-{i}.png", b"\x89PNG" + tag.encode() + bytes([i % 256])) for i in range(n)]


# ---------------------------------------------------------------- who may connect


def test_no_key_unknown_key_and_revoked_key_are_refused(cluster: Cluster, secure: Keys, monkeypatch):
    monkeypatch.delenv("CUTQ_KEY", raising=False)
    monkeypatch.delenv("CUTQ_SERVER_KEY", raising=False)
    server_public = secure.creds("alice").server
    secure.add("carol", "client", "C")
    secure.revoke("carol")
    public, secret = zmq.curve_keypair()
    refused = {
        "no key": None,
        "unregistered key": Credentials(public, secret, server_public),
        "revoked key": secure.creds("carol"),
    }
    for creds in refused.values():
        with Client(cluster.endpoint, timeout=1.0, credentials=creds) as c, pytest.raises(BrokerUnavailable):
            c.stats()
    # the same broker answers a registered key (so the refusals above are not an outage)
    with Client(cluster.endpoint, timeout=5.0, credentials=secure.creds("alice")) as c:
        assert c.stats()["queued"] == 0
    assert "refused handshake" in broker_log(cluster)
    # the CLI takes the key by flag and by env; without one it cannot reach the broker
    r = cluster.cli("stats", "--json", "--key", str(secure.certs["alice"]), "--server-key", str(secure.server))
    assert r.returncode == 0, r.stderr
    assert "by_tenant" in json.loads(r.stdout)
    r = cluster.cli("stats", "--timeout", "1")
    assert r.returncode == 3 and r.stderr.count("\n") == 1


def test_revoking_a_key_refuses_the_next_request_of_its_open_connection(cluster: Cluster, secure: Keys):
    secure.add("dave", "client", "D")
    with Client(cluster.endpoint, timeout=2.0, credentials=secure.creds("dave")) as dave:
        job = dave.submit(_noop_files(1, "dave"), processor="noop")
        assert dave.status(job)["tenant"] == "D"
        secure.revoke("dave")  # the broker re-reads its registry within ~0.2 s

        def refused() -> bool:
            try:
                dave.stats()
            except CutqError as e:
                assert e.code == "unauthorized", (e.code, str(e))
                return True
            return False

        wait_for(refused, 10, what="the revoked key's open connection to be refused")
        with pytest.raises(CutqError) as err:
            dave.submit(_noop_files(1, "late"), processor="noop")
        assert err.value.code == "unauthorized"
    admin = cluster.client()
    assert admin.stats()["by_tenant"]["D"]["queued"] == 1  # the refused submit stored nothing


# ---------------------------------------------------------------- the wire


class Relay:
    """A TCP relay on loopback that keeps a copy of every byte it passes, both ways."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.seen = bytearray()
        self._lock = threading.Lock()
        self._closed = False
        self._socks: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                down, _ = self.listener.accept()
            except OSError:  # timeout, or closed
                continue
            up = socket.create_connection(("127.0.0.1", self.target_port))
            self._socks += [down, up]
            for a, b in ((down, up), (up, down)):
                t = threading.Thread(target=self._pump, args=(a, b), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    self.seen += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def cut(self) -> None:
        """Drop every relayed connection (the peers' ZeroMQ sockets reconnect by themselves)."""
        socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        for s in self._socks:
            s.close()
        for t in self._threads:
            t.join(timeout=5)

    def bytes(self) -> bytes:
        with self._lock:
            return bytes(self.seen)


PIXEL_MARKER = b"PIXELS-ONLY-THE-OWNER-MAY-SEE-7f3a9c"
NAME_MARKER = "confidential-filename-5b21e8"


def _relayed(cluster: Cluster, creds: Credentials | None) -> bytes:
    """Submit, read back and fetch a marked image through a relay; what the relay saw."""
    relay = Relay(cluster.port)
    try:
        with Client(relay.endpoint, timeout=10.0, credentials=creds) as c:
            image = b"\x89PNG\r\n\x1a\n" + PIXEL_MARKER * 4 + os.urandom(256)
            job = c.submit([(f"{NAME_MARKER}.png", image)], processor="noop")
            status = c.status(job)
            assert status["tasks"][0]["name"] == f"{NAME_MARKER}.png"
            meta, data = c.fetch_result(status["tasks"][0]["task_id"], "input")
            assert data == image and meta["name"] == f"{NAME_MARKER}.png"
    finally:
        relay.close()
    return relay.bytes()


def test_traffic_on_the_wire_is_not_plaintext(cluster: Cluster, secure: Keys, tmp_path: Path):
    seen = _relayed(cluster, secure.creds("alice"))
    assert len(seen) > 2 * len(PIXEL_MARKER) * 4  # the image went through, both ways
    assert PIXEL_MARKER not in seen and PIXEL_MARKER[:12] not in seen
    assert NAME_MARKER.encode() not in seen and NAME_MARKER.encode()[:12] not in seen
    # control: the very same exchange with a broker without keys shows both markers,
    # so the assertions above can fail
    (tmp_path / "open").mkdir()
    plain = Cluster(tmp_path / "open")
    try:
        plain.start_broker()
        seen = _relayed(plain, None)
    finally:
        plain.stop()
    assert seen.count(PIXEL_MARKER) >= 8  # in the submit and in the fetched input
    assert NAME_MARKER.encode() in seen


# ---------------------------------------------------------------- tenants and roles


def test_a_client_key_sees_and_acts_only_within_its_tenant(cluster: Cluster, secure: Keys):
    alice = cluster.client(credentials=secure.creds("alice"))
    bob = cluster.client(credentials=secure.creds("bob"))
    admin = cluster.client()
    a_job = alice.submit(_noop_files(2, "alice"), processor="noop", tenant="B")  # asks for B, lands in A
    b_job = bob.submit(_noop_files(3, "bob"), processor="noop")
    assert alice.status(a_job)["tenant"] == "A" and bob.status(b_job)["tenant"] == "B"
    b_task = bob.status(b_job)["tasks"][0]["task_id"]
    made_up = "0123456789ab"

    def not_found(call) -> str:
        with pytest.raises(CutqError) as err:
            call()
        assert err.value.code == "not_found", (err.value.code, str(err.value))
        return str(err.value)

    # another tenant's job is exactly as absent as one that never existed
    for action in ("status", "cancel", "retry"):
        call = getattr(alice, action)
        theirs = not_found(lambda: call(b_job))  # noqa: B023 (called at once)
        nothing = not_found(lambda: call(made_up))  # noqa: B023
        assert theirs.replace(b_job, "ID") == nothing.replace(made_up, "ID")
    not_found(lambda: alice.fetch(b_job, cluster.tmp / "stolen"))
    assert not (cluster.tmp / "stolen").exists() or not any((cluster.tmp / "stolen").iterdir())
    for what in ("input", "result"):
        theirs = not_found(lambda: alice.fetch_result(b_task, what))  # noqa: B023 (called at once)
        nothing = not_found(lambda: alice.fetch_result(10_000_000, what))  # noqa: B023
        assert theirs.replace(str(b_task), "ID") == nothing.replace("10000000", "ID")
    not_found(lambda: alice.subscribe(b_job))
    # none of that touched bob's job
    assert bob.status(b_job)["queued"] == 3

    # listings, stats and tenants are scoped to the key's tenant; the admin sees all
    assert [j["job_id"] for j in alice.list_jobs()["jobs"]] == [a_job]
    assert alice.list_jobs(search=b_job)["total"] == 0 and alice.list_jobs(search="bob")["total"] == 0
    assert {j["job_id"] for j in admin.list_jobs()["jobs"]} == {a_job, b_job}
    s = alice.stats()
    assert s["queued"] == 2 and set(s["by_tenant"]) == {"A"}
    assert admin.stats()["queued"] == 5 and set(admin.stats()["by_tenant"]) == {"A", "B"}
    assert [t["tenant"] for t in alice.tenants()] == ["A"]
    assert {t["tenant"] for t in admin.tenants()} >= {"A", "B"}

    # the event stream: alice hears about her tenant's jobs only
    alice.subscribe(None)
    bob_again = bob.submit(_noop_files(1, "bob2"), processor="noop")
    bob.cancel(b_job)
    a_again = alice.submit(_noop_files(1, "alice2"), processor="noop")
    heard: list[dict] = []
    wait_for(lambda: heard.extend(alice.next_events(0.2)) or
             any(e.get("kind") == "job" and e.get("job_id") == a_again for e in heard), 10,
             what="alice's own job event")
    wait_for(lambda: heard.extend(alice.next_events(0.2)) or any(e.get("kind") == "stats" for e in heard), 10,
             what="a stats event")
    for e in heard:
        assert e.get("job_id") in (None, a_job, a_again), e
        assert e.get("tenant") in (None, "A"), e
        if e.get("kind") == "stats":
            assert set(e["by_tenant"]) == {"A"} and e["queued"] in (2, 3), e
    assert bob_again not in json.dumps(heard) and b_job not in json.dumps(heard)


def test_only_admin_pauses_and_sets_policies(cluster: Cluster, secure: Keys):
    alice = cluster.client(credentials=secure.creds("alice"))
    admin = cluster.client()
    for call in (lambda: alice.pause(True), lambda: alice.pause(True, tenant="A"), lambda: alice.pause(False),
                 lambda: alice.set_tenant("A", weight=100), lambda: alice.set_tenant("B", max_running=1)):
        with pytest.raises(CutqError) as err:
            call()
        assert err.value.code == "forbidden"
    assert not admin.stats()["paused"] and admin.stats()["paused_tenants"] == []
    assert all(t["weight"] == 1.0 for t in admin.tenants())
    assert admin.pause(True, tenant="B")["paused"] is True
    assert admin.stats()["paused_tenants"] == ["B"]
    assert admin.set_tenant("A", weight=3, max_running=5)["weight"] == 3
    assert admin.pause(True)["paused"] and admin.stats()["paused"]
    admin.pause(False)
    # a worker key may not make client requests at all
    with Client(cluster.endpoint, timeout=5.0, credentials=secure.creds("w1")) as w:
        with pytest.raises(CutqError) as err:
            w.stats()
        assert err.value.code == "forbidden"


# ---------------------------------------------------------------- who receives tasks


def test_a_client_key_that_connects_as_a_worker_receives_nothing(cluster: Cluster, secure: Keys):
    alice = cluster.client(credentials=secure.creds("alice"))
    admin = cluster.client()
    job = alice.submit(_noop_files(5, "queued"), processor="noop")
    cluster.start_worker(4, "--preload", "", name="sneaky", env=secure.worker_env("alice"))
    wait_for(lambda: "refused Ready from alice" in broker_log(cluster), 20,
             what="the broker to refuse the client key's READY")
    # it announced itself and was turned away: not a worker, nothing dispatched
    assert [w for w in admin.workers() if w["state"] == "alive"] == []
    wait_for(lambda: broker_log(cluster).count("refused Heartbeat from alice") >= 2, 10,
             what="its heartbeats to be refused too")
    assert admin.status(job)["queued"] == 5 and admin.status(job)["running"] == 0
    assert all(t["attempts"] == 0 for t in admin.status(job)["tasks"])
    # a real worker key takes the same job at once
    cluster.start_worker(4, "--preload", "", name="real", env=secure.worker_env("w1"))
    status = alice.wait(job, timeout=30)
    assert status["state"] == "done" and all(t["attempts"] == 1 for t in status["tasks"])
    (real,) = [w for w in admin.workers() if w["state"] == "alive"]
    assert real["name"] == "real" and {t["worker"] for t in status["tasks"]} == {real["id"]}


def _impostor(cluster: Cluster, creds: Credentials, routing_id: bytes) -> zmq.Socket:
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.ROUTING_ID, routing_id)
    s.setsockopt(zmq.IMMEDIATE, 1)  # writable once the CURVE handshake is done
    creds.apply(s)
    s.connect(cluster.endpoint)
    return s


def _drain(sock: zmq.Socket, into: list) -> list:
    while sock.poll(0):
        into.append(p.decode(sock.recv_multipart()))
    return into


def test_another_key_claiming_a_workers_routing_id_gets_none_of_its_tasks(cluster: Cluster, secure: Keys):
    admin = cluster.client()
    alice = cluster.client(credentials=secure.creds("alice"))
    bob = cluster.client(credentials=secure.creds("bob"))
    cluster.start_worker(2, "--preload", "", name="real", env=secure.worker_env("w1"))
    (real,) = cluster.wait_workers(1)
    impostor = _impostor(cluster, secure.creds("w2"), real["id"].encode())
    got: list = []
    try:
        impostor.send_multipart(p.encode(p.Ready(name="impostor", host="x", pid=1, slots=64,
                                                 processors=["noop"])))
        for round_ in range(5):
            impostor.send_multipart(p.encode(p.Heartbeat()))
            job = alice.submit(_noop_files(10, f"r{round_}"), processor="noop")
            assert alice.wait(job, timeout=30)["state"] == "done"
            _drain(impostor, got)
        workers = [w for w in admin.workers() if w["state"] == "alive"]
        assert [(w["name"], w["done"]) for w in workers] == [("real", 50)]
        assert not any(isinstance(m, p.Dispatch) for m in got), got

        # the real worker dies and its routing id is free: a client key takes it at once,
        # silently, before the broker has noticed the death; it must still get nothing
        Cluster.kill9(cluster.workers[0])
        thief = _impostor(cluster, secure.creds("alice"), real["id"].encode())
        stolen: list = []
        wait_for(lambda: thief.poll(0, zmq.POLLOUT), 10, what="the thief's handshake")
        job = bob.submit(_noop_files(10, "after"), processor="noop")
        wait_for(lambda: _drain(thief, stolen) is not None and all(w["state"] != "alive" for w in admin.workers())
                 and admin.status(job)["queued"] == 10, 10, what="the dead worker to be dropped, its job queued")
        _drain(thief, stolen)
        _drain(impostor, got)
        assert not any(isinstance(m, p.Dispatch) for m in got + stolen), [type(m).__name__ for m in got + stolen]
        thief.close(0)
    finally:
        impostor.close(0)
    cluster.start_worker(2, "--preload", "", name="again", env=secure.worker_env("w1"))
    assert bob.wait(job, timeout=30)["state"] == "done"


def test_a_worker_whose_connection_drops_keeps_getting_tasks(cluster: Cluster, secure: Keys):
    """The routing-id guard above stops dispatch when a worker's connection closes; its
    socket reconnects by itself, and it must get tasks again once it is heard on the new one."""
    relay = Relay(cluster.port)
    try:
        cluster.start_worker(2, "--preload", "", "--connect", relay.endpoint, name="via-relay",
                             env=secure.worker_env("w1"))
        cluster.wait_workers(1)
        alice = cluster.client(credentials=secure.creds("alice"))
        assert alice.wait(alice.submit(_noop_files(10, "before"), processor="noop"), timeout=30)["state"] == "done"
        relay.cut()
        job = alice.submit(_noop_files(10, "after"), processor="noop")
        assert alice.wait(job, timeout=30)["state"] == "done"
        assert cluster.workers[0].poll() is None
    finally:
        relay.close()


def test_a_revoked_worker_key_gets_no_more_tasks(cluster: Cluster, secure: Keys):
    secure.add("canary", "client", "Z")
    secure.add("w3", "worker")
    admin = cluster.client()
    alice = cluster.client(credentials=secure.creds("alice"))
    canary = cluster.client(timeout=2.0, credentials=secure.creds("canary"))
    cluster.start_worker(4, "--preload", "", name="old", env=secure.worker_env("w1"))
    (old,) = cluster.wait_workers(1)
    assert canary.stats() is not None
    secure.revoke("w1")
    secure.revoke("canary")  # a later write: once the canary is refused, w1's revocation is loaded

    def canary_refused() -> bool:
        try:
            canary.stats()
        except CutqError as e:
            return e.code in ("unauthorized", "unavailable")
        return False

    wait_for(canary_refused, 10, what="the broker to load the revocations")
    job = alice.submit(_noop_files(8, "after-revoke"), processor="noop")
    cluster.start_worker(4, "--preload", "", name="new", env=secure.worker_env("w3"))
    status = alice.wait(job, timeout=30)
    new = next(w for w in admin.workers() if w["name"] == "new")
    assert status["state"] == "done"
    assert {t["worker"] for t in status["tasks"]} == {new["id"]}
    # no attempt ever went to the revoked worker (a task with more than one attempt lists them all)
    tried = {h["worker"] for t in status["tasks"] for h in t.get("history") or [{"worker": t["worker"]}]}
    assert old["id"] not in tried, status["tasks"]
    assert [w["state"] for w in admin.workers() if w["name"] == "old"] != ["alive"]


# ---------------------------------------------------------------- safe defaults


@pytest.mark.timeout(120)  # two daemon start-ups; waits up to 90 s in all
def test_binding_a_public_address_without_keys_needs_insecure(cluster: Cluster, tmp_path: Path):
    port = free_port()
    data = tmp_path / "nokeys"
    cmd = [sys.executable, "-m", "cli", "broker", "--bind", f"tcp://0.0.0.0:{port}", "--data", str(data)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=cluster.env, timeout=60, check=False)
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and "--insecure" in r.stderr and "Traceback" not in r.stderr, r.stderr
    with open(tmp_path / "insecure.log", "wb") as log:
        proc = subprocess.Popen([*cmd, "--insecure"], stdout=log, stderr=subprocess.STDOUT, env=cluster.env)
        try:
            with Client(f"tcp://127.0.0.1:{port}", timeout=1.0) as c:
                wait_for(lambda: c.stats() is not None, 20, what="the --insecure broker to answer")
            text = (tmp_path / "insecure.log").read_text()
            assert "WARNING" in text and "WITHOUT CURVE" in text, text
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    assert proc.returncode == 0


def test_secret_key_files_are_private(cluster: Cluster, keys: Keys):
    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(cluster.data / "keys" / "broker.key_secret") == 0o600
    for name in ("alice", "root", "w1"):
        assert mode(keys.certs[name]) == 0o600, name
        assert keys.certs[name].name.endswith(".key_secret")
    assert mode(keys.certs["alice"].parent) & 0o077 == 0
    # the public halves are for handing out
    assert mode(keys.server) & 0o044 == 0o044
    r = cutq_keys(cluster.data, "--json", "list", env=cluster.env)
    listed = {e["name"]: e for e in json.loads(r.stdout)["keys"]}
    assert {n: (e["role"], e["tenant"]) for n, e in listed.items()} == {n: (r_, t) for n, r_, t in KEYS}
    assert not any("secret" in k for e in listed.values() for k in e)
    r = cutq_keys(cluster.data, "add", "alice", "--role", "client", "--tenant", "A", env=cluster.env)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "exists" in r.stderr
    r = cutq_keys(cluster.data, "add", "nobody", "--role", "client", env=cluster.env)
    assert r.returncode != 0 and "--tenant" in r.stderr


def test_the_dashboard_takes_its_key_by_flag(monkeypatch, tmp_path: Path):
    """`cutq tui --key K --server-key S`: the dashboard's clients read CUTQ_KEY/CUTQ_SERVER_KEY."""
    import tui.app
    from cli import main as cli

    monkeypatch.setenv("CUTQ_KEY", "unset")  # so monkeypatch restores both after the call sets them
    monkeypatch.setenv("CUTQ_SERVER_KEY", "unset")
    seen: dict = {}
    monkeypatch.setattr(tui.app, "run", lambda endpoint=None: seen.update(
        endpoint=endpoint, key=os.environ.get("CUTQ_KEY"), server=os.environ.get("CUTQ_SERVER_KEY")))
    assert cli.main(["tui", "--connect", "tcp://10.0.0.1:5555", "--key", "me.key_secret",
                     "--server-key", "broker.key"]) == 0
    assert seen == {"endpoint": "tcp://10.0.0.1:5555", "key": "me.key_secret", "server": "broker.key"}
