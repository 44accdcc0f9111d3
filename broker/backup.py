"""`cutq backup`: an online copy of a broker's data dir, made while the broker keeps serving.

1. write DATA/backup.lock (pid and time): while it is fresh, the broker holds back blob
   deletions (`DeletionHold`, asked by broker/blobio.py), so no blob the snapshot names
   can vanish before it is copied;
2. copy the database with SQLite's online backup API into DEST/cutq.db: the queue as
   one commit left it (broker/store/backup.py);
3. copy every blob that copy names into DEST/blobs with the same fan-out: a hard link
   when DEST is on the same file system (blobs are never changed in place), else a copy
   checked against its digest and fsynced;
4. copy DATA/keys if present; remove the lock.

DEST is 0700 and every file in it 0600.  `cutq broker --data DEST` serves the copy.
See docs/RELIABILITY.md, "Backup and restore".
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from broker.blobs import fsync_dir, write_new
from broker.store import StoreError
from broker.store.backup import named_blobs, snapshot, summary

log = logging.getLogger("cutq.backup")

DB_NAME, BLOBS_NAME, KEYS_NAME, LOCK_NAME = "cutq.db", "blobs", "keys", "backup.lock"
LOCK_MAX_AGE_S = 3600.0  # an older lock is a crashed backup's: the broker deletes again
LOCK_REFRESH_S = 60.0  # a long copy touches its lock this often, so it never looks crashed
DIR_MODE, FILE_MODE = 0o700, 0o600
_CHUNK = 1024 * 1024
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES}


class BackupError(Exception):
    """The backup could not be made, or is incomplete (one line for the user)."""


@dataclass
class BackupReport:
    """What a backup copied."""

    dest: str
    counts: dict[str, int]  # jobs, tasks_<state> in the copy
    blobs: int = 0
    blob_bytes: int = 0
    linked: int = 0
    copied: int = 0
    key_files: int = 0
    seconds: float = 0.0
    missing: list[str] = field(default_factory=list)  # digests the database names that were not there

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- the lock, as the broker sees it


def lock_is_fresh(path: Path, now: float | None = None) -> bool:
    """Whether a backup holds `path` now: it exists and was written or touched within the hour."""
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return False
    return (time.time() if now is None else now) - mtime < LOCK_MAX_AGE_S


class DeletionHold:
    """Blob deletions held back while DATA/backup.lock is fresh, handed back once it is gone.

    Thread-safe: the broker's blob threads call `admit`.  Held digests go back through
    `resubmit` (BlobIO.delete: its usual checks run again, so a blob that a row, an upload
    or a new submission of the same bytes came to need meanwhile stays) at the next `admit`
    after the lock is gone, or from a watcher thread that looks every `poll_s` while some
    are held, whichever comes first."""

    def __init__(self, data_dir: Path, poll_s: float = 1.0) -> None:
        self.lock = data_dir / LOCK_NAME
        self.poll_s = poll_s
        self._held: list[str] = []
        self._watching = False
        self._mutex = threading.Lock()

    def admit(self, digests: list[str], resubmit: Callable[[list[str]], None]) -> list[str]:
        """The digests to delete now: none while a backup runs (they are held); after it, all
        of them, and the held ones go back through `resubmit`."""
        with self._mutex:
            if lock_is_fresh(self.lock):
                self._held.extend(digests)
                if not self._watching:
                    self._watching = True
                    threading.Thread(target=self._watch, args=(resubmit,), daemon=True,
                                     name="cutq-backup-hold").start()
                return []
            held, self._held = self._held, []
        _hand_back(held, resubmit)
        return digests

    def _watch(self, resubmit: Callable[[list[str]], None]) -> None:
        while True:
            time.sleep(self.poll_s)
            with self._mutex:
                if lock_is_fresh(self.lock):
                    continue
                held, self._held = self._held, []
                self._watching = False
            _hand_back(held, resubmit)
            return


def _hand_back(held: list[str], resubmit: Callable[[list[str]], None]) -> None:
    if not held:
        return
    log.info("deleting the %d blobs held while a backup ran", len(held))
    try:
        resubmit(list(dict.fromkeys(held)))
    except RuntimeError:  # the broker is stopping (its pool takes no more work): the start-up sweep will
        log.info("stopping: %d blobs held while a backup ran are left to the next start's sweep", len(held))


def deletion_hold(owner: object, blob_root: Path | None) -> DeletionHold | None:
    """The hold of one blob-deleting object, made on first use; None for a store with no folder."""
    if blob_root is None:
        return None
    found: DeletionHold | None = vars(owner).get("_backup_hold")
    if found is None:
        found = vars(owner).setdefault("_backup_hold", DeletionHold(blob_root.parent))
    return found


# ---------------------------------------------------------------- the backup itself


def backup(data_dir: Path, dest: Path, *, link: bool = True) -> BackupReport:
    """Copy the broker's data in `data_dir` into `dest` (new or empty) while the broker runs.

    Raises BackupError when nothing useful was made, or when the copy lacks blobs its
    database names (`missing`; the copy is then left in place for inspection)."""
    started = time.monotonic()
    data_dir, dest = data_dir.absolute(), dest.absolute()
    source_db = data_dir / DB_NAME
    if not source_db.is_file():
        raise BackupError(f"no cutq database in {data_dir} (pass the broker's --data)")
    _check_dest(data_dir, dest)
    dest.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(dest, DIR_MODE)
    lock = _take_lock(data_dir)
    try:
        try:
            snapshot(source_db, dest / DB_NAME)
            report = BackupReport(str(dest), summary(dest / DB_NAME))
        except StoreError as e:
            raise BackupError(str(e)) from e
        _copy_blobs(data_dir / BLOBS_NAME, dest / BLOBS_NAME, dest / DB_NAME, report, link, lock)
        report.key_files = _copy_tree(data_dir / KEYS_NAME, dest / KEYS_NAME)
        fsync_dir(dest)
    finally:
        lock.unlink(missing_ok=True)
    report.seconds = round(time.monotonic() - started, 3)
    if report.missing:
        raise BackupError(f"{len(report.missing)} blob(s) the database names are missing from {data_dir / BLOBS_NAME} "
                          f"(first: {report.missing[0][:16]}); the copy in {dest} lacks them")
    return report


def _check_dest(data_dir: Path, dest: Path) -> None:
    real_data, real_dest = data_dir.resolve(), dest.resolve()
    if real_dest == real_data or real_data in real_dest.parents:
        raise BackupError(f"the backup must go outside the data dir {data_dir}, not to {dest}")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest} is not an empty folder: a backup goes into a new or empty one")


def _take_lock(data_dir: Path) -> Path:
    """Write DATA/backup.lock; refuse while another live backup holds a fresh one."""
    path = data_dir / LOCK_NAME
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            pid = _lock_pid(path)
            if lock_is_fresh(path) and pid is not None and _alive(pid):
                raise BackupError(f"another backup (pid {pid}) is running on {data_dir}; "
                                  f"if it is not, remove {path}") from None
            path.unlink(missing_ok=True)  # a crashed backup's
            continue
        os.close(fd)
        path.write_text(f"{os.getpid()} {time.time():.3f}\n")
        fsync_dir(data_dir)
        return path
    raise BackupError(f"could not take {path}: another backup keeps taking it")


def _lock_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _copy_blobs(src_root: Path, dst_root: Path, db: Path, report: BackupReport, link: bool, lock: Path) -> None:
    """Every blob the copied database names, in the same fan-out; folders fsynced at the end."""
    dst_root.mkdir(mode=DIR_MODE, exist_ok=True)
    os.chmod(dst_root, DIR_MODE)
    folders: set[Path] = {dst_root}
    touched = time.monotonic()
    try:
        for digest, size in named_blobs(db):
            if time.monotonic() - touched > LOCK_REFRESH_S:
                _touch(lock)
                touched = time.monotonic()
            rel = Path(digest[:2]) / digest[2:4] / digest
            src, dst = src_root / rel, dst_root / rel
            for folder in (dst.parent.parent, dst.parent):  # each level 0700 (parents=True would not be)
                if folder not in folders:
                    folder.mkdir(mode=DIR_MODE, exist_ok=True)
                    os.chmod(folder, DIR_MODE)
                    folders.add(folder)
            try:
                linked = _copy_blob(src, dst, digest, link)
            except FileNotFoundError:
                report.missing.append(digest)
                continue
            report.blobs += 1
            report.blob_bytes += size
            report.linked += linked
            report.copied += not linked
    except StoreError as e:
        raise BackupError(str(e)) from e
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
        fsync_dir(folder)


def _copy_blob(src: Path, dst: Path, digest: str, link: bool) -> bool:
    """Hard-link `src` to `dst` (True), or copy it checking its digest (False)."""
    if link:
        try:
            os.link(src, dst)
            os.chmod(dst, FILE_MODE)
            return True
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise
    tmp = dst.with_name(dst.name + ".part")
    tmp.unlink(missing_ok=True)
    h = hashlib.sha256()
    with open(src, "rb") as f:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    if h.hexdigest() != digest:
        tmp.unlink(missing_ok=True)
        raise BackupError(f"blob {src} does not match its digest: it is damaged in the data dir")
    os.replace(tmp, dst)
    return False


def _copy_tree(src: Path, dst: Path) -> int:
    """Copy a folder (the keys) as it is, folders 0700 and files 0600; links are not followed."""
    if not src.is_dir():
        return 0
    n = 0
    for root, dirs, files in os.walk(src):
        here = dst / Path(root).relative_to(src)
        here.mkdir(exist_ok=True, mode=DIR_MODE)  # os.walk goes top-down: its parent is made
        os.chmod(here, DIR_MODE)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            with open(path, "rb") as f:
                data = f.read()
            write_new(here / name, data)
            n += 1
        fsync_dir(here)
    return n


def _touch(lock: Path) -> None:
    try:
        os.utime(lock)
    except FileNotFoundError:  # removed by hand: put it back, the copy still needs it
        write_new(lock, f"{os.getpid()} {time.time():.3f}\n".encode())
