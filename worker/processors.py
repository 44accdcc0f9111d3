"""The processors a worker runs, behind one small interface, and their option rules.

A processor turns input bytes plus an options dict into (output bytes, extension).
It raises `InputError` when the input (or its options) is at fault: deterministic,
never retried. Any other exception is treated as transient by the caller.

`validate_options` is pure and cheap: the broker calls it at submit time to refuse
bad options early and fill in defaults. This module imports neither rembg nor
onnxruntime at import time (rembg costs about a second to import); only
`RembgProcessor` and the helpers that need them import them, lazily.
"""

from __future__ import annotations

import inspect
import io
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from shared.config import DEFAULT_MODEL, MODELS_ON_DISK_SUFFIX, OUTPUT_FORMATS, WorkerConfig
from shared.config import model_dir as default_model_dir
from worker.images import ImageInfo, InputError, load_image, normalise, sniff_format

PROCESSORS: tuple[str, ...] = ("rembg", "noop", "sleep")

# rembg's local models that need nothing but their name (rembg 2.0.86). A name
# not listed here is looked up in rembg itself (see `_model_problem`);
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
}
MAX_ERODE_SIZE = 1000  # rembg erodes with an erode_size^2 structure: cost grows with its square
SLEEP_DEFAULT_SECONDS = 1.0
SLEEP_MAX_SECONDS = 3600.0

DEFAULT_MAX_BYTES: int = WorkerConfig.max_image_bytes
DEFAULT_MAX_PIXELS: int = WorkerConfig.max_image_pixels

# Inputs whose original bytes go to rembg untouched (so the output is exactly what
# rembg.remove(bytes) gives); everything else is normalised by worker.images first.
_PLAIN_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})
_PLAIN_MODES = frozenset({"RGB", "RGBA", "L"})


class Processor(Protocol):
    """Bytes in, (bytes, extension) out; InputError when the input is at fault."""

    name: str

    def process(self, data: bytes, options: dict) -> tuple[bytes, str]: ...


# ---------------------------------------------------------------- options


def validate_options(processor: str, options: dict) -> dict:
    """Check `options` for `processor` and return a new dict with defaults filled in.

    Raises ValueError with a one-line reason (unknown processor, unknown key, bad
    type or range). Pure and cheap: rembg is imported only to look up a model name
    that is not in KNOWN_MODELS.
    """
    if processor not in PROCESSORS:
        raise ValueError(f"unknown processor {processor!r} (known: {', '.join(PROCESSORS)})")
    if not isinstance(options, dict):
        raise ValueError(f"options must be a map, not {type(options).__name__}")
    for key in options:
        if not isinstance(key, str):
            raise ValueError(f"option names must be strings, got {key!r}")
    if processor == "rembg":
        return _validate_rembg(options)
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


def _validate_rembg(options: dict) -> dict:
    _refuse_unknown("rembg", options, set(REMBG_DEFAULTS))
    out = dict(REMBG_DEFAULTS)
    out.update(options)
    model = out["model"]
    if not isinstance(model, str) or not model:
        raise ValueError("option 'model' must be a non-empty string")
    problem = _model_problem(model)
    if problem:
        raise ValueError(f"option 'model': {problem}")
    for key in ("alpha_matting", "only_mask", "post_process_mask"):
        if not isinstance(out[key], bool):
            raise ValueError(f"option {key!r} must be true or false, not {out[key]!r}")
    for key, hi in (
        ("alpha_matting_foreground_threshold", 255),
        ("alpha_matting_background_threshold", 255),
        ("alpha_matting_erode_size", MAX_ERODE_SIZE),
    ):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"option {key!r} must be an integer, not {value!r}")
        if not 0 <= value <= hi:
            raise ValueError(f"option {key!r} must be between 0 and {hi}, got {value}")
    out["bgcolor"] = _bgcolor(out["bgcolor"])
    out["format"] = _format(out["format"])
    return out


def _refuse_unknown(processor: str, options: dict, allowed: set[str]) -> None:
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


