"""worker/processors.py: real rembg on real photos (u2netp), no mocks.

The inference tests need rembg and the u2netp weights in $U2NET_HOME (the Makefile
provisions them); without them they are skipped, and the option, noop and sleep
tests still run.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.config import model_dir
from worker.images import InputError
from worker.processors import (
    KNOWN_MODELS,
    PROCESSORS,
    REFUSED_MODELS,
    NoopProcessor,
    RembgProcessor,
    SleepProcessor,
    available_providers,
    make_processor,
    models_on_disk,
    validate_options,
)

REPO = Path(__file__).resolve().parent.parent

try:
    import rembg
except ImportError:  # pragma: no cover - rembg is a project dependency
    rembg = None

requires_u2netp = pytest.mark.skipif(
    rembg is None or "u2netp" not in models_on_disk(),
    reason=f"rembg or the u2netp weights are missing (looked in {model_dir()}; the Makefile provisions them)",
)
THREADS = 2  # both sides of every comparison run with the same onnxruntime settings


def photos_dir() -> Path:
    """scikit-image's sample photos: only the tests that use them skip without it."""
    skimage = pytest.importorskip("skimage")
    return Path(skimage.__file__).parent / "data"


def photo(name: str = "astronaut.png", size: tuple[int, int] | None = (160, 160)) -> Image.Image:
    """A real photo; shrunk (whole scene kept) unless size is None."""
    with Image.open(photos_dir() / name) as im:
        im = im.convert("RGB")
        return im if size is None else im.resize(size, Image.Resampling.LANCZOS)


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGBA") if im.mode != "L" else im)


def assert_same_pixels(ours: bytes, theirs: bytes) -> None:
    """The same image once decoded: mode, size and every pixel (the bytes may differ: cutq
    encodes PNG at zlib level 1 by default, rembg at 6)."""
    with Image.open(io.BytesIO(ours)) as a, Image.open(io.BytesIO(theirs)) as b:
        assert (a.format, a.mode, a.size) == (b.format, b.mode, b.size)
        assert np.array_equal(np.asarray(a), np.asarray(b))


def assert_cutout(data: bytes, ext: str, size: tuple[int, int]) -> np.ndarray:
    """A real cut-out: RGBA PNG of `size` whose alpha is neither all 0 nor all 255."""
    assert ext == "png"
    with Image.open(io.BytesIO(data)) as im:
        assert (im.format, im.mode, im.size) == ("PNG", "RGBA", size)
        arr = np.asarray(im)
    alpha = arr[..., 3]
    assert alpha.max() > 0 and alpha.min() < 255
    assert 0.02 < (alpha > 127).mean() < 0.98  # some foreground, some background
    return arr


@pytest.fixture(scope="module")
def proc() -> RembgProcessor:
    return RembgProcessor(threads=THREADS)


