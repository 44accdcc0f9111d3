"""File names that cross a trust boundary: input names at submit, result names at fetch.

Pure functions, no I/O.  An input name is whatever a client sent; a result's extension
is whatever a worker sent.  Neither may decide where `cutq fetch` writes: the file name
is derived here (base name only, no separators, no control characters, never `.`/`..`
or hidden, bounded length, an extension from a known set), and the caller still checks
the resolved path stays inside its folder.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Container

MAX_INPUT_NAME_BYTES = 1024  # UTF-8; a submitted name longer than this is refused
MAX_RESULT_NAME_BYTES = 200  # UTF-8, extension and collision suffix included (filesystems allow 255)
RESULT_EXTENSIONS = ("png", "webp", "jpg", "jpeg")
DEFAULT_RESULT_EXTENSION = "png"
# names Windows will not create as files, whatever the extension
_RESERVED = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))})


def _unsafe_char(ch: str) -> bool:
    # C*: controls (NUL, newline, ESC...), format characters (bidi overrides), surrogates,
    # private use, unassigned; Zl/Zp: line and paragraph separators
    return unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp")


def validate_input_name(name: object) -> str | None:
    """Why a submitted file name is refused, or None if it is acceptable.

    Refused: not a string, empty, longer than MAX_INPUT_NAME_BYTES in UTF-8, or holding a
    control, format or surrogate character (NUL, newline, ESC, bidi overrides...).
    Slashes are allowed here (the name is a label); `safe_result_name` drops directories.
    """
    if not isinstance(name, str):
        return f"a file name must be a string, not {type(name).__name__}"
    if not name:
        return "a file name is empty"
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_INPUT_NAME_BYTES:
        return f"file name {quote_name(name)} is {size} bytes long (at most {MAX_INPUT_NAME_BYTES})"
    if name.isascii() and name.isprintable():  # the usual name: no control character, nothing else to look at
        return None
    bad = next((ch for ch in name if _unsafe_char(ch)), None)
    if bad is not None:
        return f"file name {quote_name(name)} contains the unprintable character U+{ord(bad):04X}"
    return None


def quote_name(name: object, limit: int = 60) -> str:
    """A short, printable, one-line rendering of an untrusted name for an error message."""
    text = str(name)
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def _truncate_utf8(text: str, max_bytes: int) -> str:
    return text.encode("utf-8")[:max(0, max_bytes)].decode("utf-8", "ignore")


def _trim(text: str) -> str:
    """Without leading or trailing dots and spaces: no hidden file, no `.`/`..`, nothing Windows mangles."""
    while True:
        trimmed = text.strip().strip(".")
        if trimmed == text:
            return text
        text = trimmed


def _clean_stem(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    # drop controls and the like; every other kind of space becomes a plain one
    base = "".join(" " if unicodedata.category(ch) == "Zs" else ch for ch in base if not _unsafe_char(ch))
    dot = base.rfind(".")
    return _trim(base[:dot] if dot > 0 else base)


def name_key(name: str) -> str:
    """What two file names must differ in to be two files on every common filesystem
    (case-insensitive, normalisation-insensitive): keep these in `taken`."""
    return unicodedata.normalize("NFC", name).casefold()


def result_extension(ext: object) -> str:
    """A worker-reported extension if it is a known image format, else DEFAULT_RESULT_EXTENSION."""
    if isinstance(ext, str) and ext.lower() in RESULT_EXTENSIONS:
        return ext.lower()
    return DEFAULT_RESULT_EXTENSION


def safe_result_name(name: object, ext: object, task_id: int, taken: Container[str] = frozenset()) -> str:
    """The file name a result is written under in a fetch folder: `<input stem>.<ext>`, made safe.

    `name` is the task's input name and `ext` the worker's extension, both untrusted.  The
    result is one path component: never empty, `.` or `..`, no `/`, `\\`, NUL or other control
    character, not hidden, at most MAX_RESULT_NAME_BYTES in UTF-8, its extension from
    RESULT_EXTENSIONS.  With nothing usable left it is `task-<task_id>.<ext>`.  `taken` holds the
    `name_key`s of the names already given out in this fetch: a colliding name gets a `-2`, `-3`...
    suffix (compared without case or normalisation, so it also holds on macOS and Windows).
    """
    extension = result_extension(ext)
    stem = _clean_stem(name) if isinstance(name, str) else ""
    if not stem or stem.casefold() in _RESERVED:
        stem = f"task-{int(task_id)}" if not stem else f"_{stem}"
    suffix, n = "", 1
    while True:
        room = MAX_RESULT_NAME_BYTES - len(f"{suffix}.{extension}".encode())
        short = _trim(_truncate_utf8(stem, room))
        candidate = f"{short or f'task-{int(task_id)}'}{suffix}.{extension}"
        if name_key(candidate) not in taken:
            return candidate
        n += 1
        suffix = f"-{n}"
