"""Efficiency of real background removal through cutq against rembg alone.

efficiency = images/s through the whole system (submit -> broker -> workers ->
results stored) / images/s of a plain in-process `rembg.remove` loop, same photos,
same model, same machine, measured in this one run (baseline and system alternate).

    python bench/images.py --workers 2 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from harness import Client, cluster, machine, median

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")


def photos(n: int) -> list[tuple[str, bytes]]:
    import skimage

    data = Path(skimage.__file__).parent / "data"
    base = [(name, (data / name).read_bytes()) for name in PHOTOS]
    return [(f"{i}-{base[i % len(base)][0]}", base[i % len(base)][1]) for i in range(n)]


def baseline(images: list[tuple[str, bytes]], model: str) -> float:
    """Images/s of rembg.remove in a loop, one process, onnxruntime's default threading."""
    import rembg

    session = rembg.new_session(model)
    rembg.remove(images[0][1], session=session)  # warm-up: first run allocates
    start = time.perf_counter()
    for _, data in images:
        rembg.remove(data, session=session)
    return len(images) / (time.perf_counter() - start)


def system(endpoint: str, images: list[tuple[str, bytes]], model: str) -> float:
    with Client(endpoint, timeout=60) as c:
        warm = c.submit(images[:2], options={"model": model})
        c.wait(warm, timeout=300)
        start = time.perf_counter()
        job = c.submit(images, options={"model": model})
        status = c.wait(job, timeout=900)
        elapsed = time.perf_counter() - start
    if status["done"] != len(images):
        raise RuntimeError(f"system run ended {status['state']}: {status['failed']} failed")
    return len(images) / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--slots", type=int, default=1, help="slots per worker")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads per slot")
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--model", default="u2netp")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    images = photos(args.images)
    base_runs, sys_runs = [], []
    worker_args = ["--concurrency", str(args.slots), "--threads", str(args.threads), "--preload", args.model]
    with cluster(args.workers, worker_args) as endpoint:
        for _ in range(args.repeat):
            # idle workers hold loaded sessions but use no CPU while the baseline runs
            base_runs.append(baseline(images, args.model))
            sys_runs.append(system(endpoint, images, args.model))
    b, s = median(base_runs), median(sys_runs)
    result = {
        "bench": "images", "model": args.model, "images": args.images, "workers": args.workers,
        "slots_per_worker": args.slots, "threads_per_slot": args.threads,
        "baseline_images_per_s": round(b, 3), "system_images_per_s": round(s, 3),
        "efficiency": round(s / b, 3), "baseline_runs": [round(x, 3) for x in base_runs],
        "system_runs": [round(x, 3) for x in sys_runs], "machine": machine(),
    }
    print(json.dumps(result) if args.json else
          f"efficiency {result['efficiency']} ({s:.2f} vs {b:.2f} images/s) on {result['machine']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
