"""Where a slot's time goes, per photo and stage: rembg.remove(bytes) against cutq's fast path.

Stages are timed in CPU seconds of this process (time.process_time, one
onnxruntime thread), which other load on the machine disturbs far less than wall
time; the load average is printed beside the numbers all the same.

    python bench/profile_slot.py            # stage table, then the encoder sweep
    python bench/profile_slot.py --json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")
OPTS = {"model": "u2netp"}


class Stages:
    """Accumulates CPU ms per stage name."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}

    def __call__(self, name: str, fn, *args, **kwargs):
        t = time.process_time()
        out = fn(*args, **kwargs)
        self.cpu[name] = self.cpu.get(name, 0.0) + (time.process_time() - t) * 1000
        return out


def rembg_steps(data: bytes, session, st: Stages) -> bytes:
    """rembg.remove(data) as rembg 2.0.86 runs it, one stage at a time (same calls)."""
    import numpy as np
    from PIL import Image
    from rembg import bg

    def decode():
        img = Image.open(io.BytesIO(data))
        img.load()
        return img

    img = st("decode", decode)
    img = st("exif orientation (copy)", bg.fix_image_orientation, img)
    inp = st("resize + normalise", session.normalize, img, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
             (320, 320))
    outs = st("inference", session.inner_session.run, None, inp)

    def mask():
        pred = outs[0][:, 0, :, :]
        pred = (pred - np.min(pred)) / (np.max(pred) - np.min(pred))
        m = Image.fromarray((np.squeeze(pred) * 255).astype("uint8"), mode="L")
        return m.resize(img.size, Image.Resampling.LANCZOS)

    m = st("mask scale", mask)
    cut = st("composite", bg.naive_cutout, img, m)

    def png():
        b = io.BytesIO()
        cut.save(b, "PNG")
        return b.getvalue()

    return st("encode", png)


def fast_steps(data: bytes, proc, st: Stages) -> bytes:
    """The fast path (RembgProcessor.process, fast=True), one stage at a time."""
    from PIL import Image

    from worker.cutout import encode

    opts = proc.options(OPTS)
    predictor = proc.predictor("u2netp")
    img = st("decode", proc.decode, data, opts)  # validation and the one decode
    st("exif orientation (copy)", lambda: None)
    x = st("resize + normalise", predictor.prepare, img)
    out = st("inference", predictor.infer, x[None])
    m = st("mask scale", predictor.mask, out, img.size)

    def composite():
        c = Image.new("RGBA", img.size, 0)
        c.paste(img, None, m)
        return c

    cut = st("composite", composite)
    return st("encode", encode, cut, "png", opts["png_compression"])


def encoder_sweep(cutouts: list, repeat: int) -> list[dict]:
    """CPU ms and KiB per photo for each PNG level and lossless WebP effort."""
    rows = []
    settings = [("png", {"compress_level": lvl}) for lvl in range(10)]
    settings += [("png", {"compress_level": lvl, "compress_type": 3}) for lvl in (1, 2, 3)]  # Z_RLE
    settings += [("webp", {"lossless": True, "exact": True, "method": m, "quality": q})
                 for m, q in ((0, 0), (1, 10), (2, 25), (4, 80), (6, 100))]
    for fmt, params in settings:
        cpu = size = 0.0
        for cut in cutouts:
            for _ in range(repeat):
                b = io.BytesIO()
                t = time.process_time()
                cut.save(b, fmt.upper(), **params)
                cpu += time.process_time() - t
            size += len(b.getvalue())
        n = len(cutouts)
        rows.append({"format": fmt, **{k: v for k, v in params.items() if k not in ("lossless", "exact")},
                     "cpu_ms": round(cpu / n / repeat * 1000, 1), "kib": round(size / n / 1024, 1)})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per photo and path")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import onnxruntime as ort
    import rembg
    import skimage
    from PIL import Image

    from worker.processors import RembgProcessor

    data_dir = Path(skimage.__file__).parent / "data"
    photos = {name: (data_dir / name).read_bytes() for name in PHOTOS}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = rembg.new_session("u2netp", sess_opts=opts)
    proc = RembgProcessor(threads=1)
    proc.preload(["u2netp"])
    load = [os.getloadavg()[0]]
    paths = {"rembg.remove": Stages(), "cutq fast path": Stages()}
    totals = {name: 0.0 for name in paths}
    cutouts = []
    for data in photos.values():
        rembg_steps(data, session, Stages())  # warm both
        fast_steps(data, proc, Stages())
        for _ in range(args.repeat):  # alternate, so drift hits both alike
            for name, stages in paths.items():
                t = time.process_time()
                if name == "rembg.remove":
                    rembg_steps(data, session, stages)
                else:
                    fast_steps(data, proc, stages)
                totals[name] += time.process_time() - t
        cutouts.append(Image.open(io.BytesIO(rembg.remove(data, session=session))))
    load.append(os.getloadavg()[0])
    n = len(photos) * args.repeat
    table = {name: {k: round(v / n, 1) for k, v in st.cpu.items()} for name, st in paths.items()}
    for name in paths:
        table[name]["total"] = round(totals[name] / n * 1000, 1)
    for cut in cutouts:
        cut.load()
    sweep = encoder_sweep(cutouts, args.repeat)
    load.append(os.getloadavg()[0])
    result = {"bench": "profile_slot", "cpu_ms_per_image": table, "encoders": sweep,
              "photos": list(photos), "repeat": args.repeat, "loadavg_1min": load}
    if args.json:
        print(json.dumps(result))
        return 0
    stages = list(next(iter(table.values())))
    print(f"CPU ms per image (mean of {len(photos)} photos x {args.repeat}), 1 onnxruntime thread; "
          f"load average {', '.join(f'{x:.2f}' for x in load)}")
    print(f"{'stage':26s}" + "".join(f"{name:>16s}" for name in table))
    for s in stages:
        print(f"{s:26s}" + "".join(f"{table[name].get(s, 0.0):16.1f}" for name in table))
    print("\nencoder      setting                            CPU ms   KiB (mean per photo; compress_type 3: Z_RLE)")
    for row in sweep:
        setting = ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("format", "cpu_ms", "kib"))
        print(f"{row['format']:12s} {setting:34s} {row['cpu_ms']:7.1f} {row['kib']:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
