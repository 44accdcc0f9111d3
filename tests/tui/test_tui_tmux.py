"""Smoke test: `cutq tui` in a real terminal (tmux), driven by keystrokes, read off the screen."""

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
        exports = " ".join(f"{k}={v!s}" for k, v in env.items())
        self.run("new-session", "-d", "-s", self.session, "-x", str(width), "-y", str(height),
                 f"env {exports} {command}; sleep 30")

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
