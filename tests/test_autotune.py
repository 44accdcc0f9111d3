"""`cutq worker --concurrency auto` (worker/autotune.py) and the automatic recycling threshold.

The trial runs real u2netp inference in spawned processes: the tests that run it
are marked slow and skip without the weights.
"""

from __future__ import annotations

import pytest

from cli.main import build_parser
from shared.config import WorkerConfig
from tests.cluster import Cluster, wait_for
from worker import autotune
from worker.autotune import Choice, calibrate, candidates
from worker.daemon import WorkerDaemon
from worker.processors import models_on_disk
from worker.slots import AUTO_RSS_FLOOR_MB, Slot, SlotSettings, rss_limit_mb

needs_u2netp = pytest.mark.skipif("u2netp" not in models_on_disk(), reason="u2netp weights are missing")


def test_candidates_split_the_cores():
    assert candidates(1) == [(1, 1)]
    assert candidates(2) == [(2, 1), (1, 2)]
    assert candidates(8) == [(8, 1), (4, 2), (2, 4), (1, 8)]
    assert candidates(6) == [(6, 1), (3, 2), (1, 4), (1, 6)]
    assert candidates(16, threads=4) == [(4, 4)]


def test_given_threads_need_no_trial():
    choice = calibrate("u2netp", 8, threads=2)
    assert (choice.slots, choice.threads) == (4, 2)
    assert "--threads 2 given" in choice.reason


@pytest.mark.timeout(120)
def test_a_trial_that_cannot_run_falls_back_to_one_thread_per_core():
    choice = calibrate("no-such-model", 2, timeout=60)  # every trial process reports the bad model
    assert (choice.slots, choice.threads) == (2, 1)
    assert choice.reason.startswith("calibration failed (")
    assert "\n" not in choice.reason


@pytest.mark.slow
@needs_u2netp
@pytest.mark.timeout(240)  # spawns 2 processes that import rembg, then 4 real cut-outs
def test_calibration_measures_every_split_and_picks_one():
    choice = calibrate("u2netp", 2, timeout=200)
    assert set(choice.images_per_s) == {"2x1", "1x2"}
    assert all(v > 0 for v in choice.images_per_s.values())
    best = max(choice.images_per_s.values())
    assert choice.images_per_s[f"{choice.slots}x{choice.threads}"] >= best * (1 - autotune.TIE)
    assert choice.slots * choice.threads <= 2
    assert 150 < choice.slot_rss_mb < 2000  # a warm u2netp process


def test_cli_takes_auto():
    parser = build_parser()
    args = parser.parse_args(["worker", "--concurrency", "auto"])
    assert args.concurrency == 0 and args.recycle_rss_mb == WorkerConfig.recycle_rss_mb == -1
    args = parser.parse_args(["worker", "-c", "3", "--recycle-rss-mb", "0"])
    assert (args.concurrency, args.recycle_rss_mb) == (3, 0)
    for bad in (["-c", "0"], ["-c", "many"], ["--recycle-rss-mb", "-5"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["worker", *bad])


def test_daemon_builds_the_slots_it_was_told(monkeypatch):
    seen = {}

    def fake(model, cores, threads=0, providers=None, timeout=180.0):
        seen.update(model=model, cores=cores, threads=threads)
        return Choice(3, 1, "fake trial")

    monkeypatch.setattr(autotune, "calibrate", fake)
    daemon = WorkerDaemon(WorkerConfig(concurrency=0, preload_models=("u2netp",)))
    try:
        assert daemon.slots == []
        daemon._autotune()
        assert seen["model"] == "u2netp" and seen["threads"] == 0
        assert len(daemon.slots) == 3 and daemon.settings.threads == 1
        assert [s.settings.threads for s in daemon.slots] == [1, 1, 1]
        assert daemon.auto_reason == "fake trial"
    finally:
        daemon._ctx.term()


def test_auto_recycling_threshold():
    slot = Slot(0, SlotSettings())
    readings = iter([600.0, 9999.0])
    slot.rss_mb = lambda: next(readings)  # type: ignore[method-assign]
    assert rss_limit_mb(512, slot) == 512.0  # explicit MiB: as given
    assert rss_limit_mb(-1, slot) == AUTO_RSS_FLOOR_MB  # no task run yet: the floor, nothing read
    slot.tasks_run = 1
    assert rss_limit_mb(-1, slot) == 1200.0  # twice its RSS after the first task
    assert rss_limit_mb(-1, slot) == 1200.0  # read once, kept
    slot.first_task_rss = 100.0
    assert rss_limit_mb(-1, slot) == AUTO_RSS_FLOOR_MB


@pytest.mark.slow
@needs_u2netp
@pytest.mark.timeout(240)
def test_cutq_workers_shows_what_auto_chose(cluster: Cluster):
    cluster.start_broker()
    cluster.start_worker("auto", "--preload", "u2netp")  # type: ignore[arg-type]
    workers = wait_for(lambda: [w for w in cluster.client().workers() if w["state"] == "alive"], 200,
                       what="the auto worker")
    w = workers[0]
    assert w["slots"] >= 1 and w["threads"] >= 1
    out = cluster.cli("workers", check=True).stdout
    header, row = out.splitlines()[:2]
    assert "THREADS" in header
    assert f"0/{w['slots']}" in row and f" {w['threads']} " in row
