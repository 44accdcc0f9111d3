"""`cutq tui` in a real terminal (tmux), driven by keystrokes, read off the screen: the panels,
the key hints of the first frame at 80x24 and 60x20, the `?` screen, and a shell left clean
after quitting (with a broker, and with none)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster import REPO, Cluster

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]


class Tmux:
    """One detached tmux session on a private server socket."""

    def __init__(self, name: str) -> None:
        self.socket = f"cutq-test-{os.getpid()}-{name}"
        self.session = name

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=check,
                              timeout=10)

    def start(self, command: str, width: int, height: int, env: dict[str, str]) -> None:
        """Run `command` in a fresh `width` x `height` terminal; once it ends the pane shows what it
        left in the shell, then `EXIT=<status>`."""
        exports = " ".join(f"{k}={v!s}" for k, v in env.items())
        self.run("new-session", "-d", "-s", self.session, "-x", str(width), "-y", str(height),
                 f"clear; env {exports} {command}; echo EXIT=$?; sleep 30")

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.session).stdout

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", self.session, *keys)

    def wait_for(self, check: Callable[[str], bool], timeout: float = 20.0, what: str = "") -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if check(text):
                return text
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; the screen was:\n{text}")

    def kill(self) -> None:
        self.run("kill-server", check=False)


def test_tui_in_a_real_terminal(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    tmux = Tmux("tui")
    try:
        # a broker or worker that does not start is a failure, never a skip
        cluster.start_broker()
        cluster.start_worker(1, name="smoke-worker")
        cluster.wait_workers(1)
        env = {"PYTHONPATH": str(REPO), "TERM": "xterm-256color", "COLORTERM": "truecolor"}
        tmux.start(f"{sys.executable} -m cli tui --connect {cluster.endpoint}", 120, 40, env)
        screen = tmux.wait_for(lambda s: "Overview" in s and "Jobs" in s and "Workers" in s and "smoke-worker" in s,
                               30, "the panels and the worker")
        assert "connected" in screen
        assert cluster.endpoint in screen
        tmux.keys("s")
        tmux.wait_for(lambda s: "Submit images" in s, 10, "the submit dialog")
        tmux.keys("Escape")
        tmux.wait_for(lambda s: "Submit images" not in s, 10, "the dialog to close")
        tmux.keys("q")
        tmux.wait_for(lambda s: "Overview" not in s, 10, "the app to quit")
    finally:
        tmux.kill()
        cluster.stop()


ENV = {"PYTHONPATH": str(REPO), "TERM": "xterm-256color", "COLORTERM": "truecolor"}
# what the bottom line must show from the first frame on: whole hints, help first, quit last
HINTS = {
    (80, 24): ["? Help", "⏎ Open", "s Submit", "c Cancel", "r Retry", "d Delete", "1-6 Filter", "/ Search", "q Quit"],
    (60, 20): ["? Help", "⏎ Open", "s Submit", "c Cancel", "r Retry", "d Delete", "q Quit"],
}


def bottom(screen: str) -> str:
    return screen.rstrip("\n").splitlines()[-1].rstrip()


def quits_cleanly(tmux: Tmux) -> None:
    """q, then the shell holds nothing but our EXIT=0: no traceback, no log line, no warning."""
    time.sleep(0.3)  # not right after an Escape (that would read as alt+q)
    tmux.keys("q")
    after = tmux.wait_for(lambda s: "EXIT=" in s, 15, "the app to quit")
    assert after.strip() == "EXIT=0", f"the dashboard left this in the shell:\n{after}"


@pytest.mark.parametrize("size", [(80, 24), (60, 20)], ids=["80x24", "60x20"])
def test_first_frame_shows_the_keys_and_question_mark_lists_them(tmp_path: Path, size: tuple[int, int]) -> None:
    cluster = Cluster(tmp_path)
    tmux = Tmux(f"keys{size[0]}")
    try:
        cluster.start_broker()
        cluster.start_worker(1, name="w1")
        cluster.wait_workers(1)
        tmux.start(f"{sys.executable} -m cli tui --connect {cluster.endpoint}", *size, ENV)
        first = tmux.wait_for(lambda s: "Overview" in s and "Jobs" in s, 30, "the first frame")
        line = bottom(first)
        assert [h for h in HINTS[size] if h in line] == HINTS[size], line
        assert line.startswith("? Help") and line.endswith("q Quit"), line  # nothing cut, no stray letter
        assert len(line) <= size[0]
        tmux.keys("?")
        help_screen = tmux.wait_for(lambda s: "Keys · overview" in s, 10, "the help screen")
        for key, what in (("s", "Submit images"), ("c", "Cancel the marked jobs"), ("r", "Retry every failed"),
                          ("d", "Delete the marked jobs"), ("5", "Filter: show failed jobs")):
            assert any(f" {key}  {what}" in row for row in help_screen.splitlines()), (key, help_screen)
        tmux.keys("Escape")
        tmux.wait_for(lambda s: "Keys · overview" not in s and "Overview" in s, 10, "back to the overview")
        time.sleep(0.3)
        tmux.keys("w")  # the workers table (the focus moves after this key is handled)
        tmux.wait_for(lambda s: "Worker detail" in bottom(s), 10, "the workers table focused")
        tmux.keys("Enter")  # the worker's detail
        tmux.wait_for(lambda s: "Worker w1" in s and "host" in s, 10, "the worker's detail")
        tmux.keys("?")
        tmux.wait_for(lambda s: "Keys · worker" in s and "Open the job" in s, 10, "the worker screen's keys")
        tmux.keys("Escape")  # one key at a time: Escape then a letter at once reads as alt+letter
        tmux.wait_for(lambda s: "Keys · worker" not in s, 10, "the help closed")
        tmux.keys("Escape")
        tmux.wait_for(lambda s: "Overview" in s, 10, "the overview again")
        quits_cleanly(tmux)
    finally:
        tmux.kill()
        cluster.stop()


def test_quitting_while_the_broker_is_away_leaves_the_shell_clean(tmp_path: Path) -> None:
    """No broker at all: the dashboard says so within 2 s, answers a key, and quits without a word."""
    tmux = Tmux("nobroker")
    try:
        port = Cluster(tmp_path).endpoint
        tmux.start(f"{sys.executable} -m cli tui --connect {port}", 80, 24, ENV)
        tmux.wait_for(lambda s: "broker unreachable" in s, 15, "the outage shown")
        tmux.keys("c")
        tmux.wait_for(lambda s: "not sent" in s, 10, "the key answered")
        quits_cleanly(tmux)
    finally:
        tmux.kill()
