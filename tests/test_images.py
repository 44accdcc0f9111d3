"""worker/images.py: decoding untrusted bytes. Real photos, real Pillow, no model needed."""

from __future__ import annotations

import io
import json
import random
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from worker.images import FORMATS, InputError, load_image, open_image, sniff_format, to_rgb_or_rgba

REPO = Path(__file__).resolve().parent.parent

MAX_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 64_000_000
LIMITS = {"max_bytes": MAX_BYTES, "max_pixels": MAX_PIXELS}


def photos_dir() -> Path:
    """scikit-image's sample photos: only the tests that use them skip without it."""
    skimage = pytest.importorskip("skimage")
    return Path(skimage.__file__).parent / "data"


def photo(name: str = "astronaut.png", size: tuple[int, int] = (160, 160)) -> Image.Image:
    """A real photo, shrunk (whole scene kept) to keep the tests fast."""
    with Image.open(photos_dir() / name) as im:
        return im.convert("RGB").resize(size, Image.Resampling.LANCZOS)


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bilevel_png(width: int, height: int) -> bytes:
    """A genuine, valid all-black 1-bit PNG: tiny on disk, width*height pixels when decoded.

    Built row by row with zlib so the test itself never holds the decoded image.
    """
    comp = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte 0 + packed bits
    chunks = [comp.compress(row * 256) for _ in range(height // 256)]
    chunks.append(comp.compress(row * (height % 256)))
    chunks.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", b"".join(chunks)) + png_chunk(b"IEND", b"")
    )


def with_declared_size(png: bytes, width: int, height: int) -> bytes:
    """The same PNG with its IHDR claiming another size (CRC fixed up)."""
    assert png[12:16] == b"IHDR"
    body = struct.pack(">II", width, height) + png[24:29]
    return png[:8] + png_chunk(b"IHDR", body) + png[33:]


def refused(data: bytes, **limits) -> str:
    with pytest.raises(InputError) as info:
        open_image(data, **{**LIMITS, **limits})
    message = str(info.value)
    assert "\n" not in message and message
    return message


# ---------------------------------------------------------------- refused inputs


def test_empty_file():
    assert refused(b"") == "empty file (0 bytes)"


def test_random_bytes_are_not_an_image():
    data = random.Random(7).randbytes(4096)
    assert refused(data).startswith("not an image (cannot identify image format")


def test_text_file_is_not_an_image():
    data = ("name,colour\n" + "astronaut,white\n" * 50).encode()
    assert refused(data).startswith("not an image")


def test_format_pillow_knows_but_we_do_not_accept():
    """PPM (like EPS, PSD, ...) is outside the allowlist even though Pillow could open it."""
    data = encode(photo(), "PPM")
    assert Image.open(io.BytesIO(data)).format == "PPM"
    assert refused(data).startswith("not an image")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "TIFF"])
def test_cut_in_half_is_truncated(fmt):
    data = encode(photo(), fmt)
    assert refused(data[: len(data) // 2]) == "truncated image data"


def test_header_cut_short_names_the_format():
    data = encode(photo(), "PNG")
    assert refused(data[:40]) == "corrupt or truncated png file (cannot read its header)"


def test_over_max_bytes():
    data = encode(photo(), "PNG")
    assert refused(data, max_bytes=1000) == f"file too large: {len(data)} bytes exceeds limit of 1000"


def test_over_max_pixels():
    data = encode(photo(), "JPEG")
    assert refused(data, max_pixels=10_000) == (
        "image too large: 160x160 = 25600 pixels exceeds limit of 10000"
    )


def test_exactly_max_pixels_is_fine():
    assert open_image(encode(photo(), "PNG"), max_bytes=MAX_BYTES, max_pixels=160 * 160).size == (160, 160)


# ---------------------------------------------------------------- decompression bombs


def test_bomb_below_pillows_limit_refused_by_ours_before_decoding():
    data = bilevel_png(9000, 9000)  # 81 Mpx: under Pillow's 89 Mpx warning, over our 64 Mpx
    assert len(data) < 200_000
    t0 = time.perf_counter()
    message = refused(data)
    assert time.perf_counter() - t0 < 0.25
    assert message == "image too large: 9000x9000 = 81000000 pixels exceeds limit of 64000000"


def test_bomb_over_pillows_warning_limit():
    """144 Mpx: Pillow warns (DecompressionBombWarning); refused either way."""
    data = bilevel_png(12000, 12000)
    with pytest.warns(Image.DecompressionBombWarning):  # warnings shown, not raised
        t0 = time.perf_counter()
        message = refused(data)
        assert time.perf_counter() - t0 < 0.25
    assert message == "image too large: 12000x12000 = 144000000 pixels exceeds limit of 64000000"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as under `pytest -W error`: the warning is raised
        message = refused(data)
    assert message.startswith("image too large: 144000000 pixels exceeds limit of")


def test_bomb_over_pillows_error_limit():
    """A PNG declaring 50000x50000 (2.5 Gpx): Pillow's DecompressionBombError, turned into ours."""
    data = with_declared_size(bilevel_png(64, 64), 50_000, 50_000)
    t0 = time.perf_counter()
    message = refused(data)
    assert time.perf_counter() - t0 < 0.25
    assert message.startswith("image too large: 2500000000 pixels exceeds limit of")


def test_pillow_globals_untouched():
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters))
    for data in (bilevel_png(9000, 9000), with_declared_size(bilevel_png(8, 8), 50_000, 50_000)):
        with pytest.raises(InputError):
            open_image(data, **LIMITS)
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters)) == before


