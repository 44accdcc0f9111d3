"""Getting a job's images to the broker: the files a submission names, the checks made before
anything is sent, and a job sent in one Submit or streamed in parts (UploadStart, UploadPart, Submit)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from shared import protocol as p
from shared.errors import CutqError
from shared.names import quote_name, validate_input_name

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
PART_BYTES = 8 * 1024 * 1024  # a job smaller than this goes in one Submit; bigger ones are streamed
UPLOAD_WINDOW = 4  # parts sent and not yet acknowledged, at most
PART_MAX_NAMES = 1000  # images in one part, at most (its body stays small)
_FRAMES_OVERHEAD = 512  # version, type and msgpack body around one image, besides its name

Progress = Callable[[int, "int | None"], None]  # (bytes acknowledged, total bytes or None if unknown)


class Wire(Protocol):
    """What sending a job needs of a connection: the request plumbing of `shared.client.Client`."""

    timeout: float
    max_message_bytes: int

    def _request(self, msg: p.Message, timeout: float | None = None) -> p.Reply: ...

    def _send(self, msg: p.Message, timeout: float) -> int: ...

    def _await(self, reqs: Collection[int], timeout: float, waited: float | None = None) -> p.Reply: ...


@dataclass(frozen=True)
class JobSpec:
    """What a job's Submit carries besides its images, and how long its acknowledgement may take."""

    processor: str
    options: dict[str, Any]
    priority: int
    tenant: str
    no_cache: bool
    timeout: float
    webhook: str | None = None


def collect_images(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and directories (non-recursive, sorted) into image files to submit."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if _input_file(path) is not None:
            found.append(path)
            continue
        try:
            found.extend(sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        except OSError as e:
            raise CutqError(f"cannot list the folder {path}: {e.strerror or e}", code="bad_request") from None
    if not found:
        raise CutqError("no image files to submit", code="bad_request")
    return found


def _input_file(path: Path) -> Path | None:
    """`path` itself if it is a regular file, None if a directory; CutqError otherwise."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise CutqError(f"no such file or directory: {path}", code="bad_request") from None
    except OSError as e:
        raise CutqError(f"cannot read {path}: {e.strerror or e}", code="bad_request") from None
    if stat.S_ISDIR(mode):
        return None
    if not stat.S_ISREG(mode):
        raise CutqError(f"not a regular file: {path}", code="bad_request")
    return path


def check_image(name: str, size: int, max_message_bytes: int) -> None:
    """Refuse, before sending, a bad name or an image no message can carry."""
    problem = validate_input_name(name)
    if problem:
        raise CutqError(problem, code="bad_request")
    limit = max_message_bytes - _FRAMES_OVERHEAD - len(name.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise CutqError(f"{quote_name(name)} is {size} bytes, more than one message to the broker may carry "
                        f"({max_message_bytes} bytes with its name); not sent", code="too_large")


def total_size(files: list[Path], max_message_bytes: int) -> int:
    """The files' total size, every name and size checked first (CutqError naming the first bad one)."""
    total = 0
    for f in files:
        try:
            size = f.stat().st_size
        except OSError as e:
            raise CutqError(f"cannot read {f}: {e.strerror or e}", code="bad_request") from None
        check_image(f.name, size, max_message_bytes)
        total += size
    return total


def read_lazily(files: list[Path]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each file, read only when asked for (CutqError naming one that cannot be)."""
    for f in files:
        try:
            data = f.read_bytes()
        except OSError as e:
            raise CutqError(f"cannot read {f}: {e.strerror or e}", code="bad_request") from None
        yield f.name, data


def submit_job(wire: Wire, files: Iterable[tuple[str, bytes]], job: JobSpec, progress: Progress | None,
               total_bytes: int | None) -> dict[str, Any]:
    """Send `files` as one job (see `Client.submit`): one Submit under PART_BYTES, else streamed.
    Returns the acknowledgement's data: job_id, tasks, cached, and a `warning` if the broker gave one."""
    if isinstance(files, Sequence):
        if not files:
            raise CutqError("a job needs at least one image", code="bad_request")
        for name, data in files:  # before anything is sent
            check_image(name, len(data), wire.max_message_bytes)
        if total_bytes is None:
            total_bytes = sum(len(data) for _, data in files)
    items = iter(files)
    head: list[tuple[str, bytes]] = []
    size = 0
    for name, data in items:
        check_image(name, len(data), wire.max_message_bytes)
        head.append((name, data))
        size += len(data)
        if size >= PART_BYTES:
            return _upload(wire, job, head, items, total_bytes, progress)
    if not head:
        raise CutqError("a job needs at least one image", code="bad_request")
    if progress is not None:
        progress(0, total_bytes)
    msg = p.Submit(req=0, names=[n for n, _ in head], processor=job.processor, options=job.options,
                   priority=job.priority, tenant=job.tenant, no_cache=job.no_cache, webhook=job.webhook)
    msg.blobs = [data for _, data in head]
    data = wire._request(msg, timeout=job.timeout).data
    if progress is not None:
        progress(size, total_bytes)
    return data


def _upload(wire: Wire, job: JobSpec, head: list[tuple[str, bytes]], rest: Iterator[tuple[str, bytes]],
            total: int | None, progress: Progress | None) -> dict[str, Any]:
    """Stream a big job: UploadStart, the parts with a window of acknowledgements, Submit."""
    start = wire._request(p.UploadStart(req=0)).data
    upload_id, part_bytes = str(start["upload_id"]), int(start.get("part_bytes") or PART_BYTES)
    if progress is not None:
        progress(0, total)
    pending: dict[int, int] = {}  # req -> bytes of that part, sent and not yet acknowledged
    acked = 0

    def checked() -> Iterator[tuple[str, bytes]]:
        while head:  # handed over one by one, so the first part's bytes are not held to the end
            yield head.pop(0)
        for name, data in rest:
            check_image(name, len(data), wire.max_message_bytes)
            yield name, data

    def wait_one() -> None:
        nonlocal acked
        reply = wire._await(pending.keys(), wire.timeout)
        acked += pending.pop(reply.req)
        if progress is not None:
            progress(acked, total)

    for number, part in enumerate(_parts(checked(), part_bytes)):
        while len(pending) >= UPLOAD_WINDOW:
            wait_one()
        msg = p.UploadPart(req=0, upload_id=upload_id, part=number, names=[n for n, _ in part])
        msg.blobs = [data for _, data in part]
        pending[wire._send(msg, wire.timeout)] = sum(len(d) for d in msg.blobs)
        del msg, part  # the socket keeps what it still has to send; nothing else holds the bytes
    while pending:
        wait_one()
    done = p.Submit(req=0, names=[], processor=job.processor, options=job.options, priority=job.priority,
                    tenant=job.tenant, upload_id=upload_id, no_cache=job.no_cache, webhook=job.webhook)
    return wire._request(done, timeout=job.timeout).data


def _parts(items: Iterable[tuple[str, bytes]], part_bytes: int) -> Iterator[list[tuple[str, bytes]]]:
    """Group images into parts of about `part_bytes` (an image bigger than that goes alone)."""
    part: list[tuple[str, bytes]] = []
    size = 0
    for name, data in items:
        if part and (size + len(data) > part_bytes or len(part) >= PART_MAX_NAMES):
            yield part
            part, size = [], 0
        part.append((name, data))
        size += len(data)
    if part:
        yield part
