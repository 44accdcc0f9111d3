"""Job options: validated and defaulted once, at submit time, so a bad job stores nothing.

Shared by the broker (which refuses bad submissions) and the worker (which trusts
what the broker stored).  Importing this module is cheap; rembg's model list is
looked up lazily the first time a rembg job is validated.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from shared.config import DEFAULT_MODEL, OUTPUT_FORMATS

PROCESSORS: tuple[str, ...] = ("rembg", "noop", "sleep")
# rembg's local models (2.0.86); anything else is looked up in rembg itself, which
# costs a second of import on first use: never on the broker's hot path for these
KNOWN_MODELS: tuple[str, ...] = (
    "u2netp", "u2net", "u2net_human_seg", "u2net_cloth_seg", "silueta", "isnet-general-use", "isnet-anime",
    "sam", "bria-rmbg", "birefnet-general", "birefnet-general-lite", "birefnet-general-fp16",
    "birefnet-portrait", "birefnet-dis", "birefnet-hrsod", "birefnet-cod", "birefnet-massive",
)

_REMBG_DEFAULTS: dict[str, Any] = {
    "model": DEFAULT_MODEL,
    "alpha_matting": False,
    "alpha_matting_foreground_threshold": 240,
    "alpha_matting_background_threshold": 10,
    "alpha_matting_erode_size": 10,
    "only_mask": False,
    "post_process_mask": False,
    "bgcolor": None,
    "format": "png",
}
_HEX = re.compile(r"^#?([0-9a-fA-F]{6})([0-9a-fA-F]{2})?$")


@functools.lru_cache(maxsize=1)
def rembg_models() -> tuple[str, ...]:
    """Every model name rembg knows (downloadable or on disk)."""
    from rembg.sessions import sessions_names  # heavy (onnxruntime): only when needed

    return tuple(sessions_names)


def parse_color(value: Any) -> list[int]:
    """'#rrggbb', '#rrggbbaa', or [r, g, b(, a)] -> [r, g, b, a]; ValueError otherwise."""
    if isinstance(value, str):
        m = _HEX.match(value.strip())
        if not m:
            raise ValueError(f"bgcolor {value!r} is not #rrggbb or #rrggbbaa")
        rgb = [int(m.group(1)[i:i + 2], 16) for i in (0, 2, 4)]
        return rgb + [int(m.group(2), 16) if m.group(2) else 255]
    if isinstance(value, (list, tuple)) and len(value) in (3, 4) and all(
        isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value
    ):
        return list(value) + ([255] if len(value) == 3 else [])
    raise ValueError(f"bgcolor {value!r} must be 3 or 4 integers 0-255 or a #hex colour")


def _int_in(options: dict, key: str, low: int, high: int) -> None:
    v = options[key]
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
        raise ValueError(f"{key} must be an integer from {low} to {high}, got {v!r}")


def validate_options(processor: str, options: dict[str, Any]) -> dict[str, Any]:
    """Check a job's options for `processor` and fill defaults; one-line ValueError if bad."""
    if processor not in PROCESSORS:
        raise ValueError(f"unknown processor {processor!r} (one of: {', '.join(PROCESSORS)})")
    if processor == "sleep":
        allowed: dict[str, Any] = {"seconds": 1.0, "format": "png"}
    elif processor == "noop":
        allowed = {"format": "png", "model": DEFAULT_MODEL}
    else:
        allowed = _REMBG_DEFAULTS
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r} for processor {processor} (known: {', '.join(allowed)})")
    out = {**allowed, **options}
    if out["format"] not in OUTPUT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(OUTPUT_FORMATS)}, got {out['format']!r}")
    if processor == "sleep":
        s = out["seconds"]
        if not isinstance(s, (int, float)) or isinstance(s, bool) or not 0 <= s <= 3600:
            raise ValueError(f"seconds must be a number from 0 to 3600, got {s!r}")
    if processor != "rembg":
        return out
    if not isinstance(out["model"], str) or (out["model"] not in KNOWN_MODELS and out["model"] not in rembg_models()):
        raise ValueError(f"unknown rembg model {out['model']!r} (known: {', '.join(rembg_models())})")
    for key in ("alpha_matting", "only_mask", "post_process_mask"):
        if not isinstance(out[key], bool):
            raise ValueError(f"{key} must be true or false, got {out[key]!r}")
    _int_in(out, "alpha_matting_foreground_threshold", 0, 255)
    _int_in(out, "alpha_matting_background_threshold", 0, 255)
    _int_in(out, "alpha_matting_erode_size", 0, 1000)
    if out["bgcolor"] is not None:
        out["bgcolor"] = parse_color(out["bgcolor"])
    return out
