"""The `cutq` command's promises (issue 14), checked on the real command against real brokers:
a broker that is not there is said within seconds (exit 3); job id prefixes everywhere; every
error one line with its exit code; `fetch` names failed tasks; Ctrl-C during `submit --wait`
leaves the job running and says so; `watch` fits the terminal and redraws in place; help
describes every option with its default; daemons take only their own options."""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import pytest
import zmq

from cli.main import build_parser
from cli.output import watch_line
from shared import protocol as p
from shared.client import Client, CutqError
from shared.options import KNOWN_MODELS
from tests.cluster import REPO, Cluster, free_port, wait_for

ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
ENV.pop("CUTQ_KEY", None)
ENV.pop("CUTQ_SERVER_KEY", None)


def cutq(*args: str, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real command, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout, cwd=cwd)


def timed(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    r = cutq(*args)
    return r, time.monotonic() - start


def one_line(r: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """Assert `r` failed with exit `code` and exactly one stderr line (no traceback) holding `words`."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.endswith("\n"), r.stderr
    assert "Traceback" not in r.stderr and r.stderr.startswith("cutq"), r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)
    return r.stderr.strip()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One broker (no workers) for the tests that only ask it things or leave jobs queued."""
    c = Cluster(tmp_path_factory.mktemp("cli-ux"))
    c.start_broker()
    yield c
    c.stop()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    f = tmp_path / "x.png"
    f.write_bytes(b"\x89PNG not really")
    return f


# ---------------------------------------------------------------- no broker: said fast, exit 3

@pytest.mark.timeout(120)
def test_a_broker_that_is_not_there_is_said_within_the_timeout(tmp_path: Path, image: Path):
    closed = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    for args in (("submit", str(image)), ("stats",), ("list",), ("status", "abc123")):
        r, took = timed(*args, "--connect", closed, "--timeout", "2")
        one_line(r, 3, closed)
        assert took < 2 + 1.5, (args, took)
    # by default (a 15 s reply timeout) a missing broker is still said within the 3 s connect timeout
    for args in (("submit", str(image)), ("stats",)):
        r, took = timed(*args, "--connect", closed)
        one_line(r, 3, "within 3s")
        assert took < 3 + 1.5, (args, took)
    # something listens but never speaks ZeroMQ: no connection either
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        r, took = timed("stats", "--connect", f"tcp://127.0.0.1:{mute.getsockname()[1]}", "--timeout", "2")
    one_line(r, 3)
    assert took < 2 + 1.5, took


def _fake_broker(delays: list[float]) -> tuple[str, threading.Thread, zmq.Context]:
    """A ROUTER that answers the i-th request after delays[i] seconds (a slow but live broker)."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")

    def serve() -> None:
        try:
            for delay in delays:
                if not router.poll(10_000):
                    return
                ident, *frames = router.recv_multipart()
                req = p.decode(frames).req  # type: ignore[attr-defined]
                time.sleep(delay)
                router.send_multipart([ident, *p.encode(p.Reply(req=req, ok=True, data={"queued": 0}))])
            router.poll(2000)
        finally:
            router.close(0)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"tcp://127.0.0.1:{port}", thread, ctx


def test_the_connect_timeout_bounds_only_the_connection_not_a_slow_reply():
    """A live broker's slow replies are waited for up to the request's timeout, before and after
    its first answer: only reaching no one is cut short by the connect timeout."""
    endpoint, thread, ctx = _fake_broker([1.0, 1.0])
    try:
        with Client(endpoint, timeout=5.0, connect_timeout=0.3, context=ctx) as c:
            start = time.monotonic()
            assert c.stats() == {"queued": 0}  # the first reply took 1 s > connect_timeout
            assert c.answered
            assert c.stats() == {"queued": 0}
            assert 1.9 < time.monotonic() - start < 4.5
        thread.join(5)
    finally:
        ctx.term()


# ---------------------------------------------------------------- bad input: one line, exit 2

def test_a_bad_endpoint_is_a_one_line_usage_error(tmp_path: Path, image: Path):
    for endpoint in ("localhost:5", "tcp://127.0.0.1:99999", "tcp://127.0.0.1", "foo://x", "tcp://*:5555"):
        one_line(cutq("stats", "--connect", endpoint), 2, "bad broker endpoint", endpoint)
    for args in (("submit", str(image)), ("status", "abc"), ("list",), ("watch", "abc"), ("cancel", "abc"),
                 ("fetch", "abc", "--out", str(tmp_path / "o")), ("delete", "abc"), ("pause",)):
        one_line(cutq(*args, "--connect", "localhost:5"), 2, "'localhost:5'")
    one_line(cutq("worker", "--connect", "localhost:5"), 2, "--connect", "localhost:5")
    one_line(cutq("tui", "--connect", "localhost:5"), 2, "--connect")
    one_line(cutq("http", "--connect", "localhost:5"), 2, "--connect")
    one_line(cutq("broker", "--bind", "localhost:5", "--data", str(tmp_path / "d")), 2, "--bind")
    assert not (tmp_path / "d").exists()


def test_local_files_and_folders_are_one_line_errors(broker: Cluster, tmp_path: Path, image: Path):
    c = broker.client()
    job = c.submit([("a.png", b"abc")], processor="noop")
    before = c.list_jobs(limit=1)["total"]
    at = ("--connect", broker.endpoint)
    one_line(cutq("fetch", job, "--out", "/proc/nope", *at), 2, "/proc/nope")
    one_line(cutq("fetch", job, "--out", str(image), *at), 2, str(image), "not a folder")
    # --out is checked before anything is submitted
    one_line(cutq("submit", str(image), "--processor", "noop", "--wait", "--out", "/proc/nope/x", *at), 2,
             "/proc/nope/x")
    one_line(cutq("submit", "/proc/self/mem", "--processor", "noop", *at), 2, "cannot read /proc/self/mem")
    one_line(cutq("submit", "/dev/null", *at), 2, "not a regular file")
    one_line(cutq("submit", str(tmp_path / "missing.png"), *at), 2, "missing.png")
    (tmp_path / "empty").mkdir()
    one_line(cutq("submit", str(tmp_path / "empty"), *at), 2, "no image files")
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.png"
        locked.write_bytes(b"x")
        locked.chmod(0)
        one_line(cutq("submit", str(locked), *at), 2, "locked.png")
    assert c.list_jobs(limit=1)["total"] == before  # none of these submitted anything
    # keys: a folder, a missing file, only half of a pair
    one_line(cutq("stats", "--key", str(tmp_path), "--server-key", str(tmp_path), *at), 2, "certificate")
    one_line(cutq("stats", "--key", str(tmp_path / "no.key_secret"), "--server-key", str(tmp_path / "no.key"),
                  *at), 2, "no.key")
    one_line(cutq("stats", "--key", str(tmp_path), *at), 2, "--server-key")
    # the broker-side commands
    one_line(cutq("keys", "list", "--data", str(tmp_path / "none")), 2, "none")
    one_line(cutq("keys", "init", "--data", "/proc/nope"), 2, "/proc/nope")
    one_line(cutq("backup", "/proc/nope", "--data", str(broker.data)), 2, "/proc/nope")
    one_line(cutq("tokens", "--file", str(tmp_path), "list"), 2, str(tmp_path))
    # usage errors: one line too, exit 2
    one_line(cutq("list", "--state", "bogus", *at), 2, "bogus")
    one_line(cutq("status", *at), 2, "job")
    one_line(cutq("stats", "--nope", *at), 2, "--nope")
    one_line(cutq("status", job, "--page", "0", *at), 2, "--page")
    one_line(cutq(), 2, "COMMAND")


# ---------------------------------------------------------------- job id prefixes

def _prefixes(ids: list[str]) -> tuple[str, str, str]:
    """(a prefix two ids share, a prefix only ids[k] has, a prefix no id has)."""
    shared = next(i[:1] for i in ids if sum(j.startswith(i[:1]) for j in ids) >= 2)
    unique = next(i[:n] for i in ids for n in range(3, 12) if sum(j.startswith(i[:n]) for j in ids) == 1)
    unknown = next(x for x in (f"{n:04x}" for n in range(65536)) if not any(i.startswith(x) for i in ids))
    return shared, unique, unknown


@pytest.mark.timeout(120)
def test_every_job_command_takes_a_prefix_and_says_an_ambiguous_or_unknown_one(cluster: Cluster, tmp_path: Path):
    cluster.start_broker()
    cluster.start_worker(1, "--preload", "")
    c = cluster.client()
    ids = [c.submit([(f"p{i}.png", b"\x89PNG %d" % i)], processor="noop") for i in range(17)]  # 17 > 16 digits
    wait_for(lambda: c.stats()["done"] == 17, 30, what="the noop jobs")
    shared, unique, unknown = _prefixes(ids)
    whole = next(i for i in ids if i.startswith(unique))
    at = ("--connect", cluster.endpoint)
    commands = (("status",), ("watch",), ("cancel",), ("retry",), ("fetch", "--out", str(tmp_path / "o")),
                ("delete",))
    for cmd, *rest in commands:
        line = one_line(cutq(cmd, shared, *rest, *at), 2, "ambiguous", shared)
        assert len([i for i in ids if i.startswith(shared) and i in line]) >= 2, line  # names the candidates
        one_line(cutq(cmd, unknown, *rest, *at), 2, "not found", unknown)
    r = cutq("status", unique, *at)
    assert r.returncode == 0 and f"job {whole}" in r.stdout, r.stderr
    r = cutq("watch", unique, *at)  # not a terminal: one line, then the exit code of a done job
    assert r.returncode == 0 and r.stdout.startswith(whole) and " done" in r.stdout, (r.stdout, r.stderr)
    r = cutq("fetch", unique, "--out", str(tmp_path / "got"), *at)
    name = next(t["name"] for t in c.status(whole)["tasks"])
    assert r.returncode == 0 and (tmp_path / "got" / name).read_bytes().startswith(b"\x89PNG"), r.stderr
    for cmd in ("cancel", "retry"):
        r = cutq(cmd, unique, *at)
        assert r.returncode == 0 and r.stdout.strip().endswith(f"of job {whole}"), (r.stdout, r.stderr)
    r = cutq("delete", unique, *at)
    assert r.returncode == 0 and whole in r.stdout, r.stderr
    one_line(cutq("status", whole, *at), 2, "gone")


# ---------------------------------------------------------------- fetch of a job with failed tasks

@pytest.mark.timeout(120)
def test_fetch_names_the_failed_tasks_and_exits_non_zero(cluster: Cluster, tmp_path: Path):
    cluster.start_broker()
    cluster.start_worker(1, "--preload", "")
    cluster.wait_workers(1)  # announced first, so the submission is not warned that nobody serves its model
    c = cluster.client()
    # not an image: the rembg task fails on decoding (an input error), before any model is loaded
    job = c.submit([("broken.jpg", b"this is not a jpeg at all")])
    assert c.wait(job, timeout=60)["state"] == "failed"
    at = ("--connect", cluster.endpoint)
    r = cutq("fetch", job[:6], "--out", str(tmp_path / "out"), *at)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "0 result(s)" in r.stdout and "1 failed" in r.stdout, r.stdout
    assert re.search(r"broken\.jpg: failed: .+", r.stderr), r.stderr
    assert "Traceback" not in r.stderr and list((tmp_path / "out").iterdir()) == []
    r = cutq("fetch", job, "--out", str(tmp_path / "out"), "--json", *at)
    assert r.returncode == 1
    report = json.loads(r.stdout)
    assert report["written"] == [] and [(f["name"], f["state"]) for f in report["failures"]] == [
        ("broken.jpg", "failed")] and report["failures"][0]["error"]


# ---------------------------------------------------------------- Ctrl-C during submit --wait

def _read_until(fd: int, proc: subprocess.Popen, check: Callable[[str], bool], timeout: float) -> str:
    """Read the pty until `check(text)` or the process ends; everything read so far."""
    text, deadline = "", time.monotonic() + timeout
    while time.monotonic() < deadline and not check(text):
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            text += chunk.decode(errors="replace")
        elif proc.poll() is not None:
            break
    return text


def test_ctrl_c_during_submit_wait_says_the_job_keeps_running(broker: Cluster, image: Path):
    c = broker.client()
    c.pause(True, tenant="held")  # nothing of this tenant runs: the wait lasts until interrupted
    primary, secondary = pty.openpty()  # a terminal, so the command says when it starts waiting
    proc = subprocess.Popen([sys.executable, "-m", "cli", "submit", str(image), "--processor", "noop", "--wait",
                             "--tenant", "held", "--connect", broker.endpoint],
                            stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary, env=ENV)
    os.close(secondary)
    try:
        text = _read_until(primary, proc, lambda t: "waiting" in t, 30)
        found = re.search(r"submitted job ([0-9a-f]{12})", text)
        assert found, text
        job = found.group(1)
        time.sleep(0.3)  # into the wait
        proc.send_signal(signal.SIGINT)
        text += _read_until(primary, proc, lambda t: "keeps running" in t and t.endswith("\n"), 15)
        assert proc.wait(10) == 130, text
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(primary)
    assert f"interrupted: job {job} keeps running" in text and "Traceback" not in text, text
    assert c.status(job, tasks=False)["state"] == "queued"  # the job itself goes on


# ---------------------------------------------------------------- watch in a terminal

class Tmux:
    """One detached tmux session on a private server socket (as in tests/tui/test_tui_tmux.py)."""

    def __init__(self, name: str) -> None:
        self.socket = f"cutq-cli-{os.getpid()}-{name}"
        self.session = name

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=check,
                              timeout=10)

    def start(self, command: str, width: int, height: int) -> None:
        """Run `command` in a pane of width x height, once the pane has that size."""
        self.run("new-session", "-d", "-s", self.session, "-x", str(width), "-y", str(height), "sleep 120")
        wait_for(lambda: self.run("display-message", "-p", "-t", self.session, "#{pane_width}x#{pane_height}")
                 .stdout.strip() == f"{width}x{height}", 10, what="the pane's size")
        self.run("respawn-pane", "-k", "-t", self.session,
                 f"env -u COLUMNS -u LINES PYTHONPATH={REPO} TERM=xterm-256color {command}; sleep 60")

    def lines(self) -> list[str]:
        """The screen's non-blank lines."""
        return [line for line in self.run("capture-pane", "-p", "-t", self.session).stdout.splitlines()
                if line.strip()]

    def wait_for(self, check: Callable[[list[str]], bool], timeout: float, what: str) -> list[str]:
        deadline, lines = time.monotonic() + timeout, []
        while time.monotonic() < deadline:
            lines = self.lines()
            if check(lines):
                return lines
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; the screen was:\n" + "\n".join(lines))

    def kill(self) -> None:
        self.run("kill-server", check=False)


@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_watch_fits_the_terminal_redraws_in_place_and_says_paused(cluster: Cluster, tmp_path: Path):
    cluster.start_broker()
    c = cluster.client()
    c.pause(True)
    job = c.submit([(f"t{i}.png", b"x") for i in range(6)], processor="sleep", options={"seconds": 0.4})
    watch = f"{sys.executable} -m cli watch {job[:5]} --connect {cluster.endpoint}"
    tmux = Tmux("watch")
    try:
        tmux.start(watch, 80, 24)
        lines = tmux.wait_for(lambda ls: any("paused" in line for line in ls), 20, "the paused note")
        assert len(lines) == 1 and len(lines[0]) <= 80 and lines[0].startswith(job), lines
        assert "dispatch paused" in lines[0] and "0/6" in lines[0]
        c.pause(False)
        cluster.start_worker(2, "--preload", "")
        seen: set[str] = set()

        def finished(ls: list[str]) -> bool:
            seen.update(ls)
            assert len(ls) == 1 and len(ls[0]) <= 80, ls  # every redraw in place: never a second line
            return " done" in ls[0] and "6/6" in ls[0]

        lines = tmux.wait_for(finished, 60, "the job to end")
        assert any("no workers" in s or "paused" not in s for s in seen)
        assert "paused" not in lines[0] and "done=6" in lines[0], lines
        tmux.kill()
        narrow = Tmux("narrow")  # the finished job in a narrow terminal: one line, shortened to fit
        tmux = narrow
        narrow.start(watch, 40, 10)
        lines = narrow.wait_for(lambda ls: any(" done" in line for line in ls), 20, "the narrow line")
        assert len(lines) == 1 and len(lines[0]) < 40 and lines[0].startswith(job), lines
    finally:
        tmux.kill()


def test_the_watch_line_fits_any_width():
    status = {"job_id": "0123456789ab", "state": "running", "total": 12345, "queued": 12000, "running": 300,
              "done": 40, "failed": 5, "cancelled": 0}
    for width in range(10, 201):
        for note in ("", "dispatch paused for tenant some-long-tenant-name"):
            line = watch_line(status, width, note)
            assert len(line) <= width, (width, line)
            if width >= 20:
                assert line.startswith("0123456789ab")
    assert "cancelled=0" in watch_line(status, 130) and "[" in watch_line(status, 60)
    assert "running=300" in watch_line(status, 90) and "cancelled" not in watch_line(status, 90)
    assert "r300" in watch_line(status, 70) and "dispatch paused" in watch_line(status, 100, "dispatch paused")


# ---------------------------------------------------------------- status pages, list sorts

def test_status_pages_tasks_and_list_sorts_every_job(broker: Cluster):
    c = broker.client()
    job = c.submit([(f"f{i}.png", b"x%d" % i) for i in range(7)], processor="noop", tenant="zz-last")
    c.submit([("a.png", b"a")], processor="noop", tenant="aa-first")
    c.cancel(job, task_ids=[c.status(job)["tasks"][-1]["task_id"]])
    at = ("--connect", broker.endpoint)
    r = cutq("status", job[:8], "--per-page", "3", "--page", "2", *at)
    assert r.returncode == 0, r.stderr
    assert re.findall(r"f\d\.png", r.stdout) == ["f3.png", "f4.png", "f5.png"], r.stdout
    assert "tasks 4-6 of 7, page 2 of 3; --page 3 for more" in r.stdout
    r = cutq("status", job, "--state", "cancelled", *at)
    assert re.findall(r"f\d\.png", r.stdout) == ["f6.png"], r.stdout
    data = json.loads(cutq("status", job, "--json", "--per-page", "3", "--page", "3", *at).stdout)
    assert [t["name"] for t in data["tasks"]] == ["f6.png"] and data["total"] == 7
    assert len(json.loads(cutq("status", job, "--json", *at).stdout)["tasks"]) == 7  # --json: all, as before
    first = json.loads(cutq("list", "--sort", "tenant", "--asc", "--limit", "1", "--json", *at).stdout)
    assert first["jobs"][0]["tenant"] == "aa-first" and first["total"] >= 2
    last = json.loads(cutq("list", "--sort", "tenant", "--limit", "1", "--json", *at).stdout)
    assert last["jobs"][0]["tenant"] == "zz-last"
    r = cutq("list", "--sort", "errors", "--asc", *at)
    assert r.returncode == 0 and "by errors ascending" in r.stdout
    one_line(cutq("list", "--sort", "size", *at), 2, "size")


# ---------------------------------------------------------------- help, version, options per command

def _parsers(parser: argparse.ArgumentParser, name: str = "cutq") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def _undescribed(help_text: str) -> list[str]:
    """Entries of argparse's help (options, positionals, subcommands) that have no description."""
    lines = help_text.splitlines()
    bare = []
    for i, line in enumerate(lines):
        entry = re.match(r"^( {2,4})(\S.*)$", line)
        if not entry or line.endswith(":"):
            continue
        indent, text = len(entry.group(1)), entry.group(2)
        if re.search(r"\S {2,}\S", text):
            continue  # the description follows on the same line
        follows = lines[i + 1] if i + 1 < len(lines) else ""
        if len(follows) - len(follows.lstrip()) > indent + 4 and follows.strip():
            continue  # on the next line, indented further
        bare.append(line)
    return bare


def test_every_option_and_command_is_described_with_its_default(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    checked = 0
    for name, parser in _parsers(build_parser()):
        assert parser.description, f"{name} has no description"
        text = parser.format_help()
        options = text[text.index("\noptions:"):] if "\noptions:" in text else text
        assert _undescribed(text[text.index("\n\n"):]) == [], (name, _undescribed(text))
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            default = action.default
            if not (default is None or default is False or default == argparse.SUPPRESS or default == []):
                flag = action.option_strings[0]
                entry = options[options.index("\n  " + flag) + 1:].split("\n  -")[0]
                assert "default" in entry, (name, flag, entry)
            checked += 1
    assert checked > 100
    parser = dict(_parsers(build_parser()))["cutq submit"]
    model = next(a.help for a in parser._actions if "--model" in a.option_strings)
    assert all(m in re.split(r"[:,] ", model) for m in KNOWN_MODELS), model  # (argparse may wrap at their hyphens)
    submit = parser.format_help()
    priority = " ".join(submit[submit.index("\n  --priority"):submit.index("\n  --tenant")].split())
    assert "higher runs first" in priority and "(default 0)" in priority, priority


def test_daemons_take_only_their_own_options():
    parsers = dict(_parsers(build_parser()))

    def flags(name: str) -> set[str]:
        return {f for a in parsers[name]._actions for f in a.option_strings}

    client_only = {"--connect", "--timeout", "--key", "--server-key", "--json"}
    assert flags("cutq broker") & client_only == set()
    assert flags("cutq up") & client_only == set()
    assert flags("cutq worker") & {"--timeout", "--json", "--bind"} == set()
    assert {"--connect", "--key", "--server-key"} <= flags("cutq worker")
    assert flags("cutq keys") & client_only == {"--json"}
    for name in ("cutq submit", "cutq status", "cutq list", "cutq stats", "cutq fetch", "cutq tenants set"):
        assert client_only <= flags(name), name
    broker, up = parsers["cutq broker"], parsers["cutq up"]
    for flag in ("--bind", "--data"):
        b = next(a for a in broker._actions if flag in a.option_strings)
        u = next(a for a in up._actions if flag in a.option_strings)
        assert (b.default, b.help) == (u.default, u.help)
    r = cutq("broker", "--help")
    assert r.returncode == 0 and not set(re.findall(r"--[a-z-]+", r.stdout)) & client_only, r.stdout
    # a nested action takes the options of its command after its own
    args = build_parser().parse_args(["tenants", "--timeout", "4", "set", "t", "--weight", "2",
                                      "--connect", "tcp://h:1"])
    assert (args.timeout, args.connect, args.weight) == (4.0, "tcp://h:1", 2.0)
    args = build_parser().parse_args(["keys", "add", "k", "--role", "client", "--data", "/d"])
    assert args.data == "/d"


def test_version():
    r = cutq("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"cutq {metadata.version('cutq')}", r


def test_a_client_refuses_a_malformed_endpoint_before_any_socket():
    with pytest.raises(CutqError) as e:
        Client("localhost:5555")
    assert e.value.code == "bad_endpoint"
