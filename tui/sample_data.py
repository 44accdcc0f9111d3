"""A plausible, deterministic sample of a running system (jobs, tasks, workers, stats) and
synthetic photos, for the in-memory source (`tui.memory`): snapshot tests, `python -m tui
--demo` and the frame-time benchmark."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

from shared.states import ACTIVE, TASK_STATES, TERMINAL, TaskState, job_state
from tui.fmt import FINISHED_FIRST

MODELS = ("u2netp", "u2net", "isnet-general-use", "birefnet-general-lite")
NAMES = ("IMG_", "DSC_", "product-", "portrait-", "PXL_2024")


@dataclass
class Dataset:
    """Everything the source serves; `jobs` newest first."""

    jobs: list[dict]
    workers: list[dict]
    stats: dict
    tasks: dict[str, list[dict]] = field(default_factory=dict)


def _hex(rng: random.Random, n: int = 12) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def make_job(rng: random.Random, created: float, state_mix: str, total: int) -> dict:
    """One job row with counts consistent with `state_mix` (queued/running/done/failed/cancelled)."""
    counts = dict.fromkeys(TASK_STATES, 0)
    if state_mix == TaskState.QUEUED:
        counts["queued"] = total
    elif state_mix == TaskState.RUNNING:
        done = rng.randint(0, total - 1)
        running = min(total - done, rng.randint(1, 4))
        failed = min(total - done - running, rng.choice((0, 0, 1)))
        counts.update(done=done, running=running, failed=failed, queued=total - done - running - failed)
    elif state_mix == TaskState.FAILED:
        failed = rng.randint(1, max(1, total // 4))
        counts.update(failed=failed, done=total - failed)
    elif state_mix == TaskState.CANCELLED:
        done = rng.randint(0, total - 1)
        counts.update(done=done, cancelled=total - done)
    else:
        counts["done"] = total
    processor = rng.choice(("rembg", "rembg", "rembg", "noop"))
    finished = None if state_mix in ACTIVE else created + rng.uniform(1, 30) * total ** 0.5
    return {
        "job_id": _hex(rng), "created": created, "processor": processor,
        "model": rng.choice(MODELS) if processor == "rembg" else None, "tenant": rng.choice(("default", "web")),
        "priority": rng.choice((0, 0, 0, 5)), "state": job_state(counts), "total": total, **counts,
        "finished": finished, "errors": counts["failed"], "options": {"format": "png"},
    }


def make_tasks(job: dict, rng: random.Random, workers: list[str], first_id: int | None = None) -> list[dict]:
    """Task rows matching a job's counts, in submission order (ids from `first_id`, else from the
    job id: task ids are unique across jobs, as the broker's are)."""
    if first_id is None:
        first_id = (int(job["job_id"][:8], 16) + 1) * 1000
    states: list[str] = []
    for s in FINISHED_FIRST:
        states += [s] * int(job.get(s) or 0)
    tasks = []
    t0 = job["created"]
    for i, state in enumerate(states):
        started = None if state == TaskState.QUEUED or (state == TaskState.CANCELLED and i % 2) else t0 + 0.5 + i * 0.7
        finished = started + rng.uniform(0.3, 2.5) if started and state in TERMINAL else None
        error = None
        if state == TaskState.FAILED:
            error = rng.choice((
                "cannot identify image file: not a PNG, JPEG or WebP (gave up after 1 attempts)",
                "worker w-2 lost: no heartbeat for 3.1s (attempt 3 of 3, gave up)",
                "image is 12000x9000 pixels, over the 64000000 pixel limit",
            ))
        tasks.append({
            "task_id": first_id + i, "job_id": job["job_id"], "name": f"{rng.choice(NAMES)}{4000 + i}.jpg",
            "state": state, "attempts": (0 if state == TaskState.QUEUED else 1) + (state == TaskState.FAILED),
            "worker": rng.choice(workers) if started else None, "error": error, "created": t0,
            "started": started, "finished": finished, "result_ext": "png" if state == TaskState.DONE else None,
            "input_size": rng.randint(180_000, 6_000_000),
        })
    return tasks


