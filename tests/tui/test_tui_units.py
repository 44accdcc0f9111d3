"""Unit tests of the dashboard's pure parts: formatting, models, coalescing, the feed
thread (over fixed data), path completion and the submit form's parsing."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.cluster import REPO
from tests.tui.helpers import NOW
from tui import fmt
from tui.coalesce import Coalescer
from tui.feed import Feed, FeedConfig
from tui.memory import MemorySource, memory_feed
from tui.messages import Connected, Disconnected, FeedBatch, JobDetail, JobMissing, JobsPage, StatsUpdated
from tui.model import JobsQuery, TaskBook, Throughput, WorkerBook, merge_job, merge_task, page_range
from tui.sample_data import sample_dataset
from tui.screens.paths import complete_path, count_images
from tui.screens.submit import parse_color, split_paths
from tui.widgets.keybar import hint_width, layout
from tui.widgets.sparkline import bar_columns, bar_rows

# ---------------------------------------------------------------- fmt


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "–"), (0.42, "0.4s"), (12.4, "12s"), (75, "1m15s"), (7260, "2h01m"), (200_000, "2d07h"), (-3, "0.0s"),
])
def test_duration(seconds, text) -> None:
    assert fmt.duration(seconds) == text


@pytest.mark.parametrize(("n", "text"), [(None, "–"), (999, "999"), (12_345, "12.3k"), (100_000, "100k"),
                                         (4_500_000, "4.5M")])
def test_compact(n, text) -> None:
    assert fmt.compact(n) == text


def test_progress_bar_keeps_a_single_failure_visible() -> None:
    job = {"total": 1000, "done": 999, "failed": 1, "cancelled": 0, "running": 0}
    bar = fmt.progress_bar(job, width=10)
    assert bar.plain == "━" * 10 + " 999/1000 ✖1"
    colours = {str(span.style) for span in bar.spans}
    assert fmt.BAR_FAILED in colours and fmt.BAR_DONE in colours


def test_progress_of_a_cancelled_job_shows_done_and_cancelled_apart() -> None:
    """A cancelled job with 20 of 29 done read '29/29' under a full bar."""
    job = {"total": 29, "done": 20, "failed": 0, "cancelled": 9, "running": 0, "queued": 0}
    bar = fmt.progress_bar(job, width=29)
    assert bar.plain.endswith(" 20/29 ⊘9")
    done = sum(s.end - s.start for s in bar.spans if str(s.style) == fmt.BAR_DONE and s.end <= 29)
    cancelled = sum(s.end - s.start for s in bar.spans if str(s.style) == fmt.BAR_CANCELLED and s.end <= 29)
    assert (done, cancelled) == (20, 9)
    assert fmt.percent(job) == 68  # done, not finished


def test_progress_bar_never_overfills() -> None:
    """Counts racing a reload (done 14 of 12) are clamped into the total."""
    bar = fmt.progress_bar({"total": 12, "done": 14, "cancelled": 6}, width=12)
    assert bar.plain == "━" * 12 + " 12/12"


@pytest.mark.parametrize(("offset", "shown", "total", "text"), [
    (0, 100, 2000, "1–100 of 2,000"), (300, 7, 307, "301–307 of 307"), (300, 100, 307, "301–307 of 307"),
    (400, 0, 307, "0 of 307"), (0, 0, 0, "0 of 0"),
])
def test_page_range_is_never_impossible(offset, shown, total, text) -> None:
    """Titles once flashed '301-400 of 307'."""
    assert page_range(offset, shown, total) == text


def test_jobs_query_clamps_onto_a_shrunk_list() -> None:
    q = JobsQuery(offset=300, limit=100)
    assert q.clamped(307) is q
    assert q.clamped(250).offset == 200 and q.clamped(0).offset == 0


def test_progress_bar_of_an_empty_job() -> None:
    assert fmt.progress_bar({"total": 0}, width=4).plain == "━━━━ 0/0"


def test_job_duration_runs_until_finished() -> None:
    assert fmt.job_duration({"created": 100.0, "state": "running"}, now=130.0) == 30.0
    assert fmt.job_duration({"created": 100.0, "state": "done", "finished": 110.0}, now=130.0) == 10.0


# ---------------------------------------------------------------- sparkline


def test_sparkline_right_aligns_short_history_and_keeps_zero_baseline() -> None:
    cols = bar_columns([0, 4, 8], 5)
    assert cols == [-1, -1, 0, 4, 8]
    (row,) = bar_rows(cols, 1, peak=8)
    assert row == "  ▁▄█"


def test_sparkline_resamples_long_history_by_mean() -> None:
    assert bar_columns([1, 3, 5, 7], 2) == [2, 6]


def test_sparkline_two_rows() -> None:
    top, bottom = bar_rows([8.0, 4.0], 2, peak=8)
    assert (top, bottom) == ("█ ", "██")


# ---------------------------------------------------------------- models


def test_merge_job_sets_and_clears_finish_time() -> None:
    job = {"job_id": "a", "state": "running", "total": 2, "done": 1, "finished": None}
    done = merge_job(job, {"kind": "job", "job_id": "a", "state": "done", "done": 2, "t": 50.0})
    assert done["finished"] == 50.0 and done["done"] == 2
    again = merge_job(done, {"kind": "job", "job_id": "a", "state": "queued", "t": 60.0})
    assert again["finished"] is None


def test_merge_task_tracks_attempts_and_times() -> None:
    task = {"task_id": 1, "state": "queued", "attempts": 0}
    running = merge_task(task, {"state": "running", "worker": "w1", "attempt": 1, "t": 10.0})
    assert (running["started"], running["worker"], running["attempts"]) == (10.0, "w1", 1)
    failed = merge_task(running, {"state": "failed", "error": "boom", "attempt": 1, "t": 12.0})
    assert (failed["finished"], failed["error"]) == (12.0, "boom")


def test_task_book_applies_only_its_job() -> None:
    book = TaskBook({"job_id": "a", "state": "queued", "tasks": [{"task_id": 1, "state": "queued"}]})
    changed = book.apply([
        {"kind": "task", "job_id": "b", "task_id": 1, "state": "done"},
        {"kind": "task", "job_id": "a", "task_id": 1, "state": "running", "t": 1.0},
        {"kind": "job", "job_id": "a", "state": "running", "running": 1},
    ])
    assert changed == {1}
    assert book.tasks[1]["state"] == "running" and book.job["state"] == "running"


def test_jobs_query_paging_is_clamped() -> None:
    q = JobsQuery(limit=100)
    assert q.page(1, total=250).offset == 100
    assert q.page(5, total=250).offset == 200
    assert q.page(-1, total=250).offset == 0


def test_new_jobs_only_reload_the_first_unfiltered_page() -> None:
    job = {"job_id": "abc", "state": "queued"}
    assert JobsQuery().matches_new_job(job)
    assert not JobsQuery(offset=100).matches_new_job(job)
    assert not JobsQuery(state="failed").matches_new_job(job)
    assert JobsQuery(search="ab").matches_new_job(job)
    assert not JobsQuery(sort="errors").matches_new_job(job)  # a new job lands somewhere in that order
    assert not JobsQuery(descending=False).matches_new_job(job)


def test_throughput_keeps_its_own_history_across_a_broker_restart() -> None:
    t = Throughput()
    t.merge([5, 6, 7], now=1000.0)  # seconds 997, 998, 999
    t.merge([0, 0, 0, 0, 0, 2], now=1003.0)  # a restarted broker: zeros for what it did not see
    assert t.seconds(1003.0, span=6) == [5, 6, 7, 0, 0, 2]
    t.merge([9] * 60, now=1200.0)
    minutes = t.minutes(1200.0, span=6)
    assert minutes[:2] == [-1.0, -1.0]  # before the first second we know of: no data, not zero
    assert minutes[2:] == [20 / 60, 0.0, 0.0, 9.0]
    assert t.known_span(1200.0) == 203.0


def test_worker_book_keeps_recent_tasks_and_minutes() -> None:
    book = WorkerBook()
    book.load([worker("a")])
    book.apply([{"kind": "task", "task_id": 1, "job_id": "j", "state": "running", "worker": "a", "t": 600.0},
                {"kind": "task", "task_id": 1, "job_id": "j", "state": "done", "worker": "a", "t": 601.0},
                {"kind": "task", "task_id": 2, "job_id": "j", "state": "failed", "worker": "a", "error": "x",
                 "t": 602.0}])
    assert [(r["task_id"], r["state"]) for r in book.recent["a"]] == [(1, "done"), (2, "failed")]
    assert 1 not in book.task_job
    assert book.minutes("a", now=659.0, since=590.0, span=3) == [-1.0, 0.0, 1 / 59]  # 540-599 partly seen


def worker(name: str, **kw) -> dict:
    return {"id": f"id-{name}", "name": name, "slots": 2, "busy": 0, "tasks": [], "done": 0, "failed": 0,
            "state": "alive", "last_seen_age": 0.5, **kw}


def test_worker_book_moves_tasks_between_workers() -> None:
    book = WorkerBook()
    book.load([worker("a"), worker("b")])
    book.apply([{"kind": "task", "task_id": 7, "state": "running", "worker": "id-a"}])  # by id
    assert book.workers["a"]["tasks"] == [7] and book.workers["a"]["busy"] == 1
    book.apply([{"kind": "task", "task_id": 7, "state": "done", "worker": "id-a"}])
    assert book.workers["a"]["tasks"] == [] and book.workers["a"]["done"] == 1


def test_worker_book_credits_coalesced_outcomes() -> None:
    """running+done merged into one done event still counts for the worker named."""
    book = WorkerBook()
    book.load([worker("a")])
    book.apply([{"kind": "task", "task_id": 9, "state": "done", "worker": "a"},
                {"kind": "task", "task_id": 10, "state": "failed", "worker": "a"}])
    assert (book.workers["a"]["done"], book.workers["a"]["failed"]) == (1, 1)


def test_worker_book_death_and_join() -> None:
    book = WorkerBook()
    book.load([worker("a", tasks=[1, 2], busy=2)])
    book.apply([{"kind": "worker", "worker": "a", "state": "dead"}])
    assert book.workers["a"]["state"] == "dead" and book.workers["a"]["tasks"] == []
    assert book.summary() == (0, 1)
    book.apply([{"kind": "worker", "worker": "c", "state": "joined"}])
    assert book.summary() == (1, 1) and book.stale
    assert [w["name"] for w in book.rows()] == ["c", "a"]  # alive first


# ---------------------------------------------------------------- coalescing


def test_coalescer_keeps_the_latest_state_per_entity_in_order() -> None:
    c = Coalescer()
    c.add([
        {"kind": "task", "task_id": 1, "state": "running"},
        {"kind": "task", "task_id": 2, "state": "running"},
        {"kind": "task", "task_id": 1, "state": "done"},
        {"kind": "job", "job_id": "j", "done": 1},
        {"kind": "job", "job_id": "j", "done": 2},
        {"kind": "worker", "worker": "w", "state": "dead"},
        {"kind": "worker", "worker": "w", "state": "joined"},
        {"kind": "stats", "queued": 1},
        {"kind": "stats", "queued": 0},
        {"kind": "mystery"},
    ])
    batch = c.take()
    assert [(e.get("task_id"), e["state"]) for e in batch.events] == [
        (2, "running"), (1, "done"), (None, "dead"), (None, "joined")]
    assert batch.jobs["j"]["done"] == 2
    assert batch.stats == {"kind": "stats", "queued": 0}
    assert (batch.received, batch.dropped) == (10, 3)
    assert not c.pending


# ---------------------------------------------------------------- the feed thread


class Recorder:
    """Collects what the feed posts; waits for a kind of message."""

    def __init__(self) -> None:
        self.messages: list = []
        self.cond = threading.Condition()

    def __call__(self, message) -> None:
        with self.cond:
            self.messages.append(message)
            self.cond.notify_all()

    def wait(self, kind: type, timeout: float = 5.0, where=lambda m: True):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [m for m in self.messages if isinstance(m, kind) and where(m)]
                if found:
                    return found[-1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {kind.__name__} within {timeout}s: {self.messages[-5:]}")
                self.cond.wait(left)


FASTCFG = FeedConfig(flush_interval=0.02, silence_probe=60, backoff_initial=0.05, backoff_max=0.1,
                     workers_resync=0, jobs_reload_min=0.05)


@pytest.fixture
def fed():
    source = MemorySource(sample_dataset(NOW, jobs=300), clock=lambda: NOW)
    feed = memory_feed(source, FASTCFG)
    rec = Recorder()
    feed.start(rec)
    yield source, feed, rec
    feed.stop()


def test_feed_loads_then_pages_and_filters(fed) -> None:
    source, feed, rec = fed
    rec.wait(Connected)
    assert rec.wait(StatsUpdated).stats == source.stats()
    first = rec.wait(JobsPage)
    assert first.total == 300 and len(first.jobs) == 100
    feed.query_jobs(JobsQuery(state="failed", limit=100))
    page = rec.wait(JobsPage, where=lambda m: m.query.state == "failed")
    assert page.jobs and all(j["state"] == "failed" for j in page.jobs)


def test_feed_watches_a_job_and_reports_missing_ones(fed) -> None:
    source, feed, rec = fed
    rec.wait(Connected)
    job_id = source.data.jobs[0]["job_id"]
    feed.watch_job(job_id)
    detail = rec.wait(JobDetail)
    assert detail.status["job_id"] == job_id and len(detail.status["tasks"]) == detail.status["total"]
    feed.watch_job("nope")
    assert rec.wait(JobMissing).job_id == "nope"


def served_twice(source: MemorySource, feed: Feed, rec: Recorder) -> None:
    """A barrier: return once the feed thread has finished a whole turn of its loop (events
    read, reloads and flush considered) that began after this call. Each watch_job is
    served at the top of a turn and answered with a JobDetail, so the second answer
    proves the turn that served the first one ran to its end."""
    for job in source.data.jobs[1:3]:
        feed.watch_job(job["job_id"])
        rec.wait(JobDetail, where=lambda m, j=job["job_id"]: m.status["job_id"] == j)


def test_feed_batches_wait_for_the_app(fed) -> None:
    """A new batch is posted only after the previous one was acknowledged."""
    source, feed, rec = fed
    rec.wait(Connected)
    job = source.data.jobs[0]
    source.push([{"kind": "job", "t": NOW, **job, "done": 0}])
    first = rec.wait(FeedBatch)
    for i in range(1, 5):
        source.push([{"kind": "job", "t": NOW, **job, "done": i}])
    time.sleep(FASTCFG.flush_interval)  # so the next turns are due to flush, were it allowed
    served_twice(source, feed, rec)  # those turns read the events, and did not post them
    assert sum(isinstance(m, FeedBatch) for m in rec.messages) == 1  # not acked yet: held back
    feed.ack()
    rec.wait(FeedBatch, where=lambda m: m is not first)
    merged = [m for m in rec.messages if isinstance(m, FeedBatch)]
    assert merged[-1].jobs[job["job_id"]]["done"] == 4  # the held-back updates, merged


def test_feed_reports_an_outage_and_recovers(fed) -> None:
    source, feed, rec = fed
    rec.wait(Connected)
    source.down = True
    source.push([{"kind": "stats", "t": NOW}])  # wake the waiting feed
    down = rec.wait(Disconnected)
    assert "no reply" in down.error and down.retry_in > 0
    rec.messages.clear()
    source.down = False
    rec.wait(Connected, timeout=5)
    rec.wait(JobsPage)  # everything reloaded after the outage


def test_feed_reloads_the_first_page_when_a_job_is_submitted(fed, tmp_path: Path) -> None:
    source, feed, rec = fed
    rec.wait(JobsPage)
    (tmp_path / "a.png").write_bytes(b"\x89PNG....")
    job_id = source.submit_paths([str(tmp_path / "a.png")], processor="noop")
    page = rec.wait(JobsPage, where=lambda m: any(j["job_id"] == job_id for j in m.jobs))
    assert page.jobs[0]["job_id"] == job_id and page.total == 301


def test_feed_action_calls_run_on_their_own_connection() -> None:
    opened = []

    class Source(MemorySource):
        def connect(self, timeout: float = 0.0):
            opened.append(timeout)
            return self

    source = Source(sample_dataset(NOW, jobs=3), clock=lambda: NOW)
    feed = Feed(source.connect, label="x", config=FeedConfig(action_timeout=7.0))
    assert feed.call("pause", True) == {"paused": True}
    assert opened == [7.0]


# ---------------------------------------------------------------- dialogs' helpers


def test_path_completion_offers_folders_then_images_and_hides_dunder(tmp_path: Path) -> None:
    """`__pycache__` came first; now folders (not hidden or dunder ones), then images, by name."""
    for d in ("__pycache__", ".git", "zfolder", "afolder"):
        (tmp_path / d).mkdir()
    for f in ("b.png", "a.txt", "c.jpg"):
        (tmp_path / f).write_bytes(b"x")
    base = str(tmp_path) + "/"
    assert complete_path(base) == base + "afolder/"
    assert complete_path(base + "b") == base + "b.png"
    assert complete_path(base + "_") == base + "__pycache__/"  # typed: offered
    (tmp_path / "afolder").rmdir()
    (tmp_path / "zfolder").rmdir()
    assert complete_path(base) == base + "b.png"


def test_path_completion(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden").mkdir()
    base = str(tmp_path)
    assert complete_path(base + "/ph") == base + "/photos/"
    assert complete_path(base + "/photos/") == base + "/photos/cat.jpg"
    assert complete_path(base + "/no") is None  # not an image
    assert complete_path(base + "/ph", dirs_only=True) == base + "/photos/"
    assert complete_path(base + "/.h") == base + "/.hidden/"
    assert complete_path(base + "/photos/cat.jpg") is None
    assert count_images(base + "/photos") == (1, "1 image in this folder")
    assert count_images(base + "/missing")[0] == 0


@pytest.mark.parametrize(("text", "rgba"), [
    ("", None), ("none", None), ("#ff8800", [255, 136, 0, 255]), ("#ff880080", [255, 136, 0, 128]),
    ("1, 2, 3", [1, 2, 3, 255]), ("1,2,3,4", [1, 2, 3, 4]),
])
def test_parse_color(text, rgba) -> None:
    assert parse_color(text) == rgba


@pytest.mark.parametrize("bad", ["#ff88", "red", "1,2", "1,2,300"])
def test_parse_color_refuses(bad) -> None:
    with pytest.raises(ValueError):
        parse_color(bad)


def test_split_paths_quotes_and_home() -> None:
    assert split_paths('a "b c" ~/d') == ["a", "b c", str(Path.home() / "d")]


# ---------------------------------------------------------------- import hygiene


@pytest.mark.timeout(90)  # its subprocess may take 60 s
def test_tui_never_imports_the_broker_worker_or_rembg() -> None:
    code = ("import sys, tui.app, tui.memory, tui.__main__; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('broker', 'worker', 'rembg', 'onnxruntime')); "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_feed_ignores_events_of_older_jobs_off_the_page() -> None:
    source = MemorySource(sample_dataset(NOW, jobs=300), clock=lambda: NOW)
    feed = memory_feed(source, FASTCFG)
    rec = Recorder()
    feed.start(rec)
    try:
        first = rec.wait(JobsPage)
        old = source.data.jobs[250]  # page 3 of 3: not shown
        source.push([{"kind": "job", "t": NOW, **old, "done": 0}])
        served_twice(source, feed, rec)  # the event was read and its turn is over
        assert sum(isinstance(m, JobsPage) for m in rec.messages) == 1
        # the control: an event that does belong on the page reloads it
        new = {**source.data.jobs[0], "job_id": "brand-new", "created": source.data.jobs[0]["created"] + 1}
        source.push([{"kind": "job", "t": NOW, **new}])
        rec.wait(JobsPage, where=lambda m: m is not first)
        assert sum(isinstance(m, JobsPage) for m in rec.messages) == 2
    finally:
        feed.stop()


# ---------------------------------------------------------------- consistent counts


def job_event(jid: str, **counts) -> dict:
    base = {"queued": 0, "running": 0, "done": 0, "failed": 0, "cancelled": 0}
    return {"kind": "job", "job_id": jid, "total": 10, **base, **counts}


def test_coalescer_moves_the_overview_counts_with_the_job_rows() -> None:
    """Between two stats (once a second) the job rows move on; the batch says by how much, so
    the overview never reads 95 done beside a row that says 500."""
    c = Coalescer()
    c.add([job_event("a", queued=10)])  # first heard of: its counts are in the next stats
    c.add([{"kind": "stats", "done": 0, "queued": 10}])
    c.add([job_event("a", queued=7, running=2, done=1), job_event("a", queued=5, running=2, done=3)])
    batch = c.take()
    assert batch.counts_delta == {"queued": -5, "running": 2, "done": 3}
    c.add([job_event("a", running=1, done=8, failed=1)])
    assert c.take().counts_delta == {"queued": -10, "running": 1, "done": 8, "failed": 1}  # since the stats
    c.add([{"kind": "stats", "done": 8}])
    assert c.take().counts_delta == {}  # a new stats holds it all
    assert "a" in c.known
    c.add([job_event("a", done=9, failed=1)])  # finished: forgotten (only a retry changes it again)
    assert "a" not in c.known


# ---------------------------------------------------------------- key bar


def test_key_bar_keeps_whole_hints_help_first_quit_last() -> None:
    items = [("⏎", "Open", "select_cursor"), ("s", "Submit", "app.submit"), ("c", "Cancel", "cancel"),
             ("1-6", "Filter", "filter(None)"), ("q", "Quit", "app.quit"), ("?", "Help", "app.help")]
    wide = layout(items, 80)
    assert [h[2] for h in wide] == ["app.help", "select_cursor", "app.submit", "cancel", "filter(None)",
                                    "app.quit"]
    narrow = layout(items, 30, priority=("cancel",))
    assert [h[1] for h in narrow] == ["Help", "Cancel", "Open", "Quit"]
    assert sum(hint_width(h) for h in narrow) <= 30
    assert [h[1] for h in layout(items, 8)] == ["Help"]
    back = layout([*items, ("esc", "Back", "back")], 80)
    assert back[-1][1] == "Back" and "Quit" not in [h[1] for h in back]
