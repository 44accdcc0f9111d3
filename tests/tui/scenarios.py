"""Deterministic dashboard scenes: fixed data through the feed, a frozen clock.

Used by the snapshot tests and by `python -m tests.tui.scenarios` (SVG screenshots
for docs/screenshots/).  Times read in UTC; run with TZ=UTC for the same text.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textual.widgets import Input

from tests.tui.helpers import NOW, wait_until
from tui.app import CutqApp
from tui.feed import FeedConfig
from tui.memory import MemorySource, memory_feed
from tui.sample_data import sample_dataset
from tui.screens.confirm import ConfirmScreen
from tui.screens.help import HelpScreen
from tui.screens.job_detail import JobDetailScreen
from tui.screens.preview import PreviewScreen
from tui.screens.purge import PurgeScreen
from tui.screens.worker_detail import WorkerDetailScreen
from tui.widgets.preview import ImageSlot, detect_graphics

STEADY = FeedConfig(flush_interval=0.05, silence_probe=3600, workers_resync=0, backoff_initial=5.0, backoff_max=5.0)


def clock() -> float:
    return NOW


@dataclass
class Scene:
    name: str
    steps: Callable[[Any, CutqApp, MemorySource], Awaitable[None]] | None = None
    setup: Callable[[MemorySource], None] | None = None
    sizes: tuple[tuple[int, int], ...] = ((80, 24), (160, 48), (60, 20))
    source: MemorySource | None = field(default=None, repr=False)

    def app(self) -> CutqApp:
        self.source = MemorySource(sample_dataset(NOW), clock=clock)
        if self.setup is not None:
            self.setup(self.source)
        return CutqApp(memory_feed(self.source, STEADY), clock=clock)

    async def run(self, pilot: Any) -> None:
        app: CutqApp = pilot.app
        await wait_until(pilot, lambda: {"connected", "stats", "workers", "jobs"} <= app.loaded, 10, "first load")
        await pilot.pause(0.3)  # let the tables lay out before a dialog suspends the screen
        if self.steps is not None:
            await self.steps(pilot, app, self.source)
        for box in app.screen.query(Input):
            box.cursor_blink = False
        await pilot.pause(0.1)


async def open_first_job(pilot: Any, app: CutqApp, source: MemorySource) -> None:
    await pilot.press("enter")
    screen = await wait_until(pilot, lambda: isinstance(app.screen, JobDetailScreen) and app.screen, 5)
    await wait_until(pilot, lambda: screen.book is not None, 5, "the job's tasks")
    if screen.query_one("#preview").display:  # below 24 rows it waits for v (or z)
        slot = screen.query_one("#preview-after", ImageSlot)
        await wait_until(pilot, lambda: slot.source is not None and slot._image is not None, 10, "the preview")


async def open_failed_job(pilot: Any, app: CutqApp, source: MemorySource) -> None:
    await pilot.press("down", "down", "down", "enter")
    screen = await wait_until(pilot, lambda: isinstance(app.screen, JobDetailScreen) and app.screen, 5)
    await wait_until(pilot, lambda: screen.book is not None, 5, "the job's tasks")
    failed = [i for i, t in enumerate(screen.book.tasks.values()) if t["state"] == "failed"]
    await pilot.press(*["down"] * failed[0])
    await pilot.pause(0.5)  # the preview of a failed task shows its input only
    slot = screen.query_one("#preview-before", ImageSlot)
    await wait_until(pilot, lambda: slot.source is not None, 10, "the preview")


async def submit_dialog(pilot: Any, app: CutqApp, source: MemorySource) -> None:
    await pilot.press("s")
    await pilot.pause(0.2)


async def confirm_cancel(pilot: Any, app: CutqApp, source: MemorySource) -> None:
    await pilot.press("c")
    await pilot.pause(0.2)


async def filter_failed(pilot: Any, app: CutqApp, source: MemorySource) -> None:
    await pilot.press("5")  # 1 all, 2 queued, 3 running, 4 done, 5 failed, 6 cancelled
    await wait_until(pilot, lambda: app.jobs_query.state == "failed" and "jobs" in app.loaded
                     and all(j["state"] == "failed" for j in app.jobs_page), 5, "the failed jobs")
    await pilot.pause(0.2)


async def broker_down(pilot: Any, app: CutqApp, source: MemorySource) -> None:
    source.down = True
    await wait_until(pilot, lambda: app.conn.state == "down", 5, "the outage")
    await pilot.pause(0.2)


def paused(source: MemorySource) -> None:
    source.data.stats["paused"] = True


async def help_screen(pilot: Any, app: CutqApp, source: MemorySource) -> None:
    await pilot.press("question_mark")
    await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen), 5, "the help screen")
    await pilot.pause(0.2)


async def worker_detail(pilot: Any, app: CutqApp, source: MemorySource) -> None:
    await pilot.press("w", "down", "enter")  # the workers table, its second row: gpu-box-1
    screen = await wait_until(pilot, lambda: isinstance(app.screen, WorkerDetailScreen) and app.screen, 5)
    await wait_until(pilot, lambda: screen.running, 10, "the names of its running tasks")
    await pilot.pause(0.2)


async def large_preview(pilot: Any, app: CutqApp, source: MemorySource) -> None:
    await open_first_job(pilot, app, source)
    await pilot.press("z")
    screen = await wait_until(pilot, lambda: isinstance(app.screen, PreviewScreen) and app.screen, 5)
    slot = screen.query_one("#large-after", ImageSlot)
    await wait_until(pilot, lambda: slot.source is not None and slot._image is not None, 10, "the large preview")
    await pilot.pause(0.2)


async def delete_marked(pilot: Any, app: CutqApp, source: MemorySource) -> None:
    await pilot.press("down", "down", "down", "space", "space", "d")  # mark the failed and the done job
    await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the confirmation")
    await pilot.pause(0.2)


async def purge_dialog(pilot: Any, app: CutqApp, source: MemorySource) -> None:
    await pilot.press("D")
    await wait_until(pilot, lambda: isinstance(app.screen, PurgeScreen), 5, "the purge dialog")
    await pilot.pause(0.2)


async def sort_by_state(pilot: Any, app: CutqApp, source: MemorySource) -> None:
    await pilot.press("o")  # submitted -> state (queued first)
    await wait_until(pilot, lambda: app.shown_query.sort == "state" and app.jobs_page[0]["state"] == "queued", 5,
                     "the jobs sorted by state")
    await pilot.pause(0.2)


SMALL = ((80, 24), (60, 20))
SCENES = [
    Scene("overview"),
    Scene("job_detail", open_first_job),
    Scene("job_detail_failed", open_failed_job, sizes=((80, 24),)),
    Scene("large_preview", large_preview, sizes=((80, 24),)),
    Scene("submit", submit_dialog),
    Scene("confirm_cancel", confirm_cancel, sizes=((80, 24),)),
    Scene("delete_marked", delete_marked, sizes=((80, 24),)),
    Scene("purge", purge_dialog, sizes=((80, 24),)),
    Scene("filter_failed", filter_failed, sizes=((80, 24),)),
    Scene("sort_by_state", sort_by_state, sizes=((80, 24),)),
    Scene("broker_down", broker_down, sizes=SMALL),
    Scene("paused", setup=paused, sizes=((160, 48),)),
    Scene("help", help_screen, sizes=SMALL),
    Scene("worker_detail", worker_detail, sizes=((80, 24), (160, 48), (60, 20))),
]


def main() -> None:
    """Write docs/screenshots/<scene>-<w>x<h>.svg for every scene."""
    import os
    import time

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="docs/screenshots")
    args = parser.parse_args()
    os.environ["TZ"] = "UTC"
    time.tzset()
    detect_graphics(force="halfcell")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    async def shoot(scene: Scene, size: tuple[int, int]) -> None:
        app = scene.app()
        async with app.run_test(size=size) as pilot:
            await scene.run(pilot)
            path = out / f"{scene.name}-{size[0]}x{size[1]}.svg"
            path.write_text(app.export_screenshot(title=f"cutq · {scene.name.replace('_', ' ')}"))
            print(path)

    for scene in SCENES:
        for size in scene.sizes:
            asyncio.run(shoot(scene, size))


if __name__ == "__main__":
    main()
