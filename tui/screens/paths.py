"""Path completion for the submit and fetch dialogs."""

from __future__ import annotations

import os
from pathlib import Path

from textual.suggester import Suggester

from shared.client import IMAGE_SUFFIXES


def complete_path(value: str, dirs_only: bool = False, limit: int = 200) -> str | None:
    """The first completion of a partly typed path ('~/pho' -> '~/photos/'), or None.

    Directories complete with a trailing slash; hidden entries only when the typed
    name starts with a dot; files only if they look like images (unless dirs_only).
    """
    if not value:
        return None
    if value == "~":
        return "~" + os.sep
    head, tail = os.path.split(value)
    base = Path(os.path.expanduser(head or "."))
    try:
        entries = sorted(os.scandir(base), key=lambda e: e.name)[:limit]
    except OSError:
        return None
    for entry in entries:
        name = entry.name
        if not name.startswith(tail) or (name.startswith(".") and not tail.startswith(".")):
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:
            continue
        if not is_dir and (dirs_only or Path(name).suffix.lower() not in IMAGE_SUFFIXES):
            continue
        completed = name + (os.sep if is_dir else "")
        if completed != tail:
            return value[: len(value) - len(tail)] + completed
    return None


def count_images(value: str) -> tuple[int, str]:
    """How many images a submit of this path would send, and a short description."""
    if not value.strip():
        return 0, "type a file or folder of images"
    path = Path(os.path.expanduser(value.strip()))
    if path.is_dir():
        try:
            n = sum(1 for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        except OSError as e:
            return 0, f"cannot read folder: {e.strerror}"
        return n, f"{n} image{'s' * (n != 1)} in this folder" if n else "no images in this folder"
    if path.is_file():
        return 1, f"1 file ({path.suffix.lstrip('.') or 'no extension'})"
    return 0, "no such file or folder"


class PathSuggester(Suggester):
    """Suggests the rest of a file or folder name as the user types (→ or Tab accepts)."""

    def __init__(self, dirs_only: bool = False) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.dirs_only = dirs_only

    async def get_suggestion(self, value: str) -> str | None:
        return complete_path(value, dirs_only=self.dirs_only)
