"""`cutq worker --concurrency auto`: slots and threads per slot from the cores and a short trial.

Candidates split the cores into slots x threads (8 cores: 8x1, 4x2, 2x4, 1x8; with
--threads T only cores//T x T). Each is tried for real: that many spawned
processes, each with a RembgProcessor of that many onnxruntime threads on the
first model, all warm, then together cutting out `cores` copies of a
640x480 photo-like image; the most images per second wins (a tie, within 3%,
goes to more slots: a cancel or a crash then costs less work). Slots are also
capped by memory: MemAvailable x 0.8 / the RSS a trial process reached.

On 2 cores with u2netp this takes ~10 s and picks 2 x 1 (2 slots beat 1 x 2:
decoding, resizing and encoding are single-threaded, and two processes overlap
them with the other's inference).
"""

from __future__ import annotations

import io
import logging
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("cutq.worker")
_CTX = mp.get_context("spawn")
TIE = 0.03  # within 3% of the best counts as a tie


@dataclass(frozen=True)
class Choice:
    slots: int
    threads: int
    reason: str  # one line for the log: what was measured, or why nothing was
    images_per_s: dict[str, float] = field(default_factory=dict)  # "SxT" -> measured
    slot_rss_mb: float = 0.0  # the largest RSS a trial process reached, warm


def candidates(cores: int, threads: int = 0) -> list[tuple[int, int]]:
    """(slots, threads) splits of `cores`, most slots first."""
    if threads:
        return [(max(1, cores // threads), threads)]
    out, t = [], 1
    while t <= cores:
        out.append((cores // t, t))
        t *= 2
    if out[-1][1] != cores:
        out.append((1, cores))
    return out


def probe_image() -> bytes:
    """A 640x480 PNG with smooth regions and texture, like a photo to the model and the codecs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:480, 0:640]
    base = np.stack([(x * 255 // 640), (y * 255 // 480), ((x + y) * 255 // 1120)], axis=-1)
    disc = ((x - 320) ** 2 + (y - 240) ** 2) < 150 ** 2
    base[disc] = (base[disc] // 3 + 120)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _trial_main(conn: Any, model: str, providers: list[str] | None) -> None:
    """A trial process: ("load", threads) -> build and warm; ("go", n) -> run n images.
    Replies ("ready" | "done", RSS MiB), or ("error", reason) and exits."""
    try:
        from worker.processors import RembgProcessor

        procs: dict[int, Any] = {}
        data = probe_image()
        options = {"model": model}
        current = None
        while True:
            cmd = conn.recv()
            if cmd[0] == "load":
                if cmd[1] not in procs:
                    procs[cmd[1]] = RembgProcessor(threads=cmd[1], providers=providers)
                    procs[cmd[1]].process(data, options)  # warm: the first run allocates
                current = procs[cmd[1]]
                conn.send(("ready", _rss_mb()))
            elif cmd[0] == "go" and current is not None:
                for _ in range(cmd[1]):
                    current.process(data, options)
                conn.send(("done", _rss_mb()))
            else:
                return
    except (EOFError, OSError):
        return
    except Exception as e:
        conn.send(("error", _one_line(e)))


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def mem_available_mb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("inf")


def calibrate(model: str, cores: int, threads: int = 0, providers: list[str] | None = None,
              timeout: float = 180.0) -> Choice:
    """Try each split of `cores` on `model`; the fastest wins. Never raises: a trial that
    cannot run (no model, no memory, too slow) gives cores x 1 with the reason."""
    options = candidates(cores, threads)
    if len(options) == 1 and threads:
        s, t = options[0]
        return Choice(s, t, f"--threads {t} given: {s} slots fill {cores} cores")
    procs: list[Any] = []
    try:
        conns = _start(max(s for s, _ in options), model, providers, procs)
        rates, rss = _trials(conns, options, cores, time.monotonic() + timeout)
    except Exception as e:
        return Choice(cores, 1, f"calibration failed ({_one_line(e)}): {cores} slots x 1 thread")
    finally:
        _stop(procs)
    best = max(rates.values())
    slots, t = pick = next((s, t) for s, t in options if rates[f"{s}x{t}"] >= best * (1 - TIE))
    measured = ", ".join(f"{k} {v:.2f}/s" for k, v in rates.items()) + f" on {model}"
    cap = int(mem_available_mb() * 0.8 // rss) if rss else slots
    if cap < slots:
        slots = max(1, cap)
        return Choice(slots, t, f"{measured}; {pick[0]}x{t} capped to {slots} slots by memory "
                                f"({rss:.0f} MiB a slot)", rates, rss)
    return Choice(slots, t, f"{measured}: {slots} slots x {t} thread{'s' if t > 1 else ''}", rates, rss)


def _start(n: int, model: str, providers: list[str] | None, procs: list[Any]) -> list[Any]:
    conns = []
    for _ in range(n):
        parent, child = _CTX.Pipe()
        p = _CTX.Process(target=_trial_main, args=(child, model, providers), daemon=True, name="cutq-autotune")
        p.start()
        child.close()
        procs.append((p, parent))
        conns.append(parent)
    return conns


def _stop(procs: list[Any]) -> None:
    for _, conn in procs:
        try:
            conn.send(("stop",))
        except OSError:
            pass
    for p, conn in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)
        conn.close()


def _trials(conns: list[Any], options: list[tuple[int, int]], cores: int,
            deadline: float) -> tuple[dict[str, float], float]:
    """Images/s of each (slots, threads), and the RSS of a warm trial process (MiB)."""
    rates: dict[str, float] = {}
    rss = 0.0
    for s, t in options:
        for c in conns[:s]:
            c.send(("load", t))
        loaded = [_reply(c, deadline)[1] for c in conns[:s]]
        per = max(1, cores // s)
        start = time.perf_counter()
        for c in conns[:s]:
            c.send(("go", per))
        done = [_reply(c, deadline)[1] for c in conns[:s]]
        rates[f"{s}x{t}"] = s * per / (time.perf_counter() - start)
        if not rss:  # the first trial: one session per process, as in a slot
            rss = max(loaded + done)
    return rates, rss


def _reply(conn: Any, deadline: float) -> tuple:
    left = deadline - time.monotonic()
    if left <= 0 or not conn.poll(left):
        raise TimeoutError("calibration took too long")
    reply = conn.recv()
    if reply[0] == "error":
        raise RuntimeError(reply[1])
    return reply


def _one_line(e: BaseException) -> str:
    return (" ".join(str(e).split()) or e.__class__.__name__)[:200]
