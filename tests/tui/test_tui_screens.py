"""Pilot tests of the dashboard over fixed data (tui.memory): keys, help, the palette, filters,
sorting, marks and bulk actions, outages, small terminals.  Fast; the same behaviour against a
real broker is in test_tui_live.py."""

from __future__ import annotations

import time

import pytest
from rich.console import Console
from textual.widgets import DataTable, Input, Select

from tests.tui.helpers import NOW, run_async, wait_until
from tui.app import CutqApp
from tui.feed import FeedConfig
from tui.memory import MemorySource, memory_feed
from tui.sample_data import sample_dataset
from tui.screens.confirm import ConfirmScreen
from tui.screens.help import HelpScreen
from tui.screens.job_detail import JobDetailScreen
from tui.screens.preview import PreviewScreen
from tui.screens.purge import PurgeScreen, parse_age
from tui.screens.submit import Check, SubmitScreen
from tui.screens.worker_detail import WorkerDetailScreen
from tui.widgets.jobs_table import JobsTable
from tui.widgets.keybar import KeyBar
from tui.widgets.stats_panel import StatsPanel
from tui.widgets.workers_panel import WorkersTable

pytestmark = pytest.mark.timeout(60)

QUICK = FeedConfig(flush_interval=0.05, silence_probe=3600, workers_resync=0, backoff_initial=0.2, backoff_max=0.5,
                   jobs_reload_min=0.05)


def make(jobs: int = 40, config: FeedConfig = QUICK) -> tuple[CutqApp, MemorySource]:
    source = MemorySource(sample_dataset(NOW, jobs=jobs), clock=lambda: NOW)
    return CutqApp(memory_feed(source, config), clock=lambda: NOW), source


async def loaded(pilot, app: CutqApp) -> None:
    await wait_until(pilot, lambda: {"connected", "stats", "workers", "jobs"} <= app.loaded, 10, "first load")
    await pilot.pause(0.1)


def table(app: CutqApp) -> JobsTable:
    return app.overview.query_one(JobsTable)


def notes(app: CutqApp) -> list[str]:
    return [n.message for n in app._notifications]


def plain(static) -> str:
    """What a Static shows, as text."""
    console = Console(width=300, color_system=None)
    with console.capture() as out:
        console.print(static.content)
    return out.get()


# ---------------------------------------------------------------- discoverable


@run_async
async def test_help_lists_every_key_of_each_screen() -> None:
    app, source = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot, app)
        for opened in ("overview", "job"):
            if opened == "job":
                await pilot.press("enter")
                await wait_until(pilot, lambda: isinstance(app.screen, JobDetailScreen), 5)
            screen = app.screen
            bound = {b.key for _, b, _, _ in screen.active_bindings.values()
                     if b.description and b.action not in ("help_quit", "copy_text", "screen.copy_text")}
            await pilot.press("question_mark")
            help_screen = await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen) and app.screen, 5)
            listed = " ".join(keys for _, keys, _ in help_screen.rows)
            for key in ("s", "c", "r", "d", "q", "?", "/", "o", "1", "5", "D") if opened == "overview" \
                    else ("z", "c", "r", "d", "a", "v", "1", "esc"):
                assert key in listed.split(), (opened, key, listed)
            assert len(help_screen.rows) >= len({b for b in bound}) - 8  # every key, cursor keys grouped
            await pilot.press("escape")
            await wait_until(pilot, lambda: not isinstance(app.screen, HelpScreen), 5)


@run_async
async def test_the_key_bar_shows_the_essentials_from_the_first_frame_and_never_cuts_a_hint() -> None:
    for size, expected in (((80, 24), ["Help", "Open", "Submit", "Cancel", "Retry", "Delete", "Filter", "Search",
                                       "Quit"]),
                           ((60, 20), ["Help", "Open", "Submit", "Cancel", "Retry", "Delete", "Quit"])):
        app, source = make()
        async with app.run_test(size=size) as pilot:
            await loaded(pilot, app)
            bar = app.screen.query_one(KeyBar)
            assert [d for _, d, _ in bar.items()] == expected
            line = bar.render().plain
            assert len(line) <= size[0] and line.endswith("Quit")


