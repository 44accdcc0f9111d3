"""Safe decoding of untrusted input bytes into an image rembg can take.

`open_image` is the one entry point most callers want: it refuses oversized files
and decompression bombs before decoding, decodes the first frame fully (so a
truncated file fails here and not inside a model), applies the EXIF orientation
and normalises the mode to RGB or RGBA.

`load_image` does the checks and the decode but no normalisation, and also
returns an `ImageInfo` describing the input as stored; the rembg processor uses
it to decide whether the original bytes can go to rembg unchanged.

Every failure that is the input's own fault raises `InputError` with a one-line
reason. Pillow's global settings (`Image.MAX_IMAGE_PIXELS`,
`ImageFile.LOAD_TRUNCATED_IMAGES`, warning filters) are never changed.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

# Formats accepted from untrusted input. Pillow can open many more (EPS runs
# Ghostscript, PSD/FITS/... are rarely photos and widen the attack surface).
# JPEG covers MPO (multi-picture JPEGs from phone cameras) too.
FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")

_ORIENTATION_TAG = 0x0112
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


class InputError(ValueError):
    """The input's own fault: deterministic, never worth retrying."""


@dataclass(frozen=True)
class ImageInfo:
    """What the input is, as stored (before EXIF rotation and mode normalisation)."""

    format: str  # Pillow's format name: "PNG", "JPEG", "MPO", "WEBP", ...
    mode: str  # Pillow mode of the first frame as decoded
    size: tuple[int, int]  # (width, height) as stored
    frames: int  # 1 for a still image; 0 when frames after the first cannot be read
    orientation: int  # EXIF orientation tag, 1 when absent or unreadable


def sniff_format(data: bytes) -> str | None:
    """A cheap magic-byte guess: "png", "jpg", "webp", "gif", "bmp", "tif", "avif" or None."""
    head = bytes(data[:16])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tif"
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return "avif"
    return None


def check_bytes(data: bytes, *, max_bytes: int) -> None:
    """Refuse an empty or oversized file without looking inside it."""
    if len(data) == 0:
        raise InputError("empty file (0 bytes)")
    if len(data) > max_bytes:
        raise InputError(f"file too large: {len(data)} bytes exceeds limit of {max_bytes}")


def load_image(data: bytes, *, max_bytes: int, max_pixels: int) -> tuple[Image.Image, ImageInfo]:
    """Check, then fully decode the first frame; no rotation, no mode change.

    The size in bytes is checked first, then width*height from the header,
    before any pixel data is decoded. Raises InputError for anything the input
    is to blame for; MemoryError and other environment failures propagate.
    """
    check_bytes(data, max_bytes=max_bytes)
    img = _open_lazily(data, max_pixels=max_pixels)
    try:
        width, height = img.size
        if width * height > max_pixels:
            raise InputError(
                f"image too large: {width}x{height} = {width * height} pixels "
                f"exceeds limit of {max_pixels}"
            )
        frames = _frame_count(data)
        _decode(img, data)
        info = ImageInfo(
            format=img.format or "",
            mode=img.mode,
            size=img.size,
            frames=frames,
            orientation=_orientation(img),
        )
    except BaseException:
        img.close()
        raise
    return img, info


