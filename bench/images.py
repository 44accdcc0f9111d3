"""Efficiency of real background removal through cutq against the best hand-written loop.

The fair baseline ("hand loop") is what a user could do by hand on the same cores:
one process per core, each a `rembg.remove(bytes)` loop over a 1-thread
onnxruntime session, pulling the next photo from a shared counter (so no process
idles while another has work). Both sides are warm (sessions loaded, one image
run) before anything is timed, run the same photos with the same model, and
alternate, run by run; the figures are medians.

    efficiency = images/s through cutq (submit -> broker -> worker slots -> results
                 stored) / images/s of the hand loop

CPU seconds per image: utime + stime from /proc of every process on each side
(the hand loop's processes; cutq's broker, workers and their slot processes),
plus, for cutq, this process while it submits and waits (the client). The old
baseline, one process calling rembg.remove with onnxruntime's default threading,
is kept as a second figure.

Take final numbers on a quiet machine: the load average is recorded before and
after, and `quiet` says whether it stayed under 0.5 x cores at the start.

    python bench/images.py --json                      # 1 worker, --concurrency auto
    python bench/images.py --slots 2 --threads 1 --json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
import zlib
from pathlib import Path

from harness import Client, cluster, machine, median

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")
_CTX = mp.get_context("spawn")
_TICK = os.sysconf("SC_CLK_TCK")


def photos(n: int, tag: str = "") -> list[tuple[str, bytes]]:
    """`n` inputs cycling through the sample photos, each file made unique (per `tag` too) by
    a comment: same pixels, same decoding work, but the broker's result cache (keyed by the
    input's digest) can never answer for the model."""
    import skimage

    data = Path(skimage.__file__).parent / "data"
    base = [(name, (data / name).read_bytes()) for name in PHOTOS]
    return [(f"{i}-{name}", unique(raw, f"cutq bench {tag} image {i}")) for i, (name, raw) in
            ((i, base[i % len(base)]) for i in range(n))]


def unique(data: bytes, note: str) -> bytes:
    """The file with `note` added as a PNG tEXt chunk or a JPEG comment."""
    text = note.encode()
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        end_ihdr = 8 + 8 + int.from_bytes(data[8:12], "big") + 4
        body = b"Comment\x00" + text
        chunk = len(body).to_bytes(4, "big") + b"tEXt" + body + zlib.crc32(b"tEXt" + body).to_bytes(4, "big")
        return data[:end_ihdr] + chunk + data[end_ihdr:]
    if data.startswith(b"\xff\xd8"):
        return data[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + data[2:]
    raise ValueError("unique() takes PNG or JPEG")


# ---------------------------------------------------------------- /proc accounting


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds used so far) of a live process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def descendants(root: int) -> dict[int, float]:
    """pid -> CPU seconds of every live process below `root`."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            table[int(entry)] = st
    out, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, cpu) in table.items():
            if ppid == parent and pid not in out:
                out[pid] = cpu
                frontier.append(pid)
    return out


def cpu_of(pids: set[int]) -> float:
    return sum(st[1] for pid in pids if (st := _stat(pid)) is not None)


def role(pid: int) -> str:
    """broker, worker, slot (a process the worker spawned) or other, from its command line."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return "other"
    if b"broker" in argv:
        return "broker"
    if b"worker" in argv:
        return "worker"
    if any(b"spawn_main" in a for a in argv):
        return "slot"
    return "other"