def _model_problem(model: str) -> str:
    """Why `model` cannot be used ("" when it can)."""
    if model in KNOWN_MODELS:
        return ""
    if model in REFUSED_MODELS:
        return f"model {model!r} {REFUSED_MODELS[model]}"
    try:  # a model newer than KNOWN_MODELS? ask rembg (slow once: imports onnxruntime)
        from rembg.sessions import sessions
    except (Exception, SystemExit):  # rembg calls sys.exit(1) when onnxruntime is missing
        sessions = {}
    cls = sessions.get(model)
    if cls is None:
        return f"unknown model {model!r} (known: {', '.join(KNOWN_MODELS)})"
    if model.endswith("_custom") or not cls.is_local() or cls.requires_credentials():
        return f"model {model!r} is not a local model that works by name alone"
    return ""


# ---------------------------------------------------------------- rembg


class RembgProcessor:
    """rembg background removal, one lazily created session per model, reused."""

    name = "rembg"

    def __init__(
        self,
        threads: int = 0,
        providers: list[str] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        """threads: onnxruntime intra/inter-op threads (0: its default, or OMP_NUM_THREADS);
        providers: onnxruntime execution providers (None: rembg's own choice)."""
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        self.threads = threads
        self.providers = list(providers) if providers is not None else None
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self._sessions: dict[str, Any] = {}
        self._load_lock = threading.Lock()

    @property
    def loaded_models(self) -> list[str]:
        return sorted(self._sessions)

    def preload(self, models: Iterable[str]) -> None:
        """Load sessions now; RuntimeError names the first model that cannot be loaded."""
        for model in models:
            self.session(model)

    def session(self, model: str) -> Any:
        """The rembg session for `model`, created on first use (RuntimeError if it cannot be)."""
        found = self._sessions.get(model)
        if found is not None:
            return found
        with self._load_lock:
            found = self._sessions.get(model)
            if found is None:
                found = self._sessions[model] = self._new_session(model)
            return found

    def _new_session(self, model: str) -> Any:
        try:
            import onnxruntime as ort
            import rembg

            opts = ort.SessionOptions()
            if self.threads:
                opts.intra_op_num_threads = self.threads
                opts.inter_op_num_threads = self.threads
            extra: dict[str, Any] = {}
            if self.providers is not None:
                extra["providers"] = list(self.providers)
            return rembg.new_session(model, sess_opts=opts, **extra)
        except (Exception, SystemExit) as e:  # SystemExit: rembg's exit without onnxruntime
            raise RuntimeError(f"model {model!r} could not be loaded: {_one_line(e)}") from e

    def process(self, data: bytes, options: dict) -> tuple[bytes, str]:
        try:
            opts = validate_options(self.name, options)
        except ValueError as e:
            raise InputError(f"bad options: {e}") from e
        img, info = load_image(data, max_bytes=self.max_bytes, max_pixels=self.max_pixels)
        try:
            session = self.session(opts["model"])
            import rembg

            kwargs = {
                "alpha_matting": opts["alpha_matting"],
                "alpha_matting_foreground_threshold": opts["alpha_matting_foreground_threshold"],
                "alpha_matting_background_threshold": opts["alpha_matting_background_threshold"],
                "alpha_matting_erode_size": opts["alpha_matting_erode_size"],
                "only_mask": opts["only_mask"],
                "post_process_mask": opts["post_process_mask"],
                "bgcolor": tuple(opts["bgcolor"]) if opts["bgcolor"] is not None else None,
            }
            if opts["format"] == "png" and _plain(info, img, opts):
                img.close()  # validated; rembg decodes the original bytes itself
                return rembg.remove(data, session=session, **kwargs), "png"
            cutout = rembg.remove(normalise(img), session=session, **kwargs)
        finally:
            img.close()
        out = io.BytesIO()
        if opts["format"] == "webp":
            cutout.save(out, "WEBP", lossless=True, exact=True)  # exact: keep RGB under alpha 0
        else:
            cutout.save(out, "PNG")  # as rembg.remove does for bytes
        return out.getvalue(), opts["format"]


def _plain(info: ImageInfo, img: Any, opts: dict) -> bool:
    """True when rembg can take the original bytes and needs no normalisation from us."""
    return (
        info.format in _PLAIN_FORMATS
        and info.mode in _PLAIN_MODES
        and info.frames == 1
        and info.orientation == 1
        and "transparency" not in img.info  # a tRNS colour key rembg would ignore
        and not (info.mode == "L" and opts["alpha_matting"])  # rembg's matting wants RGB
    )


def available_providers() -> list[str]:
    """onnxruntime's execution providers on this machine ([] without onnxruntime)."""
    try:
        import onnxruntime as ort
    except Exception:
        return []
    return list(ort.get_available_providers())


def models_on_disk(model_dir: str | Path | None = None) -> list[str]:
    """Model names whose weights are already in `model_dir` (default: $U2NET_HOME or ~/.u2net).

    rembg keeps `<name>.onnx` there (its older flat layout), or, in newer
    releases, `models/<name>/<name>.onnx`; both are recognised. Only names that
    `validate_options` accepts are listed.
    """
    root = Path(model_dir) if model_dir is not None else default_model_dir()
    found = []
    for model in KNOWN_MODELS:
        fname = model + MODELS_ON_DISK_SUFFIX
        if (root / fname).is_file() or (root / "models" / model / fname).is_file():
            found.append(model)
    return found


# ---------------------------------------------------------------- noop and sleep


class NoopProcessor:
    """Returns its input unchanged; the extension is sniffed from the magic bytes."""

    name = "noop"

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes

    def process(self, data: bytes, options: dict) -> tuple[bytes, str]:
        try:
            validate_options(self.name, options)
        except ValueError as e:
            raise InputError(f"bad options: {e}") from e
        if len(data) > self.max_bytes:
            raise InputError(f"file too large: {len(data)} bytes exceeds limit of {self.max_bytes}")
        return data, sniff_format(data) or "bin"


class SleepProcessor:
    """For tests: sleeps `seconds` in small steps, then returns its input unchanged.

    If `stop` (a threading.Event) is set meanwhile, gives up with a RuntimeError
    (transient: the task goes back to the queue).
    """

    name = "sleep"

    def __init__(
        self,
        stop: threading.Event | None = None,
        step: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.stop = stop
        self.step = step
        self._clock = clock
        self._sleep = sleep

    def process(self, data: bytes, options: dict) -> tuple[bytes, str]:
        try:
            opts = validate_options(self.name, options)
        except ValueError as e:
            raise InputError(f"bad options: {e}") from e
        deadline = self._clock() + opts["seconds"]
        while (left := deadline - self._clock()) > 0:
            if self.stop is not None and self.stop.is_set():
                raise RuntimeError("sleep interrupted")
            self._sleep(min(self.step, left))
        return data, sniff_format(data) or "bin"


# ---------------------------------------------------------------- factory

_CLASSES: dict[str, type] = {
    "rembg": RembgProcessor,
    "noop": NoopProcessor,
    "sleep": SleepProcessor,
}
# Settings a worker may pass to every processor; each takes the ones it knows.
COMMON_SETTINGS = frozenset({"threads", "providers", "max_bytes", "max_pixels"})


def make_processor(name: str, **settings: Any) -> Processor:
    """Build processor `name`; settings in COMMON_SETTINGS that it does not take are ignored."""
    cls = _CLASSES.get(name)
    if cls is None:
        raise ValueError(f"unknown processor {name!r} (known: {', '.join(PROCESSORS)})")
    accepted = set(inspect.signature(cls).parameters)
    unknown = sorted(set(settings) - accepted - COMMON_SETTINGS)
    if unknown:
        raise TypeError(f"processor {name!r} takes no setting {unknown[0]!r}")
    return cls(**{k: v for k, v in settings.items() if k in accepted})


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or e.__class__.__name__
    return text[:300]