_MEMORY_PROBE = r"""
import json, re, sys
from worker.images import InputError, open_image
data = open(sys.argv[1], "rb").read()
def peak_kib():  # VmHWM is this process's own peak (ru_maxrss carries the parent's over exec)
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1))
out = {}
for name, max_pixels in (("refused", 1_000_000), ("decoded", 100_000_000)):
    before = peak_kib()
    try:
        open_image(data, max_bytes=1 << 26, max_pixels=max_pixels)
        out[name + "_outcome"] = "image"
    except InputError as e:
        out[name + "_outcome"] = str(e)
    out[name + "_growth_mib"] = (peak_kib() - before) / 1024
print(json.dumps(out))
"""


@pytest.mark.timeout(90)  # its subprocess may take 60 s
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for peak RSS")
def test_bomb_refused_without_allocating(tmp_path):
    """In a fresh process: refusing a 36 Mpx bomb grows peak memory by almost nothing,
    while decoding the same file (limit raised) grows it by over 64 MiB: the check
    really happens before the decode."""
    path = tmp_path / "bomb.png"
    path.write_bytes(bilevel_png(6000, 6000))
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["refused_outcome"].startswith("image too large: 6000x6000")
    assert out["refused_growth_mib"] < 8
    assert out["decoded_outcome"] == "image"
    assert out["decoded_growth_mib"] > 64


# ---------------------------------------------------------------- accepted inputs, normalised


def test_ordinary_png_is_unchanged():
    src = photo()
    img = open_image(encode(src, "PNG"), **LIMITS)
    assert img.mode == "RGB" and np.array_equal(np.asarray(img), np.asarray(src))


def test_load_image_reports_the_input_as_stored():
    e = Image.Exif()
    e[0x0112] = 6
    img, info = load_image(encode(photo(size=(160, 120)), "JPEG", exif=e), **LIMITS)
    assert (info.format, info.mode, info.size, info.frames, info.orientation) == (
        "JPEG", "RGB", (160, 120), 1, 6,
    )
    assert img.size == (160, 120)  # not rotated yet