def cpu_by_role(pids: set[int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for pid in pids:
        if (st := _stat(pid)) is not None:
            out[role(pid)] = out.get(role(pid), 0.0) + st[1]
    return out


# ---------------------------------------------------------------- the hand loop


def _hand_main(conn, images: list[bytes], model: str, counter, lock) -> None:
    import onnxruntime as ort
    import rembg

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = rembg.new_session(model, sess_opts=opts)
    rembg.remove(images[0], session=session)  # warm: the first run allocates
    conn.send("ready")
    while conn.recv() == "go":
        done = 0
        while True:
            with lock:
                i = counter.value
                counter.value += 1
            if i >= len(images):
                break
            rembg.remove(images[i], session=session)
            done += 1
        conn.send(done)


class HandLoop:
    """`procs` warm processes, each a rembg.remove loop with a 1-thread session."""

    def __init__(self, procs: int, images: list[bytes], model: str) -> None:
        self.n = len(images)
        self.counter = _CTX.Value("i", 0, lock=False)
        self.lock = _CTX.Lock()
        self.conns, self.procs = [], []
        for _ in range(procs):
            parent, child = _CTX.Pipe()
            p = _CTX.Process(target=_hand_main, args=(child, images, model, self.counter, self.lock), daemon=True)
            p.start()
            self.conns.append(parent)
            self.procs.append(p)
        for c in self.conns:
            if c.recv() != "ready":
                raise RuntimeError("hand loop did not start")

    @property
    def pids(self) -> set[int]:
        return {p.pid for p in self.procs}

    def run(self) -> tuple[float, float]:
        """One pass over all images: (images/s, CPU seconds per image)."""
        self.counter.value = 0
        cpu0 = cpu_of(self.pids)
        start = time.perf_counter()
        for c in self.conns:
            c.send("go")
        done = sum(c.recv() for c in self.conns)
        elapsed = time.perf_counter() - start
        if done != self.n:
            raise RuntimeError(f"hand loop did {done} of {self.n} images")
        return self.n / elapsed, (cpu_of(self.pids) - cpu0) / self.n

    def close(self) -> None:
        for c in self.conns:
            c.send("stop")
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()


def single_process(images: list[bytes], model: str) -> float:
    """The old figure: images/s of rembg.remove in one process, onnxruntime's default threading."""
    import rembg

    session = rembg.new_session(model)
    rembg.remove(images[0], session=session)  # warm-up: first run allocates
    start = time.perf_counter()
    for data in images:
        rembg.remove(data, session=session)
    return len(images) / (time.perf_counter() - start)


# ---------------------------------------------------------------- cutq


def system(endpoint: str, images: list[tuple[str, bytes]], options: dict,
           exclude: set[int]) -> tuple[float, float, dict[str, float]]:
    """One job of all images through cutq: (images/s, CPU seconds per image of broker,
    workers, slots and this client, the same by role). `images` must be new to the broker
    (see `photos`)."""
    me = os.getpid()
    with Client(endpoint, timeout=60) as c:
        pids = set(descendants(me)) - exclude
        pids -= {p for root in exclude for p in descendants(root)}
        roles0, own0 = cpu_by_role(pids), time.process_time()
        start = time.perf_counter()
        job = c.submit(images, options=options)
        status = c.wait(job, timeout=900)
        elapsed = time.perf_counter() - start
        roles = {k: v - roles0.get(k, 0.0) for k, v in cpu_by_role(pids).items()}
        roles["client"] = time.process_time() - own0
    if status["done"] != len(images):
        raise RuntimeError(f"system run ended {status['state']}: {status['failed']} failed")
    n = len(images)
    return n / elapsed, sum(roles.values()) / n, {k: round(v / n, 4) for k, v in sorted(roles.items())}


def warm(endpoint: str, images: list[tuple[str, bytes]], options: dict) -> dict:
    """Run `images` so every slot has run once; return what the workers announce."""
    with Client(endpoint, timeout=60) as c:
        c.wait(c.submit(images, options=options), timeout=300)
        return {w["name"]: {"slots": w["slots"], **({"threads": w["threads"]} if "threads" in w else {})}
                for w in c.workers() if w["state"] == "alive"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--slots", default="auto", help="slots per worker, or auto (cutq worker --concurrency auto)")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime threads per slot (0: the worker decides)")
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3, help="alternating runs per side (median; at least 3)")
    ap.add_argument("--model", default="u2netp")
    ap.add_argument("--png-compression", type=int, default=None, help="job option (default: cutq's)")
    ap.add_argument("--format", default="png", choices=["png", "webp"])
    ap.add_argument("--hand-procs", type=int, default=0, help="hand-loop processes (0: one per core)")
    ap.add_argument("--no-single", action="store_true", help="skip the old single-process figure")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    load_start = os.getloadavg()
    images = photos(args.images)
    options: dict = {"model": args.model, "format": args.format}
    if args.png_compression is not None:
        options["png_compression"] = args.png_compression
    worker_args = ["--concurrency", str(args.slots), "--threads", str(args.threads), "--preload", args.model]
    hand_runs, sys_runs, single_runs = [], [], []
    hand = HandLoop(args.hand_procs or cores, [d for _, d in images], args.model)
    try:
        with cluster(args.workers, worker_args) as endpoint:
            chosen = warm(endpoint, photos(2 * cores * args.workers, "warm-up"), options)
            for r in range(max(1, args.repeat)):
                # each side idles (sessions loaded, no CPU) while the other runs
                hand_runs.append(hand.run())
                sys_runs.append(system(endpoint, photos(args.images, f"run {r}"), options, exclude=hand.pids))
                if not args.no_single:
                    single_runs.append(single_process([d for _, d in images], args.model))
    finally:
        hand.close()
    load_end = os.getloadavg()
    h, s = median([r[0] for r in hand_runs]), median([r[0] for r in sys_runs])
    h_cpu, s_cpu = median([r[1] for r in hand_runs]), median([r[1] for r in sys_runs])
    result = {
        "bench": "images", "model": args.model, "images": args.images, "options": options,
        "workers": args.workers, "slots": args.slots, "threads": args.threads, "chosen": chosen,
        "hand_loop_processes": args.hand_procs or cores,
        "hand_images_per_s": round(h, 3), "system_images_per_s": round(s, 3), "efficiency": round(s / h, 3),
        "hand_cpu_s_per_image": round(h_cpu, 3), "system_cpu_s_per_image": round(s_cpu, 3),
        "cpu_ratio": round(s_cpu / h_cpu, 3),
        "system_cpu_s_per_image_by_role": {k: median([r[2].get(k, 0.0) for r in sys_runs])
                                           for k in sorted({k for r in sys_runs for k in r[2]})},
        "hand_runs": [[round(x, 3) for x in r] for r in hand_runs],
        "system_runs": [[round(r[0], 3), round(r[1], 3)] for r in sys_runs],
        "loadavg_start": [round(x, 2) for x in load_start], "loadavg_end": [round(x, 2) for x in load_end],
        "quiet": load_start[0] < 0.5 * cores, "machine": machine(),
    }
    if single_runs:
        b = median(single_runs)
        result.update({"single_process_images_per_s": round(b, 3), "single_process_efficiency": round(s / b, 3),
                       "single_process_runs": [round(x, 3) for x in single_runs]})
    if args.json:
        print(json.dumps(result))
    else:
        print(f"efficiency {result['efficiency']} vs the hand loop ({s:.2f} vs {h:.2f} images/s, "
              f"{args.hand_procs or cores} processes x 1 thread); CPU per image {s_cpu:.3f} s vs {h_cpu:.3f} s "
              f"({result['cpu_ratio']}x); chosen {chosen}")
        print("cutq CPU s per image by process: " + ", ".join(
            f"{k} {v:.4f}" for k, v in result["system_cpu_s_per_image_by_role"].items()))
        if single_runs:
            print(f"efficiency {result['single_process_efficiency']} vs one rembg process "
                  f"({result['single_process_images_per_s']:.2f} images/s, default threading)")
        print(f"load average {load_start[0]:.2f} -> {load_end[0]:.2f} on {result['machine']}"
              + ("" if result["quiet"] else "  (NOT QUIET: do not quote these numbers)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
