"""A job's results written into a folder (`Client.fetch`, so `cutq fetch` and `submit --out`): names
made safe, and each file written inside the folder, never through a link out of it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from shared.errors import BrokerUnavailable, CutqError
from shared.names import name_key, quote_name, safe_result_name
from shared.states import TaskState


class ResultSource(Protocol):
    """What fetching a job needs of a connection: two requests of `shared.client.Client`."""

    def status(self, job_id: str) -> dict[str, Any]: ...

    def fetch_result(self, task_id: int) -> tuple[dict[str, Any], bytes]: ...


def fetch_job(source: ResultSource, job_id: str, out: Path, problems: list[str] | None,
              not_done: list[dict[str, Any]] | None) -> list[Path]:
    """Write every done task's result of a job into `out` (see `Client.fetch`); the files written."""
    root = make_folder(out)
    written: list[Path] = []
    skipped: list[str] = []
    done = []
    for task in source.status(job_id)["tasks"]:
        if task["state"] == TaskState.DONE:
            done.append(task)
        elif not_done is not None:
            not_done.append(task)
    for task, name, data in named_results(done, source.fetch_result, skipped, _label):
        try:
            _write_inside(root, name, data)
        except (OSError, CutqError) as e:
            skipped.append(f"{_label(task)}: not written: {e}")
            continue
        written.append(out / name)
    if problems is not None:
        problems.extend(skipped)
    elif skipped:
        raise CutqError(f"{len(skipped)} result(s) of job {job_id} not written "
                        f"({len(written)} written): {skipped[0]}", code="fetch_failed")
    return written


def named_results(tasks: Iterable[dict[str, Any]], fetch: Callable[[int], tuple[dict[str, Any], bytes]],
                  problems: list[str], label: Callable[[dict[str, Any]], str],
                  ) -> Iterator[tuple[dict[str, Any], str, bytes]]:
    """(task, file name, bytes) of each task's result, fetched one at a time, under safe names distinct
    within the lot (`cutq fetch`'s folder, the gateway's zip); a result the broker cannot give goes into
    `problems` as "<label>: <why>", and no broker at all is raised."""
    taken: set[str] = set()
    for task in tasks:
        try:
            meta, data = fetch(task["task_id"])
        except BrokerUnavailable:
            raise
        except CutqError as e:
            problems.append(f"{label(task)}: {e}")
            continue
        name = safe_result_name(task["name"], meta.get("ext"), task["task_id"], taken)
        taken.add(name_key(name))
        yield task, name, data
        del data  # not held while the next one is fetched: one image in memory at a time


def _label(task: dict[str, Any]) -> str:
    return f"task {task['task_id']} ({quote_name(task['name'])})"


def make_folder(path: Path) -> Path:
    """Create the folder `path` (and its parents) if need be; its resolved path.  CutqError
    (code bad_request), one line naming the folder, when it cannot be made or is not a folder."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CutqError(f"cannot write results into {path}: it exists and is not a folder",
                        code="bad_request") from None
    except OSError as e:
        raise CutqError(f"cannot create the folder {path}: {e.strerror or e}", code="bad_request") from None
    return path.resolve()


def result_filename(input_name: str, ext: str) -> str:
    """`photo.jpg` + `png` -> `photo.png`: results are named after their input's stem.

    For display only: it trusts both parts.  Files are named by `shared.names.safe_result_name`."""
    return f"{Path(input_name).stem}.{ext}"


def _write_inside(root: Path, name: str, data: bytes) -> Path:
    """Write `data` as root/name, refusing a target that resolves outside `root` (`root` resolved).

    The bytes go to a fresh hidden temporary file in `root` (O_EXCL, never following a link),
    which then replaces root/name: a link already at root/name is replaced, not written through.
    """
    target = root / name
    resolved = target.resolve()
    if resolved.parent != root or resolved.name in ("", ".", ".."):
        raise CutqError(f"{name!r} resolves to {str(resolved)!r}, outside {str(root)!r}; refused",
                        code="unsafe_path")
    tmp = root / f".{name}.{os.getpid()}.part"
    tmp.unlink(missing_ok=True)  # left by a killed fetch of the same pid; a link is removed, not followed
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return target
