"""Helpers for the dashboard tests: a frozen clock, fast feed timings, condition waits."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

from PIL import Image

from tui.feed import FeedConfig

NOW = 1_763_800_000.0  # 2025-11-22 08:26:40 UTC: the frozen "now" of the snapshot data

# Fast timings against a real broker: a small coalescing window, quick outage detection
# and reconnects, frequent worker snapshots.
FAST = FeedConfig(request_timeout=2.0, action_timeout=10.0, flush_interval=0.05, silence_probe=1.5,
                  backoff_initial=0.2, backoff_max=1.0, jobs_reload_min=0.3, workers_resync=1.0)


async def wait_until(pilot: Any, condition: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Let the app run until `condition()` is truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as e:  # widgets may not exist yet
            last = e
        await pilot.pause(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}"
                         + (f" (last error: {last!r})" if last else ""))


def png_bytes(color: tuple[int, int, int] = (200, 80, 40), size: tuple[int, int] = (32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def run_async(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run an async test body with asyncio.run (no pytest asyncio plugin needed)."""
    import asyncio
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(fn(*args, **kwargs))

    return wrapper