@run_async
async def test_the_palette_finds_every_action() -> None:
    app, source = make()
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot, app)
        titles = [c.title.lower() for c in app.get_system_commands(app.screen)]
        for word in ("filter", "sort", "failed", "pause", "delete", "purge", "retry", "cancel", "submit", "search",
                     "fetch", "mark", "worker", "reload", "chart", "next page"):
            assert any(word in t for t in titles), (word, titles)
        for _, binding, enabled, _ in app.screen.active_bindings.values():
            if enabled and binding.description and not binding.action.startswith(("cursor_", "scroll_", "page_")) \
                    and binding.action not in ("help_quit", "command_palette", "app.command_palette", "copy_text"):
                assert (binding.tooltip or binding.description).lower() in titles, binding


# ---------------------------------------------------------------- filters, sorting, paging


@run_async
async def test_filters_have_direct_keys_and_sort_is_server_side_with_a_header_marker() -> None:
    app, source = make(jobs=300)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot, app)
        await pilot.press("5")
        await wait_until(pilot, lambda: app.shown_query.state == "failed", 5, "failed jobs")
        assert all(j["state"] == "failed" for j in app.jobs_page)
        await pilot.press("1")
        await wait_until(pilot, lambda: app.shown_query.state is None, 5, "all jobs")
        # sort: by the broker, over every job (not just this page); the header says how
        await pilot.press("o")  # created -> state
        await wait_until(pilot, lambda: app.shown_query.sort == "state", 5, "sorted by state")
        states = [j["state"] for j in app.jobs_page]
        assert states[0] == "queued" and states == sorted(states, key=["queued", "running", "done", "failed",
                                                                       "cancelled"].index)
        labels = [c.label.plain for c in table(app).columns.values()]
        assert "State ▲" in labels
        await pilot.press("O")  # the other way
        await wait_until(pilot, lambda: app.shown_query.descending, 5, "reversed")
        assert "State ▼" in [c.label.plain for c in table(app).columns.values()]
        assert "by state ▼" in app.overview.query_one("#jobs-panel").border_title
        # a click on a header sorts by that column
        t = table(app)
        t.post_message(DataTable.HeaderSelected(t, next(k for k in t.columns if k.value == "errors"), 0,
                                                t.columns[next(k for k in t.columns if k.value == "errors")].label))
        await wait_until(pilot, lambda: app.shown_query.sort == "errors", 5, "sorted by failures")
        fails = [j["failed"] for j in app.jobs_page]
        assert fails == sorted(fails, reverse=True) and fails[0] > 0


@run_async
async def test_a_page_past_the_end_is_never_shown() -> None:
    """'301-400 of 307': when jobs go, the page moves back onto the list."""
    app, source = make(jobs=307)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot, app)
        await pilot.press("right_square_bracket", "right_square_bracket", "right_square_bracket")
        await wait_until(pilot, lambda: app.shown_query.offset == 300, 5, "the last page")
        assert "301–307 of 307" in app.overview.query_one("#jobs-panel").border_title
        for job in list(source.data.jobs[-10:]):
            source.delete(job["job_id"])
        app.jobs_deleted([])
        await wait_until(pilot, lambda: app.shown_query.offset == 200 and app.jobs_total == 297, 5, "clamped")
        assert "201–297 of 297" in app.overview.query_one("#jobs-panel").border_title


# ---------------------------------------------------------------- bulk actions


@run_async
async def test_mark_several_jobs_and_delete_them_after_a_confirmation() -> None:
    app, source = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot, app)
        doomed = [j["job_id"] for j in app.jobs_page[3:5]]
        await pilot.press("down", "down", "down", "space", "space")
        assert table(app).marked == set(doomed)
        assert "2 marked" in app.overview.query_one("#jobs-panel").border_title
        await pilot.press("d")
        confirm = await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen, 5)
        assert "Delete 2 jobs" in confirm.body and "cannot be undone" in confirm.body
        await pilot.press("y")
        await wait_until(pilot, lambda: not set(doomed) & set(table(app).jobs), 5, "the jobs gone")
        assert not set(doomed) & {j["job_id"] for j in source.data.jobs}
        assert not table(app).marked
        await wait_until(pilot, lambda: any("Deleted 2 jobs" in n for n in notes(app)), 5)


