"""worker/cutout.py: the fast path gives rembg.remove's pixels, exactly, on real photos.

Every comparison decodes both results and compares mode, size and every RGBA (or L)
value with np.array_equal: cutq's PNG is encoded at another zlib level by default,
so the bytes differ while the pixels may not. Real u2netp, no mocks; skipped when
the weights are not provisioned.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.config import model_dir
from worker import cutout
from worker.onnx_batch import ModelFormatError, free_batch_dimension
from worker.processors import RembgProcessor, models_on_disk

try:
    import rembg
except ImportError:  # pragma: no cover - rembg is a project dependency
    rembg = None

pytestmark = pytest.mark.skipif(
    rembg is None or "u2netp" not in models_on_disk(), reason="rembg or the u2netp weights are missing"
)
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")


def photo_bytes(name: str) -> bytes:
    skimage = pytest.importorskip("skimage")
    return (Path(skimage.__file__).parent / "data" / name).read_bytes()


def small(name: str = "astronaut.png", size: tuple[int, int] = (160, 120), fmt: str = "PNG", mode: str = "RGB",
          **params) -> bytes:
    with Image.open(io.BytesIO(photo_bytes(name))) as im:
        img = im.convert("RGB").resize(size, Image.Resampling.LANCZOS).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def decoded(data: bytes) -> tuple[str, str, tuple[int, int], np.ndarray]:
    with Image.open(io.BytesIO(data)) as im:
        return im.format, im.mode, im.size, np.asarray(im)


def assert_same_pixels(ours: bytes, theirs: bytes) -> None:
    (_, mode, size, pixels), (_, e_mode, e_size, expected) = decoded(ours), decoded(theirs)
    assert (mode, size) == (e_mode, e_size)
    assert np.array_equal(pixels, expected)


@pytest.fixture(scope="module")
def ref():
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return rembg.new_session("u2netp", sess_opts=opts)


@pytest.fixture(scope="module")
def proc() -> RembgProcessor:
    p = RembgProcessor(threads=1)
    p.preload(["u2netp"])
    return p


def test_the_fast_path_is_what_runs(proc):
    """A rembg upgrade that changes what cutout.py mirrors makes it fall back (safe, slower):
    this test says so, instead of the benchmark quietly losing its gain."""
    assert cutout.mirrored()
    assert isinstance(proc.predictor("u2netp"), cutout.Predictor)


@pytest.mark.parametrize("name", PHOTOS)
def test_every_sample_photo_is_pixel_identical(proc, ref, name):
    data = photo_bytes(name)
    out, ext = proc.process(data, {})
    assert ext == "png"
    expected = rembg.remove(data, session=ref)
    assert_same_pixels(out, expected)
    assert decoded(out)[1] == "RGBA"


@pytest.mark.parametrize(
    "options,kwargs",
    [
        ({"only_mask": True}, {"only_mask": True}),
        ({"post_process_mask": True}, {"post_process_mask": True}),
        ({"only_mask": True, "post_process_mask": True}, {"only_mask": True, "post_process_mask": True}),
        ({"bgcolor": "#00ff0080"}, {"bgcolor": (0, 255, 0, 128)}),
        ({"bgcolor": [255, 255, 255, 255], "post_process_mask": True},
         {"bgcolor": (255, 255, 255, 255), "post_process_mask": True}),
        ({"alpha_matting": True, "alpha_matting_erode_size": 5}, {"alpha_matting": True, "alpha_matting_erode_size": 5}),
        ({"alpha_matting": True, "alpha_matting_foreground_threshold": 200, "alpha_matting_background_threshold": 30,
          "bgcolor": [0, 0, 255, 255]},
         {"alpha_matting": True, "alpha_matting_foreground_threshold": 200, "alpha_matting_background_threshold": 30,
          "bgcolor": (0, 0, 255, 255)}),
        ({"png_compression": 0}, {}),
        ({"png_compression": 9}, {}),
    ],
    ids=["only_mask", "post_process", "mask_post", "bgcolor", "bgcolor_post", "matting", "matting_bgcolor",
         "png0", "png9"],
)
def test_options_are_pixel_identical(proc, ref, options, kwargs):
    data = small("chelsea.png")
    out, _ = proc.process(data, options)
    assert_same_pixels(out, rembg.remove(data, session=ref, **kwargs))


@pytest.mark.parametrize(
    "options,kwargs",
    [({}, {}), ({"only_mask": True}, {"only_mask": True}), ({"bgcolor": "#ff000040"}, {"bgcolor": (255, 0, 0, 64)})],
    ids=["cutout", "only_mask", "bgcolor"],
)
def test_webp_is_lossless_and_pixel_identical(proc, ref, options, kwargs):
    data = small("coffee.png", fmt="JPEG", quality=90)
    out, ext = proc.process(data, {**options, "format": "webp"})
    assert ext == "webp"
    fmt, mode, size, pixels = decoded(out)
    _, e_mode, e_size, expected = decoded(rembg.remove(data, session=ref, **kwargs))
    assert (fmt, size) == ("WEBP", e_size)
    if e_mode == "L":  # WebP has no grey mode: the mask comes back as equal R, G and B
        assert mode == "RGB" and all(np.array_equal(pixels[..., c], expected) for c in range(3))
    else:
        assert (mode, e_mode) == ("RGBA", "RGBA")
        assert np.array_equal(pixels, expected)


def test_png_compression_6_gives_rembgs_exact_bytes(proc, ref):
    data = photo_bytes("chelsea.png")
    assert proc.process(data, {"png_compression": 6})[0] == rembg.remove(data, session=ref)


@pytest.mark.parametrize(
    "mode,fmt,params",
    [("L", "PNG", {}), ("RGBA", "PNG", {}), ("P", "PNG", {}), ("RGB", "JPEG", {"quality": 85}),
     ("RGB", "WEBP", {"lossless": True})],
)
def test_input_modes_are_pixel_identical(proc, ref, mode, fmt, params):
    data = small("rocket.jpg", size=(90, 140), fmt=fmt, mode=mode, **params)
    out, _ = proc.process(data, {})
    assert_same_pixels(out, rembg.remove(data, session=ref))


def test_model_input_is_bit_identical_to_rembgs_normalize(proc):
    """The lookup table gives the float32 tensor rembg builds, for odd maxima and all black."""
    predictor = proc.predictor("u2netp")
    session = predictor.session
    rng = np.random.default_rng(5)
    images = [
        Image.open(io.BytesIO(photo_bytes("astronaut.png"))),
        Image.fromarray(rng.integers(0, 200, (77, 131, 3), dtype=np.uint8)),  # max below 255
        Image.fromarray(np.zeros((40, 50, 3), np.uint8)),  # max 0: rembg divides by 1e-6
        Image.fromarray(rng.integers(0, 256, (64, 64, 4), dtype=np.uint8), "RGBA"),
        Image.fromarray(rng.integers(0, 256, (64, 48), dtype=np.uint8), "L"),
    ]
    for img in images:
        theirs = session.normalize(img, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (320, 320))
        ours = predictor.prepare(img)[None]
        (name, expected), = theirs.items()
        assert name == predictor.input_name
        assert ours.dtype == expected.dtype == np.float32
        assert np.array_equal(ours, expected)


def test_masks_are_identical_to_rembgs_predict(proc):
    predictor = proc.predictor("u2netp")
    with Image.open(io.BytesIO(small("motorcycle_left.png", size=(200, 130)))) as img:
        img.load()
        ours, theirs = predictor.predict(img), predictor.session.predict(img)
    assert len(ours) == len(theirs) == 1
    assert np.array_equal(np.asarray(ours[0]), np.asarray(theirs[0]))


def test_an_unknown_rembg_falls_back_to_rembgs_own_code(proc, ref, monkeypatch):
    """Fingerprints that do not match: rembg.remove on the decoded pixels, same result."""
    monkeypatch.setattr(cutout, "mirrored", lambda: False)
    data = small("astronaut.png")
    out, _ = proc.process(data, {"bgcolor": [10, 20, 30, 255]})
    assert_same_pixels(out, rembg.remove(data, session=ref, bgcolor=(10, 20, 30, 255)))
    monkeypatch.delitem(cutout.RECIPES, cutout.TESTED_RECIPE)
    assert cutout.predictor_for(ref) is None


def test_fingerprint_ignores_docstrings_and_sees_code():
    def a(x):
        """One."""
        return x + 1

    def b(x):
        """Two, longer."""
        # a comment
        return x + 1

    def c(x):
        return x + 2

    assert cutout.fingerprint(a) == cutout.fingerprint(b) != cutout.fingerprint(c)
    assert cutout.fingerprint(len) == ""


# ---------------------------------------------------------------- micro-batching


def test_batched_masks_are_identical_to_single_ones(proc):
    """Several images as one onnxruntime batch: every mask as when run alone (CPU), so a
    GPU run of the same code is a measurement, not a port."""
    predictor = proc.predictor("u2netp")
    assert predictor.enable_batching(proc.session_options(), None)
    images = []
    for name in ("astronaut.png", "rocket.jpg", "coffee.png"):
        with Image.open(io.BytesIO(photo_bytes(name))) as im:
            im.load()
            images.append(im.convert("RGB"))
    batch = predictor.infer(np.stack([predictor.prepare(im) for im in images]))
    assert batch.shape[:2] == (3, 1)
    for i, im in enumerate(images):
        alone = predictor.predict(im)[0]
        assert np.array_equal(np.asarray(predictor.mask(batch[i:i + 1], im.size)), np.asarray(alone))


def test_free_batch_dimension_patches_only_the_declarations():
    model = model_dir() / "u2netp.onnx"
    if not model.is_file():
        model = model_dir() / "models" / "u2netp" / "u2netp.onnx"
    data = model.read_bytes()
    patched = free_batch_dimension(data)
    assert len(patched) - len(data) < 64  # declarations only: the weights are untouched
    import onnxruntime as ort

    s = ort.InferenceSession(patched, providers=["CPUExecutionProvider"])
    assert s.get_inputs()[0].shape[0] == "N"
    assert s.get_outputs()[0].shape[0] == "N"
    assert all(not isinstance(o.shape[0], int) for o in s.get_outputs())  # none fixed at 1
    with pytest.raises(ModelFormatError):
        free_batch_dimension(b"\x0a\x02hi")  # no graph
    with pytest.raises(ModelFormatError):
        free_batch_dimension(b"\x3a\xff")  # truncated


def test_process_batch_gives_what_process_gives(proc, ref):
    """A batch mixing photos, options, formats and one broken file: every result as alone."""
    items = [
        (photo_bytes("chelsea.png"), {}),
        (small("rocket.jpg", fmt="JPEG", quality=90), {"bgcolor": "#102030"}),
        (b"not an image at all", {}),
        (small("coffee.png", mode="L"), {"only_mask": True, "format": "webp"}),
        (photo_bytes("astronaut.png"), {"post_process_mask": True, "png_compression": 6}),
        (small("astronaut.png"), {"colour": "red"}),  # bad options
    ]
    results = proc.process_batch(items)
    assert len(results) == len(items)
    for (data, options), result in zip(items, results, strict=True):
        if isinstance(result, Exception):
            with pytest.raises(type(result), match="not an image|bad options"):
                proc.process(data, options)
            continue
        alone = proc.process(data, options)
        assert result[1] == alone[1]
        assert_same_pixels(result[0], alone[0])
    assert results[4][0] == rembg.remove(items[4][0], session=ref, post_process_mask=True)  # rembg's bytes
