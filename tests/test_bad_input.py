"""Bad input through the whole system: one job holding every kind of awkward file plus a
good photo. Each either gives a correct cut-out or fails its own task, naming the reason,
without a retry; broker and worker keep serving."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.cluster import Cluster, sample_photo


def _photo(size: int = 160) -> Image.Image:
    with Image.open(sample_photo("astronaut.png")) as im:
        return im.convert("RGB").resize((size, size))


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height (never decodable in memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _distance(cutout: Image.Image, reference: Image.Image) -> float:
    """Mean RGB difference over the cut-out's mostly opaque pixels (where it keeps its input's colours)."""
    out = np.asarray(cutout, dtype=np.int32)
    ref = np.asarray(reference.convert("RGB"), dtype=np.int32)
    opaque = out[..., 3] >= 128
    assert opaque.sum() > 200, "almost nothing kept"
    return float(np.abs(out[..., :3][opaque] - ref[opaque]).mean())


# the cut-out must come from the right picture: name -> (what it should match, what it must not)
def _references() -> dict[str, tuple[Image.Image, Image.Image]]:
    photo = _photo()
    wide = photo.resize((160, 120))
    flipped = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return {
        "animated.gif": (photo, flipped),  # the first frame, not the second
        "animated.webp": (photo, flipped),
        # EXIF orientation 6: displayed turned 90 degrees clockwise, not counter-clockwise
        "rotated.jpg": (wide.transpose(Image.Transpose.ROTATE_270), wide.transpose(Image.Transpose.ROTATE_90)),
    }


def _inputs() -> dict[str, tuple[bytes, object]]:
    """name -> (bytes, expected): expected is an output (w, h) or a reason substring."""
    photo = _photo()
    png, jpg = _save(photo, "PNG"), _save(photo, "JPEG", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    wide = photo.resize((160, 120))
    frames = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    noise = Image.frombytes("RGB", (700, 700), np.random.default_rng(1).bytes(700 * 700 * 3))
    sixteen = Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257)  # I;16
    return {
        "good.png": (png, (160, 160)),
        "empty.png": (b"", "empty"),
        "text.jpg": (b"hello, I am not an image\n" * 10, "not an image"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "truncated.jpg": (jpg[: len(jpg) // 2], "truncated"),
        "bomb.png": (_bomb_png(60000, 60000), "too large"),
        "huge-pixels.png": (_save(Image.new("RGB", (3000, 3000)), "PNG"), "too large"),
        "huge-bytes.png": (_save(noise, "PNG"), "file too large"),  # ~1.5 MB of incompressible pixels
        "cmyk.jpg": (_save(photo.convert("CMYK"), "JPEG"), (160, 160)),
        "sixteen.png": (_save(sixteen, "PNG"), (160, 160)),
        "palette.png": (_save(photo.convert("P"), "PNG"), (160, 160)),
        "la.png": (_save(photo.convert("LA"), "PNG"), (160, 160)),
        "animated.gif": (_save(frames[0], "GIF", save_all=True, append_images=frames[1:]), (160, 160)),
        "animated.webp": (_save(frames[0], "WEBP", save_all=True, append_images=frames[1:]), (160, 160)),
        "rotated.jpg": (_save(wide, "JPEG", exif=exif), (120, 160)),
    }


@pytest.mark.timeout(300)  # rembg on ~20 inputs over 2 slots; waits up to 180 s + 60 s
def test_every_bad_input_fails_alone_or_is_cut_out(cluster: Cluster, needs_model):
    cluster.start_broker()
    cluster.start_worker(2, "--max-pixels", "4000000", "--max-bytes", "1000000")
    cluster.wait_workers(1)
    client = cluster.client()
    inputs = _inputs()
    references = _references()
    job = client.submit([(name, data) for name, (data, _) in inputs.items()])
    status = client.wait(job, timeout=180)
    by_name = {t["name"]: t for t in status["tasks"]}
    for name, (_, expected) in inputs.items():
        task = by_name[name]
        assert task["attempts"] == 1 and task["worker_deaths"] == 0, f"{name} was retried: {task}"
        if isinstance(expected, tuple):
            assert task["state"] == "done", f"{name}: {task['error']}"
            img = Image.open(io.BytesIO(client.fetch_result(task["task_id"])[1]))
            alpha = np.asarray(img)[..., 3]
            assert img.mode == "RGBA" and img.size == expected, (name, img.mode, img.size)
            assert 0 < alpha.mean() < 255, f"{name}: the cut-out is all or nothing"
            if name in references:
                right, wrong = references[name]
                near, far = _distance(img, right), _distance(img, wrong)  # measured: ~5-13 vs ~86-91
                assert near < 30 and far > 2 * near, f"{name}: cut out of the wrong picture ({near:.1f} vs {far:.1f})"
        else:
            assert task["state"] == "failed", f"{name} should have failed: {task}"
            assert expected in task["error"], f"{name}: {task['error']!r} does not name {expected!r}"
    # still serving: a follow-up job completes on the same worker and broker
    again = client.submit([("again.png", inputs["good.png"][0])])
    assert client.wait(again, timeout=60)["state"] == "done"
