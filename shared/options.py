"""Job options: validated and defaulted once, at submit time, so a bad job stores nothing.

The broker refuses bad submissions with these rules; the worker re-checks what it
runs with the same ones.  Never imports rembg or onnxruntime: a model name is
valid when it is in KNOWN_MODELS or among the names the caller passes (the
broker: what live workers announce; a worker: what its rembg registers).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from shared.config import DEFAULT_MODEL, OUTPUT_FORMATS

PROCESSORS: tuple[str, ...] = ("rembg", "noop", "sleep")

# rembg's local models that need nothing but their name (rembg 2.0.86). Others are
# accepted only when a worker announces them (see `_model_problem`);
# tests/test_processors.py fails when this list drifts from the installed rembg.
KNOWN_MODELS: tuple[str, ...] = (
    "u2netp", "u2net", "u2net_human_seg", "u2net_cloth_seg", "silueta",
    "isnet-general-use", "isnet-anime", "sam", "bria-rmbg",
    "birefnet-general", "birefnet-general-lite", "birefnet-general-fp16",
    "birefnet-portrait", "birefnet-dis", "birefnet-hrsod", "birefnet-cod",
    "birefnet-massive",
)
# Registered in rembg but refused here: the *_custom sessions need a model_path,
# and the remote ones send the image to a paid third-party service.
REFUSED_MODELS: dict[str, str] = {
    "u2net_custom": "needs a model_path, which cutq does not pass",
    "dis_custom": "needs a model_path, which cutq does not pass",
    "ben_custom": "needs a model_path, which cutq does not pass",
    "withoutbg": "is a remote paid service, not a local model",
    "atlascloud": "is a remote paid service, not a local model",
}

REMBG_DEFAULTS: dict[str, Any] = {
    "model": DEFAULT_MODEL,
    "alpha_matting": False,
    "alpha_matting_foreground_threshold": 240,
    "alpha_matting_background_threshold": 10,
    "alpha_matting_erode_size": 10,
    "only_mask": False,
    "post_process_mask": False,
    "bgcolor": None,
    "format": "png",
    # zlib level of a PNG result: same pixels at every level; 6 is rembg's (and gives its exact
    # bytes); 1 (run-length) encodes 3x faster for a file no larger (docs/PERFORMANCE.md)
    "png_compression": 1,
}
MAX_ERODE_SIZE = 1000  # rembg erodes with an erode_size^2 structure: cost grows with its square
SLEEP_DEFAULT_SECONDS = 1.0
SLEEP_MAX_SECONDS = 3600.0


# ---------------------------------------------------------------- options


def validate_options(processor: str, options: dict[str, Any], extra_models: Collection[str] = ()) -> dict[str, Any]:
    """Check `options` for `processor` and return a new dict with defaults filled in.

    Raises ValueError with a one-line reason (unknown processor, unknown key, bad
    type or range). Pure and cheap. `extra_models`: model names valid beyond
    KNOWN_MODELS (those that workers announce).
    """
    if processor not in PROCESSORS:
        raise ValueError(f"unknown processor {processor!r} (known: {', '.join(PROCESSORS)})")
    if not isinstance(options, dict):
        raise ValueError(f"options must be a map, not {type(options).__name__}")
    for key in options:
        if not isinstance(key, str):
            raise ValueError(f"option names must be strings, got {key!r}")
    if processor == "rembg":
        return _validate_rembg(options, extra_models)
    if processor == "noop":
        # `model` is accepted and dropped: clients send their default model with any job.
        _refuse_unknown(processor, options, {"format", "model"})
        return {"format": _format(options["format"])} if "format" in options else {}
    _refuse_unknown(processor, options, {"seconds", "format"})
    seconds = options.get("seconds", SLEEP_DEFAULT_SECONDS)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ValueError(f"option 'seconds' must be a number, not {type(seconds).__name__}")
    if not 0.0 <= seconds <= SLEEP_MAX_SECONDS:  # also refuses NaN
        raise ValueError(f"option 'seconds' must be between 0 and {SLEEP_MAX_SECONDS:g}, got {seconds!r}")
    out: dict[str, Any] = {"seconds": float(seconds)}
    if "format" in options:
        out["format"] = _format(options["format"])
    return out


def _validate_rembg(options: dict[str, Any], extra_models: Collection[str]) -> dict[str, Any]:
    _refuse_unknown("rembg", options, set(REMBG_DEFAULTS))
    out = dict(REMBG_DEFAULTS)
    out.update(options)
    model = out["model"]
    if not isinstance(model, str) or not model:
        raise ValueError("option 'model' must be a non-empty string")
    problem = _model_problem(model, extra_models)
    if problem:
        raise ValueError(f"option 'model': {problem}")
    for key in ("alpha_matting", "only_mask", "post_process_mask"):
        if not isinstance(out[key], bool):
            raise ValueError(f"option {key!r} must be true or false, not {out[key]!r}")
    for key, hi in (
        ("alpha_matting_foreground_threshold", 255),
        ("alpha_matting_background_threshold", 255),
        ("alpha_matting_erode_size", MAX_ERODE_SIZE),
        ("png_compression", 9),
    ):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"option {key!r} must be an integer, not {value!r}")
        if not 0 <= value <= hi:
            raise ValueError(f"option {key!r} must be between 0 and {hi}, got {value}")
    out["bgcolor"] = _bgcolor(out["bgcolor"])
    out["format"] = _format(out["format"])
    return out


def _refuse_unknown(processor: str, options: dict[str, Any], allowed: set[str]) -> None:
    for key in options:
        if key not in allowed:
            raise ValueError(
                f"unknown option {key!r} for processor {processor!r} "
                f"(allowed: {', '.join(sorted(allowed))})"
            )


def _format(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in OUTPUT_FORMATS:
        raise ValueError(f"option 'format' must be one of {', '.join(OUTPUT_FORMATS)}, got {value!r}")
    return value.lower()


_HEX_COLOUR = re.compile(r"#([0-9a-fA-F]{6}|[0-9a-fA-F]{8})")


def _bgcolor(value: Any) -> list[int] | None:
    """None, [r, g, b, a] / [r, g, b] ints 0-255, or "#rrggbb" / "#rrggbbaa" -> a 4-list."""
    if value is None:
        return None
    if isinstance(value, str):
        m = _HEX_COLOUR.fullmatch(value.strip())
        if not m:
            raise ValueError(f"option 'bgcolor' must be '#rrggbb' or '#rrggbbaa', got {value!r}")
        digits = m.group(1) + ("ff" if len(m.group(1)) == 6 else "")
        return [int(digits[i : i + 2], 16) for i in range(0, 8, 2)]
    if isinstance(value, (list, tuple)) and len(value) in (3, 4):
        if all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value):
            return [*value, 255] if len(value) == 3 else list(value)
    raise ValueError(f"option 'bgcolor' must be [r, g, b, a] with integers 0-255, got {value!r}")


def _model_problem(model: str, extra_models: Collection[str] = ()) -> str:
    """Why `model` cannot be used ("" when it can)."""
    if model in REFUSED_MODELS:
        return f"model {model!r} {REFUSED_MODELS[model]}"
    if model in KNOWN_MODELS or model in extra_models:
        return ""
    known = sorted({*KNOWN_MODELS, *extra_models})
    return f"unknown model {model!r} (known: {', '.join(known)})"