@pytest.fixture(scope="module")
def ref():
    """A plain rembg session, built the way a user would, with the same thread settings."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = THREADS
    return rembg.new_session("u2netp", sess_opts=opts)


# ---------------------------------------------------------------- same output as rembg


@requires_u2netp
def test_astronaut_is_pixel_identical_to_rembg(proc, ref):
    data = (photos_dir() / "astronaut.png").read_bytes()
    out, ext = proc.process(data, {})
    assert ext == "png"
    assert_same_pixels(out, rembg.remove(data, session=ref))
    assert_cutout(out, ext, (512, 512))


@requires_u2netp
def test_jpeg_photo_is_pixel_identical_to_rembg(proc, ref):
    data = (photos_dir() / "rocket.jpg").read_bytes()
    assert_same_pixels(proc.process(data, {})[0], rembg.remove(data, session=ref))


@requires_u2netp
def test_png_compression_6_is_byte_identical_to_rembg(proc, ref):
    data = (photos_dir() / "rocket.jpg").read_bytes()
    assert proc.process(data, {"png_compression": 6})[0] == rembg.remove(data, session=ref)


@requires_u2netp
@pytest.mark.parametrize(
    "options,kwargs",
    [
        ({"only_mask": True}, {"only_mask": True}),
        ({"bgcolor": "#00ff0080"}, {"bgcolor": (0, 255, 0, 128)}),
        ({"bgcolor": [255, 255, 255, 255]}, {"bgcolor": (255, 255, 255, 255)}),
        ({"post_process_mask": True}, {"post_process_mask": True}),
        (
            {"alpha_matting": True, "alpha_matting_erode_size": 5},
            {"alpha_matting": True, "alpha_matting_erode_size": 5},
        ),
    ],
    ids=["only_mask", "bgcolor_hex", "bgcolor_list", "post_process", "alpha_matting"],
)
def test_options_give_what_rembg_gives(proc, ref, options, kwargs):
    data = encode(photo(), "PNG")
    out, ext = proc.process(data, options)
    assert ext == "png"
    assert_same_pixels(out, rembg.remove(data, session=ref, **kwargs))


@requires_u2netp
def test_webp_output_is_lossless(proc):
    data = encode(photo(), "JPEG")
    png, _ = proc.process(data, {})
    webp, ext = proc.process(data, {"format": "webp"})
    assert ext == "webp"
    with Image.open(io.BytesIO(webp)) as im:
        assert im.format == "WEBP"
    assert np.array_equal(pixels(webp), pixels(png))


@requires_u2netp
def test_thread_count_does_not_change_the_output(ref):
    """onnxruntime's CPU provider gives bit-identical results at 1, 2 and 4 threads here,
    so workers with different thread settings return the same bytes."""
    data = encode(photo("coffee.png", size=(240, 160)), "PNG")
    outs = {t: RembgProcessor(threads=t).process(data, {})[0] for t in (1, 2, 4)}
    assert outs[1] == outs[2] == outs[4]
    assert_same_pixels(outs[1], rembg.remove(data, session=ref))


# ---------------------------------------------------------------- unusual inputs: a correct cut-out


@requires_u2netp
def test_exif_rotated_jpeg(proc, ref):
    e = Image.Exif()
    e[0x0112] = 6
    data = encode(photo("chelsea.png", size=(160, 120)), "JPEG", exif=e, quality=95)
    out, ext = proc.process(data, {})
    assert_cutout(out, ext, (120, 160))  # the rotated size
    with Image.open(io.BytesIO(data)) as stored:
        upright = encode(stored.convert("RGB").transpose(Image.Transpose.ROTATE_270), "PNG")
    assert_same_pixels(out, rembg.remove(upright, session=ref))
    assert_same_pixels(out, rembg.remove(data, session=ref))  # rembg rotates by itself too


@requires_u2netp
def test_cmyk_jpeg(proc, ref):
    data = encode(photo().convert("CMYK"), "JPEG", quality=95)
    out, ext = proc.process(data, {})
    assert_cutout(out, ext, (160, 160))
    with Image.open(io.BytesIO(data)) as im:
        assert_same_pixels(out, rembg.remove(encode(im.convert("RGB"), "PNG"), session=ref))


@requires_u2netp
def test_16_bit_png_matches_its_8_bit_twin(proc, ref):
    grey = np.asarray(photo().convert("L"))
    data = encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG")
    out, ext = proc.process(data, {})
    assert_cutout(out, ext, (160, 160))
    twin = encode(Image.fromarray(grey).convert("RGB"), "PNG")
    assert_same_pixels(out, rembg.remove(twin, session=ref))


@requires_u2netp
def test_palette_png_with_transparency_keeps_it(proc):
    pal = photo().quantize(32)
    index = int(np.asarray(pal)[0, 0])
    data = encode(pal, "PNG", transparency=index)
    out, ext = proc.process(data, {})
    arr = assert_cutout(out, ext, (160, 160))
    assert (arr[..., 3][np.asarray(pal) == index] == 0).all()  # transparent stays transparent


@requires_u2netp
def test_la_png(proc):
    la = photo().convert("LA")
    out, ext = proc.process(encode(la, "PNG"), {})
    assert_cutout(out, ext, (160, 160))


@requires_u2netp
def test_grey_jpeg_with_alpha_matting(proc):
    out, ext = proc.process(encode(photo().convert("L"), "JPEG"), {"alpha_matting": True})
    assert_cutout(out, ext, (160, 160))


@requires_u2netp
@pytest.mark.parametrize("fmt,params", [("GIF", {}), ("WEBP", {"lossless": True})])
def test_animation_uses_first_frame(proc, ref, fmt, params):
    first, second = photo("astronaut.png"), photo("coffee.png")
    data = encode(first, fmt, save_all=True, append_images=[second], duration=100, loop=0, **params)
    out, ext = proc.process(data, {})
    assert_cutout(out, ext, (160, 160))
    with Image.open(io.BytesIO(data)) as im:  # frame 0 as Pillow decodes it, alone
        expected = rembg.remove(encode(im.convert("RGB"), "PNG"), session=ref)
    assert_same_pixels(out, expected)


# ---------------------------------------------------------------- bad inputs: InputError


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


# name -> (the bytes, made only when the case runs; the limits; the reason)
_BAD_INPUTS = {
    "empty": (lambda: b"", {}, "empty file (0 bytes)"),
    "random": (lambda: bytes(np.random.default_rng(3).integers(0, 256, 2048, dtype=np.uint8)), {}, "not an image"),
    "text": (lambda: b"Hello, this is a text file.\n" * 40, {}, "not an image"),
    "png_half": (lambda: _half(encode(photo(), "PNG")), {}, "truncated image data"),
    "jpeg_half": (lambda: _half(encode(photo(), "JPEG")), {}, "truncated image data"),
    "over_bytes": (lambda: encode(photo(), "PNG"), {"max_bytes": 1024}, "file too large"),
    "over_pixels": (lambda: encode(photo(), "JPEG"), {"max_pixels": 100 * 100},
                    "image too large: 160x160 = 25600 pixels"),
}


@pytest.mark.parametrize("name", list(_BAD_INPUTS))
def test_bad_input_is_an_input_error_before_any_model_work(name):
    # Refused before any session is loaded (and so on a machine without the weights too).
    make, limits, reason = _BAD_INPUTS[name]
    data = make()
    proc = RembgProcessor(**limits)
    with pytest.raises(InputError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        proc.process(data, {})
    assert proc.loaded_models == []


def test_bomb_is_an_input_error():
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 1, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    with pytest.raises(InputError, match="image too large"):
        RembgProcessor().process(data, {})


def test_bad_options_are_an_input_error():
    with pytest.raises(InputError, match="bad options: unknown option 'colour'"):
        RembgProcessor().process(encode(photo(), "PNG"), {"colour": "red"})


# ---------------------------------------------------------------- sessions


@requires_u2netp
def test_sessions_are_lazy_reused_and_preloadable():
    proc = RembgProcessor(threads=1)
    assert proc.loaded_models == []
    proc.preload(["u2netp"])
    assert proc.loaded_models == ["u2netp"]
    session = proc.session("u2netp")
    proc.process(encode(photo(size=(64, 64)), "PNG"), {})
    assert proc.session("u2netp") is session


@requires_u2netp
def test_concurrent_first_use_loads_one_session():
    proc = RembgProcessor(threads=1)
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(proc.session("u2netp"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and all(s is got[0] for s in got)


@pytest.mark.skipif(rembg is None, reason="rembg not installed")
def test_unloadable_model_is_a_plain_runtime_error():
    with pytest.raises(RuntimeError, match="model 'no-such-model' could not be loaded: ") as info:
        RembgProcessor().session("no-such-model")
    assert not isinstance(info.value, InputError)


@pytest.mark.skipif(rembg is None, reason="rembg not installed")
def test_providers_and_models_on_disk(tmp_path):
    assert "CPUExecutionProvider" in available_providers()
    assert models_on_disk(tmp_path) == []
    (tmp_path / "u2net.onnx").write_bytes(b"x")
    (tmp_path / "models" / "silueta").mkdir(parents=True)
    (tmp_path / "models" / "silueta" / "silueta.onnx").write_bytes(b"x")
    (tmp_path / "something-else.onnx").write_bytes(b"x")
    assert sorted(models_on_disk(tmp_path)) == ["silueta", "u2net"]


@pytest.mark.skipif(rembg is None, reason="rembg not installed")
def test_known_models_match_installed_rembg():
    """KNOWN_MODELS lets the broker check names without importing rembg; it must not drift."""
    from rembg.sessions import sessions

    local = {
        name for name, cls in sessions.items()
        if cls.is_local() and not cls.requires_credentials() and not name.endswith("_custom")
    }
    assert set(KNOWN_MODELS) == local, "update KNOWN_MODELS in worker/processors.py"
    assert set(REFUSED_MODELS) == set(sessions) - local


# ---------------------------------------------------------------- validate_options


def test_rembg_defaults_filled():
    assert validate_options("rembg", {}) == {
        "model": "u2netp",
        "alpha_matting": False,
        "alpha_matting_foreground_threshold": 240,
        "alpha_matting_background_threshold": 10,
        "alpha_matting_erode_size": 10,
        "only_mask": False,
        "post_process_mask": False,
        "bgcolor": None,
        "format": "png",
        "png_compression": 1,
    }


@pytest.mark.parametrize(
    "options,key,value",
    [
        ({"model": "isnet-general-use"}, "model", "isnet-general-use"),
        ({"model": "birefnet-massive"}, "model", "birefnet-massive"),
        ({"alpha_matting": True}, "alpha_matting", True),
        ({"alpha_matting_foreground_threshold": 0}, "alpha_matting_foreground_threshold", 0),
        ({"alpha_matting_background_threshold": 255}, "alpha_matting_background_threshold", 255),
        ({"alpha_matting_erode_size": 0}, "alpha_matting_erode_size", 0),
        ({"bgcolor": "#FF8000"}, "bgcolor", [255, 128, 0, 255]),
        ({"bgcolor": "#ff800040"}, "bgcolor", [255, 128, 0, 64]),
        ({"bgcolor": [1, 2, 3, 4]}, "bgcolor", [1, 2, 3, 4]),
        ({"bgcolor": (1, 2, 3)}, "bgcolor", [1, 2, 3, 255]),
        ({"bgcolor": None}, "bgcolor", None),
        ({"format": "webp"}, "format", "webp"),
        ({"format": "PNG"}, "format", "png"),
        ({"png_compression": 0}, "png_compression", 0),
        ({"png_compression": 9}, "png_compression", 9),
        ({"only_mask": True, "post_process_mask": True}, "only_mask", True),
    ],
)
def test_rembg_good_options(options, key, value):
    assert validate_options("rembg", options)[key] == value


@pytest.mark.parametrize(
    "options,message",
    [
        ({"colour": "red"}, "unknown option 'colour' for processor 'rembg'"),
        ({"model": "u2netpp"}, "unknown model 'u2netpp'"),
        ({"model": ""}, "option 'model' must be a non-empty string"),
        ({"model": 3}, "option 'model' must be a non-empty string"),
        ({"model": "u2net_custom"}, "needs a model_path"),
        ({"model": "withoutbg"}, "remote paid service"),
        ({"alpha_matting": 1}, "option 'alpha_matting' must be true or false"),
        ({"only_mask": "yes"}, "option 'only_mask' must be true or false"),
        ({"post_process_mask": None}, "option 'post_process_mask' must be true or false"),
        ({"alpha_matting_foreground_threshold": 256}, "must be between 0 and 255, got 256"),
        ({"alpha_matting_background_threshold": -1}, "must be between 0 and 255, got -1"),
        ({"alpha_matting_foreground_threshold": 240.0}, "must be an integer"),
        ({"alpha_matting_erode_size": True}, "must be an integer"),
        ({"alpha_matting_erode_size": -3}, "must be between 0 and 1000"),
        ({"alpha_matting_erode_size": 10**9}, "must be between 0 and 1000"),
        ({"bgcolor": "#12345"}, "option 'bgcolor' must be '#rrggbb' or '#rrggbbaa'"),
        ({"bgcolor": "red"}, "option 'bgcolor' must be '#rrggbb'"),
        ({"bgcolor": [1, 2]}, "option 'bgcolor' must be \\[r, g, b, a\\]"),
        ({"bgcolor": [1, 2, 3, 256]}, "option 'bgcolor' must be"),
        ({"bgcolor": [1, 2, 3, True]}, "option 'bgcolor' must be"),
        ({"bgcolor": 0xFFFFFF}, "option 'bgcolor' must be"),
        ({"format": "jpeg"}, "option 'format' must be one of png, webp"),
        ({"png_compression": 10}, "option 'png_compression' must be between 0 and 9, got 10"),
        ({"png_compression": -1}, "must be between 0 and 9"),
        ({"png_compression": 6.0}, "option 'png_compression' must be an integer"),
        ({"png_compression": True}, "option 'png_compression' must be an integer"),
        ({"format": None}, "option 'format' must be one of"),
        ({1: True}, "option names must be strings"),
    ],
)
def test_rembg_bad_options(options, message):
    with pytest.raises(ValueError, match=message) as info:
        validate_options("rembg", options)
    assert "\n" not in str(info.value)


def test_other_processors_options():
    assert validate_options("noop", {}) == {}
    assert validate_options("noop", {"format": "webp"}) == {"format": "webp"}
    assert validate_options("noop", {"model": "u2netp"}) == {}  # clients send a default model
    assert validate_options("sleep", {}) == {"seconds": 1.0}
    assert validate_options("sleep", {"seconds": 2, "format": "png"}) == {"seconds": 2.0, "format": "png"}
    with pytest.raises(ValueError, match="unknown option 'seconds' for processor 'noop'"):
        validate_options("noop", {"seconds": 1})
    with pytest.raises(ValueError, match="option 'format' must be one of"):
        validate_options("noop", {"format": "gif"})
    for bad in (-1, 3601, float("nan"), "5", True, None):
        with pytest.raises(ValueError, match="option 'seconds'"):
            validate_options("sleep", {"seconds": bad})
    with pytest.raises(ValueError, match="unknown processor 'magic' \\(known: rembg, noop, sleep\\)"):
        validate_options("magic", {})
    with pytest.raises(ValueError, match="options must be a map"):
        validate_options("rembg", ["model"])  # type: ignore[arg-type]


def test_validate_options_does_not_copy_into_callers_dict():
    options = {"bgcolor": "#000000"}
    out = validate_options("rembg", options)
    assert options == {"bgcolor": "#000000"} and out["bgcolor"] == [0, 0, 0, 255]


_HYGIENE = """
import json, sys
from worker.processors import validate_options
validate_options("rembg", {"model": "isnet-general-use", "bgcolor": "#ffffff"})
validate_options("noop", {})
heavy = [m for m in ("rembg", "onnxruntime", "numpy", "scipy", "pymatting") if m in sys.modules]
print(json.dumps(heavy))
"""


@pytest.mark.timeout(90)  # its subprocess may take 60 s
def test_validate_options_imports_nothing_heavy():
    """The broker imports validate_options: it must not drag in rembg or onnxruntime."""
    done = subprocess.run([sys.executable, "-c", _HYGIENE], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


# ---------------------------------------------------------------- noop, sleep, factory


def test_noop_returns_input_with_sniffed_extension():
    noop = NoopProcessor()
    for fmt, ext in (("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("GIF", "gif")):
        data = encode(photo(size=(32, 32)), fmt)
        assert noop.process(data, {"format": "webp"}) == (data, ext)
    assert noop.process(b"just text", {}) == (b"just text", "bin")
    with pytest.raises(InputError, match="file too large: 2000 bytes exceeds limit of 1000"):
        NoopProcessor(max_bytes=1000).process(b"\0" * 2000, {})


def test_sleep_sleeps_in_steps_on_an_injected_clock():
    now = [0.0]
    naps: list[float] = []

    def nap(seconds: float) -> None:
        naps.append(seconds)
        now[0] += seconds

    data = encode(photo(size=(8, 8)), "PNG")
    proc = SleepProcessor(step=0.25, clock=lambda: now[0], sleep=nap)
    assert proc.process(data, {"seconds": 1.1}) == (data, "png")
    assert now[0] == pytest.approx(1.1) and max(naps) <= 0.25 and len(naps) == 5


def test_sleep_gives_up_when_stopped():
    stop = threading.Event()
    stop.set()
    with pytest.raises(RuntimeError, match="sleep interrupted"):
        SleepProcessor(stop=stop).process(b"x", {"seconds": 60})
    assert SleepProcessor().process(b"x", {"seconds": 0.01}) == (b"x", "bin")


def test_make_processor():
    common = {"threads": 1, "providers": None, "max_bytes": 1000, "max_pixels": 10_000}
    built = {name: make_processor(name, **common) for name in PROCESSORS}
    assert {name: p.name for name, p in built.items()} == {n: n for n in PROCESSORS}
    assert isinstance(built["rembg"], RembgProcessor) and built["rembg"].max_pixels == 10_000
    assert built["noop"].max_bytes == 1000
    with pytest.raises(ValueError, match="unknown processor 'magic'"):
        make_processor("magic")
    with pytest.raises(TypeError, match="takes no setting 'colour'"):
        make_processor("noop", colour=1)
