"""The processors a worker runs, behind one small interface, and their option rules.

A processor turns input bytes plus an options dict into (output bytes, extension).
It raises `InputError` when the input (or its options) is at fault: deterministic,
never retried. Any other exception is treated as transient by the caller.

`validate_options` is pure and cheap: the broker calls it at submit time to refuse
bad options early and fill in defaults; here it also accepts any local model the
installed rembg registers (`rembg_local_models`), which the broker cannot know. This module imports neither rembg nor
onnxruntime at import time (rembg costs about a second to import); only
`RembgProcessor` and the helpers that need them import them, lazily.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from shared.config import MODELS_ON_DISK_SUFFIX, WorkerConfig
from shared.config import model_dir as default_model_dir
from shared.options import (  # noqa: F401  (re-exported: the worker's view of the rules)
    KNOWN_MODELS,
    MAX_ERODE_SIZE,
    PROCESSORS,
    REFUSED_MODELS,
    REMBG_DEFAULTS,
    SLEEP_DEFAULT_SECONDS,
    SLEEP_MAX_SECONDS,
    validate_options,
)
from worker.images import ImageInfo, InputError, load_image, normalise, sniff_format

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
        fast: bool = True,
    ) -> None:
        """threads: onnxruntime intra/inter-op threads (0: its default, or OMP_NUM_THREADS);
        providers: onnxruntime execution providers (None: rembg's own choice);
        fast: cut out from the pixels already decoded, with worker/cutout.py (same pixels
        as rembg.remove); False: hand rembg.remove the original bytes, as before."""
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        self.threads = threads
        self.providers = list(providers) if providers is not None else None
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.fast = fast
        self._sessions: dict[str, Any] = {}
        self._predictors: dict[str, Any] = {}
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
                if self.fast:
                    from worker.cutout import predictor_for

                    self._predictors[model] = predictor_for(found)
            return found

    def predictor(self, model: str) -> Any:
        """The fast predictor for `model` (worker/cutout.py), None where rembg's predict runs."""
        self.session(model)
        return self._predictors.get(model)

    def session_options(self) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # onnxruntime's memory pattern keeps a second, planned block beside its arena: for
        # u2netp ~190 MiB more per slot for no speed (bench/profile_slot.py, docs/PERFORMANCE.md);
        # where a tensor lives never changes its numbers
        opts.enable_mem_pattern = False
        if self.threads:
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = self.threads
        return opts

    def _new_session(self, model: str) -> Any:
        try:
            import rembg

            extra: dict[str, Any] = {}
            if self.providers is not None:
                extra["providers"] = list(self.providers)
            return rembg.new_session(model, sess_opts=self.session_options(), **extra)
        except (Exception, SystemExit) as e:  # SystemExit: rembg's exit without onnxruntime
            raise RuntimeError(f"model {model!r} could not be loaded: {_one_line(e)}") from e

    def process(self, data: bytes, options: dict) -> tuple[bytes, str]:
        opts = self.options(options)
        if not self.fast:
            return self._process_plain(data, opts)
        from worker.cutout import cut_out, encode

        img = self.decode(data, opts)
        try:
            cutout = cut_out(img, self.session(opts["model"]), self.predictor(opts["model"]), opts)
        finally:
            img.close()
        return encode(cutout, opts["format"], opts["png_compression"]), opts["format"]

    def process_batch(self, items: list[tuple[bytes, dict]]) -> list[tuple[bytes, str] | Exception]:
        """Micro-batching: what process() gives for each (data, options), or the exception it
        would raise. Inputs of one model whose session can batch (worker/cutout.py) go through
        onnxruntime as one batch, with the same masks as one by one; the rest run alone."""
        results: list[tuple[bytes, str] | Exception | None] = [None] * len(items)
        groups: dict[str, list[tuple[int, Any, dict]]] = {}
        for i, (data, options) in enumerate(items):
            try:
                opts = self.options(options)
                if not self._batchable(opts["model"]):
                    results[i] = self.process(data, options)
                    continue
                groups.setdefault(opts["model"], []).append((i, self.decode(data, opts), opts))
            except Exception as e:
                results[i] = e
        for model, group in groups.items():
            try:
                self._run_group(model, group, results)
            finally:
                for _, img, _ in group:
                    img.close()
        return [r if r is not None else RuntimeError("no result") for r in results]

    def _batchable(self, model: str) -> bool:
        if not self.fast:
            return False
        predictor = self.predictor(model)
        return predictor is not None and predictor.enable_batching(self.session_options(), self.providers)

    def _run_group(self, model: str, group: list[tuple[int, Any, dict]], results: list) -> None:
        import numpy as np

        from worker.cutout import cut_out, encode

        session, predictor = self.session(model), self.predictor(model)
        try:
            outputs = predictor.infer(np.stack([predictor.prepare(img) for _, img, _ in group]))
        except Exception as e:
            for i, _, _ in group:
                results[i] = e
            return
        for k, (i, img, opts) in enumerate(group):
            try:
                mask = predictor.mask(outputs[k:k + 1], img.size)
                cutout = cut_out(img, session, predictor, opts, masks=[mask])
                results[i] = (encode(cutout, opts["format"], opts["png_compression"]), opts["format"])
            except Exception as e:
                results[i] = e

    def options(self, options: dict) -> dict:
        """The task's options checked and defaulted (InputError when they are bad)."""
        try:
            return validate_options(self.name, options, rembg_local_models())
        except ValueError as e:
            raise InputError(f"bad options: {e}") from e

    def decode(self, data: bytes, opts: dict) -> Any:
        """The input decoded once, as rembg.remove would see it: the file's own pixels when
        rembg could take the bytes as they are, else upright RGB/RGBA (worker/images.py)."""
        img, info = load_image(data, max_bytes=self.max_bytes, max_pixels=self.max_pixels)
        if _plain(info, img, opts):
            return img
        try:
            return normalise(img)
        finally:
            img.close()

    def _process_plain(self, data: bytes, opts: dict) -> tuple[bytes, str]:
        """rembg.remove itself on the original bytes (or on normalised pixels), then encode."""
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
            if opts["format"] == "png" and opts["png_compression"] == 6 and _plain(info, img, opts):
                img.close()  # validated; rembg decodes the original bytes itself
                return rembg.remove(data, session=session, **kwargs), "png"
            cutout = rembg.remove(normalise(img), session=session, **kwargs)
        finally:
            img.close()
        from worker.cutout import encode

        return encode(cutout, opts["format"], opts["png_compression"]), opts["format"]


@functools.cache
def rembg_local_models() -> frozenset[str]:
    """Models the installed rembg loads by name alone (imports rembg: worker side only)."""
    try:
        from rembg.sessions import sessions
    except (Exception, SystemExit):  # rembg calls sys.exit(1) when onnxruntime is missing
        return frozenset()
    return frozenset(
        name for name, cls in sessions.items()
        if not name.endswith("_custom") and cls.is_local() and not cls.requires_credentials()
        and name not in REFUSED_MODELS
    )


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


def model_file_digests(model_dir: str | Path | None = None) -> dict[str, str]:
    """model -> SHA-256 of its weights on disk: the broker's result cache keys on the file, not
    the name, so re-downloaded or different weights never answer from an old result."""
    root = Path(model_dir) if model_dir is not None else default_model_dir()
    out = {}
    for model in models_on_disk(root):
        fname = model + MODELS_ON_DISK_SUFFIX
        path = root / fname if (root / fname).is_file() else root / "models" / model / fname
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        out[model] = h.hexdigest()
    return out


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