@run_async
async def test_cancel_and_retry_act_on_every_marked_job() -> None:
    app, source = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot, app)
        await pilot.press("space", "space")  # the two running jobs
        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5)
        await pilot.press("y")
        running = [j["job_id"] for j in source.data.jobs[:2]]
        await wait_until(pilot, lambda: all(source._by_id[j]["queued"] + source._by_id[j]["running"] == 0
                                            for j in running), 5, "both jobs cancelled")
        await pilot.press("escape")  # clears the marks
        assert not table(app).marked
        # retry: every failed task of the job, the cancelled ones stay cancelled
        failed = source.data.jobs[3]
        before = (failed["failed"], failed["cancelled"])
        table(app).move_cursor(row=3)
        await pilot.press("r")
        await wait_until(pilot, lambda: source._by_id[failed["job_id"]]["failed"] == 0, 5, "failed re-queued")
        assert source._by_id[failed["job_id"]]["queued"] == before[0]
        await wait_until(pilot, lambda: any("Re-queued 1 failed task" in n for n in notes(app)), 5)


@run_async
async def test_purge_asks_what_then_confirms() -> None:
    app, source = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot, app)
        n_failed = sum(1 for j in source.data.jobs if j["state"] == "failed")
        await pilot.press("D")
        dialog = await wait_until(pilot, lambda: isinstance(app.screen, PurgeScreen) and app.screen, 5)
        dialog.query_one("#purge-state", Select).value = "failed"
        dialog.query_one("#purge-age", Input).value = "1h"
        dialog.query_one("#purge-age", Input).focus()
        await pilot.press("enter")
        confirm = await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen, 5)
        assert "every failed job submitted more than 1h00m ago" in confirm.body
        await pilot.press("y")
        await wait_until(pilot, lambda: any("Purged" in n for n in notes(app)), 5)
        left = [j for j in source.data.jobs if j["state"] == "failed"]
        assert len(left) < n_failed and all(j["created"] >= NOW - 3600 for j in left)


def test_parse_age() -> None:
    assert parse_age("") is None and parse_age("7d") == 7 * 86400 and parse_age("90s") == 90
    assert parse_age("2") == 7200
    with pytest.raises(ValueError):
        parse_age("soon")


# ---------------------------------------------------------------- numbers you can trust


@run_async
async def test_every_panel_moves_together() -> None:
    """A job event moves its row and the overview's counts in the same redraw."""
    app, source = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot, app)
        job = dict(source.data.jobs[0])
        done_before = app.stats_view()["done"]
        source.push([{"kind": "job", "t": NOW, **job}])  # first heard of: the baseline
        await wait_until(pilot, lambda: app.events_seen >= 1, 5)
        source.push([{"kind": "job", "t": NOW, **job, "queued": job["queued"] - 5, "done": job["done"] + 5}])
        await wait_until(pilot, lambda: table(app).jobs[job["job_id"]]["done"] == job["done"] + 5, 5, "the row")
        assert app.stats_view()["done"] == done_before + 5
        assert f"✔ {done_before + 5} done" in plain(app.overview.query_one("#stats-text"))


# ---------------------------------------------------------------- outages


@run_async
async def test_a_silent_broker_is_detected_within_two_seconds_and_actions_are_answered() -> None:
    app, source = make(config=FeedConfig(flush_interval=0.05, workers_resync=0, backoff_initial=5.0,
                                         backoff_max=5.0))
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot, app)
        source.silent = True
        started = time.monotonic()
        await wait_until(pilot, lambda: app.conn.state == "down", 5, "the outage")
        assert time.monotonic() - started <= 2.3
        await pilot.pause(0.2)
        assert app.overview.has_class("-stale")
        workers = app.overview.query_one(WorkersTable)
        assert workers.unknown and "unknown" in workers.get_row("gpu-box-1")[0].plain
        for key in ("c", "d", "r", "s", "p"):
            await pilot.press(key)
            assert not isinstance(app.screen, (ConfirmScreen, SubmitScreen))  # nothing asked, nothing queued
        said = [n for n in notes(app) if "not sent" in n]
        assert len(said) >= 5 and "broker is unreachable" in said[0]


# ---------------------------------------------------------------- small terminals, detail screens