def normalise(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation and convert to RGB or RGBA, as a new detached image."""
    try:
        img = ImageOps.exif_transpose(img)  # always a copy: detached from the file
    except MemoryError:
        raise
    except Exception as e:
        raise InputError(f"cannot apply EXIF orientation ({_one_line(e)})") from e
    return to_rgb_or_rgba(img)


def open_image(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """Untrusted bytes -> a loaded RGB or RGBA image, upright, first frame only.

    Raises InputError with a one-line reason for an empty, oversized, unknown,
    truncated or corrupt file, or a decompression bomb (refused before decoding).
    """
    img, _ = load_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    try:
        return normalise(img)
    finally:
        img.close()


def to_rgb_or_rgba(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB, or RGBA when the image carries transparency.

    Transparency means an alpha channel, a palette with transparent entries, or a
    PNG tRNS colour key on an RGB or L image.

    16-bit and 32-bit integer greyscale is scaled (65535 -> 255), not clipped;
    floating point greyscale is taken as 0..1 when it fits there, else stretched
    from its own minimum to maximum.
    """
    mode = img.mode
    try:
        if mode == "RGBA":
            return img
        if mode in ("RGB", "L") and "transparency" in img.info:  # a tRNS colour key
            return img.convert("RGBA")
        if mode == "RGB":
            return img
        if mode == "P":
            palette = getattr(img, "palette", None)
            has_alpha = "transparency" in img.info or getattr(palette, "mode", "") == "RGBA"
            return img.convert("RGBA" if has_alpha else "RGB")
        if mode in ("LA", "La", "PA", "RGBa"):
            return img.convert("RGBA")
        if mode.startswith("I") or mode == "F":
            return _wide_to_l(img).convert("RGB")
        if mode in ("1", "L", "CMYK", "YCbCr", "HSV", "LAB"):
            return img.convert("RGB")
        return img.convert("RGBA" if "A" in mode else "RGB")
    except MemoryError:
        raise
    except Exception as e:
        raise InputError(f"unsupported image mode {mode!r} ({_one_line(e)})") from e


# ---------------------------------------------------------------- internals


def _open_lazily(data: bytes, *, max_pixels: int) -> Image.Image:
    """Image.open on the bytes: reads the header only, turns every refusal into InputError."""
    try:
        return Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's own check fired first (only possible above its MAX_IMAGE_PIXELS;
        # the warning arrives as an exception only where warnings are errors).
        limit = Image.MAX_IMAGE_PIXELS or max_pixels
        if isinstance(e, Image.DecompressionBombError):
            limit *= 2
        found = _BOMB_PIXELS.search(str(e))
        pixels = found.group(1) if found else "too many"
        raise InputError(
            f"image too large: {pixels} pixels exceeds limit of {min(limit, max_pixels)}"
        ) from e
    except UnidentifiedImageError as e:
        kind = sniff_format(data)
        if kind is not None:
            raise InputError(f"corrupt or truncated {kind} file (cannot read its header)") from e
        raise InputError(
            "not an image (cannot identify image format; supported: "
            + ", ".join(FORMATS) + ")"
        ) from e
    except MemoryError:
        raise
    except Exception as e:  # a plugin choking on a malformed header
        if _looks_truncated(e, data):
            raise InputError("truncated image data") from e
        raise InputError(f"corrupt image header ({_one_line(e)})") from e


def _frame_count(data: bytes) -> int:
    """How many frames, counted on a second handle so the first one stays at frame 0.

    Pillow walks the frame headers (no pixel decoding). A later frame declaring a
    bomb-sized canvas refuses the file; an unreadable later frame gives 0.
    """
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as probe:
            return int(getattr(probe, "n_frames", 1) or 1)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        found = _BOMB_PIXELS.search(str(e))
        pixels = found.group(1) if found else "too many"
        raise InputError(f"image too large: a later frame has {pixels} pixels") from e
    except MemoryError:
        raise
    except Exception:
        return 0


def _decode(img: Image.Image, data: bytes) -> None:
    """Decode all pixels of the current (first) frame; truncation fails here."""
    try:
        img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"image too large: {_one_line(e)}") from e
    except MemoryError:
        raise
    except Exception as e:
        if _looks_truncated(e, data):
            raise InputError("truncated image data") from e
        raise InputError(f"corrupt image data ({_one_line(e)})") from e


def _looks_truncated(e: Exception, data: bytes) -> bool:
    """Pillow says so, or a RIFF container (WebP) is shorter than its declared length."""
    if isinstance(e, EOFError) or "truncated" in str(e).lower():
        return True
    if len(data) >= 12 and data[:4] == b"RIFF":
        return len(data) < int.from_bytes(data[4:8], "little") + 8
    return False


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
        return int(value) if value else 1
    except MemoryError:
        raise
    except Exception:
        return 1  # unreadable EXIF: exif_transpose will decide (and may refuse)


def _wide_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale -> 8-bit L, scaled rather than clipped."""
    import numpy as np  # only needed for these rare modes

    if img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo < 0.0 or hi > 1.0:
            a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        out = np.rint(a * 255.0)
    else:
        # I;16, I;16B, I;16L, I;16N and I (which Pillow uses for 16-bit sources too)
        a = np.asarray(img.convert("I") if img.mode != "I" else img, dtype=np.int64)
        a = np.clip(a, 0, 65535)
        out = (a * 255 + 32767) // 65535
    return Image.fromarray(out.astype(np.uint8))


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or e.__class__.__name__
    return text[:200]
