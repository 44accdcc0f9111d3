"""rembg.remove, step by step, doing less work for the same pixels.

`rembg.remove(bytes)` decodes the file (the worker has already decoded it to
validate it), copies it twice (EXIF transpose, `convert("RGB")`), normalises the
320x320 input in float64 one channel at a time, composites through a scratch
image, and encodes PNG at zlib level 6. Here, from the pixels the worker
already holds:

- the model input is built with a 256-entry lookup table per channel (the same
  float64 arithmetic rembg does per pixel, done once per byte value, then cast to
  float32: bit-identical);
- only the first model output is fetched (the one rembg uses);
- the cut-out is one paste into a transparent image (what `Image.composite`
  does on a copy);
- encoding is the caller's choice (`encode`): PNG level and lossless WebP effort
  change the bytes, never the pixels.

Everything else (Pillow's LANCZOS resizes, the mask scaling, post-processing,
alpha matting, background colour) is rembg's own code, called as rembg calls it.

Whether the installed rembg still does what this module mirrors is checked, not
assumed: the source of each mirrored function is fingerprinted at first use and
compared with the versions read and tested here (rembg 2.0.86). On any mismatch
that part falls back to rembg's own code (`session.predict`, `rembg.remove` on
the decoded image), so an upgrade can cost speed, never pixels.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import io
import logging
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger("cutq.worker")

# PNG: zlib level 1 with the run-length strategy (by measurement, docs/PERFORMANCE.md: 3x faster
# to encode than Pillow's default level 6, and no larger: cut-outs are long runs of transparent
# zeros). Levels 1-3 use run-length, 4-9 zlib's default strategy; level 6 gives rembg's exact bytes.
DEFAULT_PNG_COMPRESSION = 1
Z_RLE = 3
# Lossless WebP: method 0 / quality 0 is the fastest effort (same pixels, bigger file);
# Pillow's default (method 4, quality 80) costs 100-300 ms a photo here.
WEBP_EFFORT = {"method": 0, "quality": 0}


@dataclass(frozen=True)
class Recipe:
    """How a rembg session class builds its input and reads its mask (its `predict`)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: tuple[int, int]
    clip: bool  # u2net clips the normalised prediction to 0..1 before scaling, others do not


_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# fingerprint of a session class's predict() -> what that code does (read in rembg 2.0.86).
# Keyed by code, not class name: isnet-anime and isnet-general-use are both "DisSession".
RECIPES: dict[str, Recipe] = {
    "49ae947113a194ab": Recipe(*_IMAGENET, (320, 320), clip=False),  # u2netp, silueta, u2net_human_seg
    "d3936a03f39ecbf1": Recipe(*_IMAGENET, (320, 320), clip=True),  # u2net
    "09e6477e516c5dd7": Recipe((0.5, 0.5, 0.5), (1.0, 1.0, 1.0), (1024, 1024), clip=False),  # isnet-general-use
    "7b648f16c16b525c": Recipe(*_IMAGENET, (1024, 1024), clip=False),  # bria-rmbg
}
# the recipe whose model is on this machine and tested pixel by pixel (tests/test_inference_fast.py);
# sessions of the others are checked against their own predict() once, when first used
TESTED_RECIPE = "49ae947113a194ab"
# fingerprints of the other rembg functions mirrored here, as read
KNOWN = {
    "normalize": "bab23ea72b4c3b4d",  # BaseSession.normalize
    "remove": "048f15bd971462cf",  # rembg.bg.remove
    "naive_cutout": "6bb2314ffbeec554",  # rembg.bg.naive_cutout
}


