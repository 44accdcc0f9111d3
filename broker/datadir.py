"""The broker's data dir: private to the broker's user, whatever the umask.

It holds every tenant's images and results, so the folder is 0700 and every file
in it 0600.  SQLite creates the -wal and -shm files with the database's own mode,
so creating the database 0600 first covers them too.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIR_MODE, FILE_MODE = 0o700, 0o600
DB_NAME = "cutq.db"


def prepare_data_dir(path: Path) -> list[str]:
    """Create or tighten `path` (0700) and its files (0600); return warnings for the log."""
    warnings: list[str] = []
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            warnings.append(f"data dir {path} was readable by group or others (mode {mode:o}); "
                            f"tightened to {DIR_MODE:o}")
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(path, DIR_MODE)
    db = path / DB_NAME
    if not db.exists():
        os.close(os.open(db, os.O_CREAT | os.O_WRONLY, FILE_MODE))
    tighten_tree(path)
    return warnings


def tighten_tree(path: Path) -> None:
    """Every folder under `path` 0700 and every file 0600 (never follows symlinks)."""
    for root, dirs, files in os.walk(path):
        for d in dirs:
            p = os.path.join(root, d)
            if not os.path.islink(p):
                os.chmod(p, DIR_MODE)
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                os.chmod(p, FILE_MODE)