def sample_dataset(now: float, jobs: int = 40, seed: int = 7) -> Dataset:
    """A plausible, deterministic system: a few active jobs on top, history below."""
    rng = random.Random(seed)
    workers = [
        {"id": "w-1", "name": "gpu-box-1", "host": "gpu-box", "pid": 4121, "slots": 4, "busy": 4,
         "models": ["u2netp", "isnet-general-use"], "providers": ["CUDAExecutionProvider"],
         "processors": ["rembg", "noop", "sleep"], "tasks": [1201, 1202, 1203, 1204], "last_seen_age": 0.4,
         "done": 18_204, "failed": 12, "state": "alive", "joined": now - 86_000, "tasks_per_s": 9.6},
        {"id": "w-2", "name": "cpu-worker-2", "host": "render-02", "pid": 90311, "slots": 2, "busy": 1,
         "models": ["u2netp"], "providers": ["CPUExecutionProvider"], "processors": ["rembg", "noop", "sleep"],
         "tasks": [1205], "last_seen_age": 1.1, "done": 3_911, "failed": 4, "state": "alive",
         "joined": now - 7_200, "tasks_per_s": 1.8},
        {"id": "w-3", "name": "laptop-3", "host": "mbp", "pid": 777, "slots": 1, "busy": 0, "models": [],
         "providers": [], "processors": ["rembg"], "tasks": [], "last_seen_age": 48.0, "done": 96, "failed": 1,
         "state": "dead", "joined": now - 3_000, "tasks_per_s": 0.0},
    ]
    rows: list[dict] = []
    t = now - 20
    head = [TaskState.RUNNING, TaskState.RUNNING, TaskState.QUEUED, TaskState.FAILED, TaskState.DONE,
            TaskState.CANCELLED]
    older = (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED)  # the history below the head
    for i in range(jobs):
        mix = head[i] if i < len(head) else rng.choices(older, (90, 7, 3))[0]
        total = 240 if i == 0 else rng.choice((1, 1, 4, 12, 40, 120))
        rows.append(make_job(rng, t, mix, total))
        t -= rng.uniform(5, 400)
    totals = {s: sum(int(j[s]) for j in rows) for s in TASK_STATES}
    history = [round(8 + 5 * ((k * 7919) % 13) / 13 + (3 if 40 < k < 70 else 0), 1) for k in range(120)]
    stats = {
        **totals, "jobs": len(rows), "queue_depth": totals["queued"], "tasks_per_s": history[-1],
        "images_per_s": round(history[-1] * 0.9, 1), "history": history, "workers_busy": 2, "workers_total": 2,
        "slots_used": 5, "slots_total": 6, "paused": False,
        "eta_s": totals["queued"] / history[-1] if history[-1] else None,
    }
    data = Dataset(jobs=rows, workers=workers, stats=stats)
    names = [w["id"] for w in workers[:2]]
    first = 1000
    for job in rows[:6]:
        data.tasks[job["job_id"]] = make_tasks(job, random.Random(job["job_id"]), names, first)
        first += job["total"]
    # the workers hold exactly the running tasks (the overview, the workers and the jobs agree)
    running = [t for tasks in data.tasks.values() for t in tasks if t["state"] == TaskState.RUNNING]
    for w in workers[:2]:
        w["tasks"] = []
    for i, t in enumerate(running):
        w = workers[0] if i % 3 != 2 else workers[1]
        t["worker"] = w["id"]
        t["started"] = now - 2.5 - 1.5 * i  # running for a few seconds, never since the future
        w["tasks"].append(t["task_id"])
    for w in workers:
        w["busy"] = len(w["tasks"])
    stats.update(slots_used=len(running), workers_busy=sum(1 for w in workers if w["busy"]))
    return data


def sample_image(seed: int, cutout: bool, size: tuple[int, int] = (160, 120)) -> bytes:
    """A small synthetic 'photo' (a subject on a background) or its cut-out, as PNG bytes."""
    rng = random.Random(seed)
    w, h = size
    hue = rng.randint(0, 255)
    if cutout:
        img = Image.new("RGBA", size, (0, 0, 0, 0))
    else:
        img = Image.new("RGBA", size)
        top, bottom = (40 + hue % 60, 90, 140), (200, 180 - hue % 80, 120)
        for y in range(h):  # a sky-to-ground gradient
            f = y / max(1, h - 1)
            colour = tuple(int(a + (b - a) * f) for a, b in zip(top, bottom, strict=True)) + (255,)
            img.paste(colour, (0, y, w, y + 1))
    draw = ImageDraw.Draw(img)
    cx, cy = w // 2 + rng.randint(-10, 10), h // 2 + 8
    draw.ellipse((cx - 28, cy - 40, cx + 28, cy + 4), fill=(230, 190, 150, 255))  # head
    draw.rounded_rectangle((cx - 46, cy, cx + 46, h + 20), radius=20, fill=(60 + hue % 150, 70, 160, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
