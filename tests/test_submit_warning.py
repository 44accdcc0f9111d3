"""The broker's warning on a submission nobody can run yet (issue 11 item 4): "no live worker serves
model X" reaches the library's caller as a CutqWarning and `cutq submit`'s user as one stderr line
(and as `warning` in --json), on a real broker; a job some live worker can run, or one with no model
(noop), gets none."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from shared.client import CutqWarning
from shared.pipeline import PipelinedSubmitter
from tests.cluster import Cluster

UNSERVED = "no live worker serves model u2netp"


def _image(folder: Path) -> Path:
    """A file the broker takes as an image (it never decodes one); a worker fails it at decoding,
    before any model is loaded, so no test here waits for inference."""
    path = folder / "photo.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    return path


def _warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "warning" in line.lower()]


@pytest.mark.timeout(60)
def test_submit_with_no_worker_for_the_model_says_so_in_one_line(cluster: Cluster, tmp_path: Path):
    cluster.start_broker()
    image = _image(tmp_path)

    r = cluster.cli("submit", str(image), "--model", "u2netp")
    assert r.returncode == 0 and r.stdout.startswith("submitted job "), (r.stdout, r.stderr)
    assert _warning_lines(r.stderr) == [r.stderr.strip()], r.stderr  # that line and nothing else
    line = r.stderr.strip()
    assert line.startswith(f"warning: {UNSERVED}") and "waits in the queue" in line, line
    assert "Traceback" not in r.stderr and "CutqWarning" not in r.stderr

    r = cluster.cli("submit", str(image), "--model", "u2netp", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["job_id"] and out["tasks"] == 1 and UNSERVED in out["warning"], out
    assert _warning_lines(r.stderr) == [f"warning: {out['warning']}"], r.stderr

    # a noop job has no model: anyone can run it, so nothing to warn about even with no worker at all
    r = cluster.cli("submit", str(image), "--processor", "noop", "--json")
    assert r.returncode == 0 and "warning" not in json.loads(r.stdout) and not _warning_lines(r.stderr), r


@pytest.mark.timeout(60)
def test_the_library_warns_with_a_cutq_warning(cluster: Cluster):
    cluster.start_broker()
    client = cluster.client()
    with pytest.warns(CutqWarning, match=UNSERVED) as caught:
        job = client.submit([("a.png", b"\x89PNG not an image")], options={"model": "u2netp"})
    assert client.status(job, tasks=False)["state"] == "queued"  # stored all the same: the warning is no refusal
    assert [Path(w.filename).name for w in caught] == ["test_submit_warning.py"]  # points at the caller's line

    with pytest.warns(CutqWarning, match=UNSERVED):
        with PipelinedSubmitter(cluster.endpoint, window=4) as s:
            sub = s.submit([("b.png", b"\x89PNG not an image")], options={"model": "u2netp"})
    assert UNSERVED in sub.data["warning"]

    with warnings.catch_warnings():
        warnings.simplefilter("error", CutqWarning)
        client.submit([("c.png", b"\x89PNG not an image")], processor="noop")  # no model, no warning

    with warnings.catch_warnings():  # submit_reply (the gateway's and the dashboard's call) returns it, warns nothing
        warnings.simplefilter("error", CutqWarning)
        reply = client.submit_reply([("e.png", b"\x89PNG not an image")], options={"model": "u2netp"})
        quiet = client.submit_reply([("f.png", b"\x89PNG not an image")], processor="noop")
    assert UNSERVED in reply["warning"] and len(reply["tasks"]) == 1 and reply["cached"] == 0, reply
    assert set(quiet) == {"job_id", "tasks", "cached"}, quiet


@pytest.mark.timeout(90)
def test_submit_with_a_live_worker_serving_the_model_says_nothing(cluster: Cluster, tmp_path: Path, needs_model):
    cluster.start_broker()
    cluster.start_worker(1, "--preload", "")  # the weights are on disk: it serves u2netp without loading it
    (worker,) = cluster.wait_workers(1)
    assert "u2netp" in worker["servable"], worker

    r = cluster.cli("submit", str(_image(tmp_path)), "--model", "u2netp", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "warning" not in out and not _warning_lines(r.stderr), (out, r.stderr)

    client = cluster.client()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CutqWarning)
        job = client.submit([("d.png", b"\x89PNG not an image")], options={"model": "u2netp"})
    assert client.wait(job, timeout=60)["state"] == "failed"  # ran (and failed at decoding) on that worker