def test_cmyk_jpeg_becomes_rgb():
    src = photo()
    data = encode(src.convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    img = open_image(data, **LIMITS)
    assert img.mode == "RGB" and img.size == (160, 160)
    diff = np.abs(np.asarray(img, dtype=int) - np.asarray(src, dtype=int))
    assert diff.mean() < 6  # the photo, not an inverted or garbled one


def test_16_bit_png_is_scaled_not_clipped():
    grey = np.asarray(photo().convert("L"))
    data = encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    img = open_image(data, **LIMITS)
    assert img.mode == "RGB"
    assert np.array_equal(np.asarray(img)[..., 0], grey)  # 65535 -> 255, 257*v -> v


def test_32_bit_integer_tiff_is_scaled():
    grey = np.asarray(photo().convert("L"))
    data = encode(Image.fromarray(grey.astype(np.int32) * 257), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    assert np.array_equal(np.asarray(open_image(data, **LIMITS))[..., 0], grey)


def test_float_tiff_in_0_1_is_scaled():
    grey = np.asarray(photo().convert("L"))
    data = encode(Image.fromarray(grey.astype(np.float32) / 255), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    got = np.asarray(open_image(data, **LIMITS))[..., 0].astype(int)
    assert np.abs(got - grey).max() <= 1


def test_palette_png_with_transparency_becomes_rgba():
    pal = photo().quantize(32)
    index = int(np.bincount(np.asarray(pal).ravel()).argmax())  # the commonest colour
    data = encode(pal, "PNG", transparency=index)
    img = open_image(data, **LIMITS)
    assert img.mode == "RGBA"
    alpha = np.asarray(img)[..., 3]
    transparent = np.asarray(pal) == index
    assert (alpha[transparent] == 0).all() and (alpha[~transparent] == 255).all()


def test_palette_png_without_transparency_becomes_rgb():
    assert open_image(encode(photo().quantize(32), "PNG"), **LIMITS).mode == "RGB"


def test_rgb_png_with_colour_key_becomes_rgba():
    src = photo()
    key = tuple(int(v) for v in np.asarray(src)[0, 0])
    img = open_image(encode(src, "PNG", transparency=key), **LIMITS)
    assert img.mode == "RGBA" and np.asarray(img)[0, 0, 3] == 0


def test_la_png_becomes_rgba():
    la = photo().convert("LA")
    alpha = np.tile(np.arange(160, dtype=np.uint8), (160, 1))
    la.putalpha(Image.fromarray(alpha))
    img = open_image(encode(la, "PNG"), **LIMITS)
    assert img.mode == "RGBA"
    assert np.array_equal(np.asarray(img)[..., 3], alpha)
    assert np.array_equal(np.asarray(img)[..., 0], np.asarray(la)[..., 0])


def test_bilevel_becomes_rgb():
    img = open_image(encode(photo().convert("1"), "PNG"), **LIMITS)
    assert img.mode == "RGB" and set(np.unique(np.asarray(img))) <= {0, 255}


def frames() -> list[Image.Image]:
    return [photo("astronaut.png"), photo("coffee.png"), photo("chelsea.png")]


@pytest.mark.parametrize(
    "fmt,params",
    [
        ("GIF", {}),
        ("WEBP", {"lossless": True}),
        ("PNG", {}),  # APNG
    ],
)
def test_animation_gives_its_first_frame(fmt, params):
    first, *rest = frames()
    data = encode(first, fmt, save_all=True, append_images=rest, duration=100, loop=0, **params)
    img, info = load_image(data, **LIMITS)
    assert info.frames == 3
    with Image.open(io.BytesIO(data)) as alone:  # the first frame as Pillow decodes it
        expected = np.asarray(alone.convert("RGB"))
    got = open_image(data, **LIMITS)
    assert got.mode == "RGB" and got.size == (160, 160)
    assert np.array_equal(np.asarray(got), expected)
    if fmt != "GIF":  # lossless: exactly the first frame written
        assert np.array_equal(np.asarray(got), np.asarray(first))


def test_exif_orientation_6_is_applied():
    src = photo("chelsea.png", size=(160, 120))
    e = Image.Exif()
    e[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = encode(src, "JPEG", exif=e, quality=95)
    img = open_image(data, **LIMITS)
    assert img.size == (120, 160)
    with Image.open(io.BytesIO(data)) as stored:
        expected = stored.convert("RGB").transpose(Image.Transpose.ROTATE_270)
    assert np.array_equal(np.asarray(img), np.asarray(expected))
    assert img.getexif().get(0x0112, 1) == 1  # not applied a second time downstream


def test_returned_image_is_detached_and_loaded():
    img = open_image(encode(photo(), "PNG"), **LIMITS)
    assert not isinstance(img, ImageFile.ImageFile)  # no file handle behind it
    assert img.mode in ("RGB", "RGBA")


@pytest.mark.parametrize(
    "data,kind",
    [
        (b"\x89PNG\r\n\x1a\n....", "png"),
        (b"\xff\xd8\xff\xe0", "jpg"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "webp"),
        (b"GIF89a", "gif"),
        (b"BM\x00\x00", "bmp"),
        (b"II*\x00", "tif"),
        (b"\x00\x00\x00\x1cftypavif", "avif"),
        (b"hello", None),
        (b"", None),
    ],
)
def test_sniff_format(data, kind):
    assert sniff_format(data) == kind


def test_every_mode_pillow_can_make_normalises():
    base = photo(size=(16, 16))
    for mode in ("1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "PA", "I;16"):
        out = to_rgb_or_rgba(base.convert(mode) if mode != "I;16" else base.convert("L").convert("I;16"))
        assert out.mode in ("RGB", "RGBA"), mode
        assert out.size == (16, 16)


# ---------------------------------------------------------------- fuzz


def _seeds() -> list[bytes]:
    small = photo(size=(24, 24))
    return [
        encode(small, "PNG"), encode(small, "JPEG"), encode(small, "WEBP"),
        encode(small, "GIF"), encode(small, "BMP"), encode(small, "TIFF"),
        encode(small.convert("RGBA"), "PNG"), encode(small.quantize(8), "PNG", transparency=0),
        *(
            encode(small, fmt, save_all=True, append_images=[small.rotate(90)], duration=50)
            for fmt in ("GIF", "WEBP", "PNG")
        ),
    ]


SEEDS = _seeds()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(SEEDS),
    cut=st.integers(min_value=0, max_value=4000),
    flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(1, 255)), max_size=6),
)
def test_damaged_files_give_an_image_or_input_error(seed, cut, flips):
    """Truncated or bit-flipped real files: a usable image or InputError, never anything else."""
    data = bytearray(seed[: max(1, len(seed) - cut)])
    for pos, xor in flips:
        data[pos % len(data)] ^= xor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about corrupt EXIF and the like
        try:
            img = open_image(bytes(data), max_bytes=1 << 20, max_pixels=1 << 20)
        except InputError as e:
            assert str(e) and "\n" not in str(e)
            return
    assert img.mode in ("RGB", "RGBA")
    assert img.width * img.height <= 1 << 20


def test_allowlist_is_what_pillow_has():
    Image.init()
    assert set(FORMATS) - {"AVIF"} <= set(Image.ID)
