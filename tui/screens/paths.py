"""Path completion for the submit and fetch dialogs."""

from __future__ import annotations

import os
from pathlib import Path

from textual.suggester import Suggester

from shared.client import IMAGE_SUFFIXES


def complete_path(value: str, dirs_only: bool = False, limit: int = 200) -> str | None:
    """The first completion of a partly typed path ('~/pho' -> '~/photos/'), or None.

    Folders come first, then images, each by name; directories complete with a trailing
    slash; hidden (.git) and dunder (__pycache__) entries only when the typed name starts
    that way; files only if they look like images (unless dirs_only).
    """
    if not value:
        return None
    if value == "~":
        return "~" + os.sep
    head, tail = os.path.split(value)
    base = Path(os.path.expanduser(head or "."))
    try:
        with os.scandir(base) as it:
            entries = [e for e in it if e.name.startswith(tail) and not _hidden(e.name, tail)]
    except OSError:
        return None
    candidates: list[tuple[bool, str]] = []
    for entry in entries:
        try:
            is_dir = entry.is_dir()
        except OSError:
            continue
        if not is_dir and (dirs_only or Path(entry.name).suffix.lower() not in IMAGE_SUFFIXES):
            continue
        candidates.append((not is_dir, entry.name))
    for is_file, name in sorted(candidates)[:limit]:
        completed = name + ("" if is_file else os.sep)
        if completed != tail:
            return value[: len(value) - len(tail)] + completed
    return None


def _hidden(name: str, typed: str) -> bool:
    """A dot or dunder entry the user did not start typing (.git, __pycache__)."""
    return (name.startswith(".") and not typed.startswith(".")) or (name.startswith("__")
                                                                    and not typed.startswith("_"))


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