@run_async
async def test_60x20_is_usable() -> None:
    app, source = make()
    async with app.run_test(size=(60, 20)) as pilot:
        await loaded(pilot, app)
        first, second = plain(app.overview.query_one(StatsPanel).query_one("#stats-text")).split("\n")[:2]
        assert "cancelled" not in second and "⊘" in first  # no label wrapped onto the next line
        assert table(app).size_class == "slim" and [c.label.plain for c in table(app).columns.values()] == [
            "Job ▼", "Progress", "State", "Time"]
        await pilot.press("enter")
        detail = await wait_until(pilot, lambda: isinstance(app.screen, JobDetailScreen) and app.screen, 5)
        await wait_until(pilot, lambda: detail.book is not None, 5)
        assert not detail.query_one("#preview").display  # the tasks get the room
        tasks = detail.query_one("#tasks", DataTable)
        assert tasks.size.height - 1 >= 8  # rows visible (one is the header)
        await pilot.press("z")  # the large preview
        large = await wait_until(pilot, lambda: isinstance(app.screen, PreviewScreen) and app.screen, 5)
        slot = large.query_one("#large-after")
        await wait_until(pilot, lambda: slot.source is not None, 10, "the image")
        assert slot.content_size.width >= 25 and slot.content_size.height >= 14
        first_task = large.task_row["task_id"]
        await pilot.press("down")
        await wait_until(pilot, lambda: large.task_row["task_id"] != first_task, 5, "the next task")
        await pilot.press("b")
        assert not large.query_one("#large-before").display
        await pilot.press("escape")
        assert app.screen is detail


@run_async
async def test_worker_detail_shows_its_current_tasks_with_job_and_file() -> None:
    app, source = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot, app)
        await pilot.press("w", "down", "enter")  # workers table, second row: gpu-box-1
        screen = await wait_until(pilot, lambda: isinstance(app.screen, WorkerDetailScreen) and app.screen, 5)
        await wait_until(pilot, lambda: screen.running, 10, "the names of its tasks")
        info = plain(screen.query_one("#worker-info"))
        assert "gpu-box" in info and "4121" in info and "isnet-general-use" in info and "2/4 busy" in info
        rows = screen.query_one("#worker-tasks", DataTable)
        names = {t["task_id"]: t["name"] for tasks in source.data.tasks.values() for t in tasks}
        for tid in (1082, 1083):
            row = rows.get_row(str(tid))
            assert names[tid] in row[3].plain and "23b1612d" in row[2].plain
        await pilot.press("enter")  # opens the job of the task
        await wait_until(pilot, lambda: isinstance(app.screen, JobDetailScreen), 5)
        assert app.screen.job_id == source.data.jobs[0]["job_id"]


@run_async
async def test_submit_dialog_boxes_and_options_per_processor() -> None:
    app, source = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot, app)
        await pilot.press("s")
        dialog = await wait_until(pilot, lambda: isinstance(app.screen, SubmitScreen) and app.screen, 5)
        box = dialog.query_one("#alpha_matting", Check)
        assert box._button.plain == "[ ]"
        box.value = True
        assert box._button.plain == "[✔]"
        extra = dialog.query_one("#extra", Input)
        assert "sleep" not in extra.placeholder and "seconds" not in extra.placeholder
        dialog.query_one("#processor", Select).value = "sleep"
        await pilot.pause(0.1)
        assert "seconds" in extra.placeholder


@run_async
async def test_a_submit_no_live_worker_can_run_is_taken_with_a_warning_toast(tmp_path) -> None:
    """The broker's warning (no live worker serves the model: the job waits) is shown as a warning
    notification, not lost in the action thread's stderr; a model a live worker serves gets the usual one."""
    (tmp_path / "a.png").write_bytes(b"\x89PNG....")
    app, source = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot, app)
        for model in ("u2net", "u2netp"):  # no sample worker has u2net; two alive ones have u2netp
            before = len(source.data.jobs)
            await pilot.press("s")
            dialog = await wait_until(pilot, lambda: isinstance(app.screen, SubmitScreen) and app.screen, 5)
            dialog.query_one("#path", Input).value = str(tmp_path / "a.png")
            dialog.query_one("#model", Select).value = model
            await pilot.press("ctrl+s")
            await wait_until(pilot, lambda n=before: len(source.data.jobs) == n + 1, 5, "the job submitted")
            said = f"Submitted job {source.data.jobs[0]['job_id']}"
            note = await wait_until(pilot, lambda s=said: next((n for n in app._notifications
                                                                 if n.message.startswith(s)), None),
                                    5, "the submitted notification")
            if model == "u2net":
                assert note.severity == "warning" and "no live worker serves model u2net:" in note.message, note
            else:
                assert note.severity == "information" and note.message == said, note