def fingerprint(fn: Any) -> str:
    """A short hash of a function's code, docstring and comments left out ("" if unreadable)."""
    try:
        node = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
    except (OSError, TypeError, SyntaxError, IndexError):
        return ""
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return ""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        node.body = body[1:]
    node.decorator_list = []
    node.name = "f"  # what it does, not what it is called
    return hashlib.sha256(ast.unparse(node).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- the model step


class Predictor:
    """`session.predict` for one session of a known class, split into its three steps.

    prepare (pixels -> model input), infer (a batch of inputs -> first output), mask
    (one output -> the mask at the image's size). Splitting lets a caller run
    several images as one batch (`batch_session`): each image's numbers are the
    same as alone (tests/test_inference_fast.py).
    """

    def __init__(self, session: Any, recipe: Recipe) -> None:
        self.session = session
        self.recipe = recipe
        inner = session.inner_session
        self.input_name = inner.get_inputs()[0].name
        self.output_name = inner.get_outputs()[0].name
        self.batch_session: Any = None  # an InferenceSession with a free batch dimension, if built

    def prepare(self, img: Image.Image) -> np.ndarray:
        """BaseSession.normalize for one image, as float32 (3, H, W); bit-identical."""
        mean, std = self.recipe.mean, self.recipe.std
        im = img if img.mode == "RGB" else img.convert("RGB")  # convert() of an RGB image is a copy
        im = im.resize(self.recipe.size, Image.Resampling.LANCZOS)
        ary = np.asarray(im)
        # rembg: ary / max(np.max(ary), 1e-6), then (x - mean[c]) / std[c] in float64, per pixel.
        # The same operations on the 256 possible bytes give the same float64 values.
        top = max(np.max(ary), 1e-6)
        scaled = np.arange(256, dtype=np.uint8) / top
        lut = np.stack([((scaled - mean[c]) / std[c]).astype(np.float32) for c in range(3)])
        out = np.empty((3, *ary.shape[:2]), dtype=np.float32)
        for c in range(3):
            np.take(lut[c], ary[:, :, c], out=out[c])
        return out

    def infer(self, inputs: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 -> the first output (N, 1, H, W); N > 1 needs `batch_session`."""
        if inputs.shape[0] == 1:
            return self.session.inner_session.run([self.output_name], {self.input_name: inputs})[0]
        if self.batch_session is None:
            raise RuntimeError("batched inference needs a batch session (enable_batching)")
        return self.batch_session.run([self.output_name], {self.input_name: inputs})[0]

    def mask(self, output: np.ndarray, size: tuple[int, int]) -> Image.Image:
        """One image's output (1, 1, H, W) -> its mask, as the session's predict() makes it."""
        pred = output[:, 0, :, :]
        ma = np.max(pred)
        mi = np.min(pred)
        pred = (pred - mi) / (ma - mi)
        pred = np.squeeze(pred)
        if self.recipe.clip:
            pred = pred.clip(0, 1)
        mask = Image.fromarray((pred * 255).astype("uint8"), mode="L")
        return mask.resize(size, Image.Resampling.LANCZOS)

    def predict(self, img: Image.Image) -> list[Image.Image]:
        out = self.infer(self.prepare(img)[None])
        return [self.mask(out, img.size)]

    def enable_batching(self, sess_options: Any, providers: list[str] | None) -> bool:
        """Build the batch session from the model file; False if this model cannot batch."""
        if self.batch_session is not None:
            return True
        try:
            import onnxruntime as ort

            from worker.onnx_batch import free_batch_dimension

            path = type(self.session).download_models()  # the file the session loaded: no download
            with open(path, "rb") as f:
                model = free_batch_dimension(f.read())
            self.batch_session = ort.InferenceSession(
                model, sess_options=sess_options,
                providers=providers or self.session.inner_session.get_providers())
        except Exception as e:  # a model this cannot patch just runs one image at a time
            log.warning("batching off for %s: %s", type(self.session).__name__, e)
            return False
        return True


def predictor_for(session: Any) -> Predictor | None:
    """A Predictor when the session's predict() is one read here (and, for a model not
    tested here, gives the same mask as that predict() on a probe image); else None."""
    cls = type(session)
    from rembg.sessions.base import BaseSession

    key = fingerprint(cls.predict)
    recipe = RECIPES.get(key)
    if recipe is None or cls.normalize is not BaseSession.normalize or not _checks()["normalize"]:
        log.info("rembg's %s.predict is not one cutq mirrors: using it as it is", cls.__name__)
        return None
    predictor = Predictor(session, recipe)
    if key != TESTED_RECIPE and not _same_as_rembg(predictor):
        log.warning("cutq's %s predictor differs from rembg's on a probe: using rembg's", cls.__name__)
        return None
    return predictor


def _same_as_rembg(predictor: Predictor) -> bool:
    rng = np.random.default_rng(12)
    probe = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    ours, theirs = predictor.predict(probe), predictor.session.predict(probe)
    return len(ours) == len(theirs) and all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(ours, theirs, strict=True))


@functools.cache
def _checks() -> dict[str, bool]:
    import rembg.bg as bg
    from rembg.sessions.base import BaseSession

    found = {
        "normalize": fingerprint(BaseSession.normalize) == KNOWN["normalize"],
        "remove": fingerprint(bg.remove) == KNOWN["remove"],
        "naive_cutout": fingerprint(bg.naive_cutout) == KNOWN["naive_cutout"],
    }
    for name, ok in found.items():
        if not ok:
            log.info("rembg's %s is not the one cutq mirrors: using rembg's own", name)
    return found


def mirrored() -> bool:
    """True when the installed rembg's remove() is the one `cut_out` mirrors."""
    return _checks()["remove"] and _checks()["naive_cutout"]


# ---------------------------------------------------------------- the cut-out


def cut_out(img: Image.Image, session: Any, predictor: Predictor | None, opts: dict,
            masks: Sequence[Image.Image] | None = None) -> Image.Image:
    """What rembg.remove(img, session=session, **options) returns, for an upright image.

    `img` must already be what rembg would work on: EXIF orientation applied
    (the worker passes either the decoded file, orientation 1, or `normalise(img)`).
    `masks`: the model's masks when the caller already ran it (batching).
    """
    import rembg
    from rembg import bg

    bgcolor = tuple(opts["bgcolor"]) if opts["bgcolor"] is not None else None
    if not mirrored():
        return rembg.remove(
            img, session=session, alpha_matting=opts["alpha_matting"],
            alpha_matting_foreground_threshold=opts["alpha_matting_foreground_threshold"],
            alpha_matting_background_threshold=opts["alpha_matting_background_threshold"],
            alpha_matting_erode_size=opts["alpha_matting_erode_size"], only_mask=opts["only_mask"],
            post_process_mask=opts["post_process_mask"], bgcolor=bgcolor,
        )
    if masks is None:
        masks = predictor.predict(img) if predictor is not None else session.predict(img)
    cutouts = []
    for mask in masks:
        if opts["post_process_mask"]:
            mask = Image.fromarray(bg.post_process(np.array(mask)))
        if opts["only_mask"]:
            cutout = mask
        elif opts["alpha_matting"]:
            try:
                cutout = bg.alpha_matting_cutout(
                    img, mask, opts["alpha_matting_foreground_threshold"],
                    opts["alpha_matting_background_threshold"], opts["alpha_matting_erode_size"],
                )
            except ValueError:
                cutout = bg.decontaminate_cutout(img, mask)
        else:
            # Image.composite(img, transparent, mask) is this paste on a copy of `transparent`
            cutout = Image.new("RGBA", img.size, 0)
            cutout.paste(img, None, mask)
        cutouts.append(cutout)
    cutout = bg.get_concat_v_multi(cutouts) if cutouts else img
    if bgcolor is not None and not opts["only_mask"]:
        cutout = bg.apply_background_color(cutout, bgcolor)
    return cutout


def encode(img: Image.Image, fmt: str, png_compression: int = DEFAULT_PNG_COMPRESSION) -> bytes:
    """PNG at zlib level `png_compression`, or lossless WebP keeping RGB under alpha 0."""
    out = io.BytesIO()
    if fmt == "webp":
        img.save(out, "WEBP", lossless=True, exact=True, **WEBP_EFFORT)
    else:
        strategy = Z_RLE if 1 <= png_compression <= 3 else -1  # -1: zlib's default
        img.save(out, "PNG", compress_level=png_compression, compress_type=strategy)
    return out.getvalue()
