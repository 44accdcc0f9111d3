"""What the job screen's summary panel shows: state, progress and counts on one line;
the processor and its options, timings, tenant and priority on the next."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from shared.options import REMBG_DEFAULTS
from shared.states import TaskState
from tui import fmt
from tui.widgets.jobs_table import model_label


def options_text(job: dict) -> str:
    """'u2netp · png · alpha matting (fg 240 bg 10 erode 10) · bg #ffffff' from a job's options;
    rembg settings left at their defaults are not repeated."""
    opts = job.get("options") or {}
    parts = [model_label(job)]
    if job.get("processor", "rembg") == "rembg":
        parts.append(str(opts.get("format") or "png"))
        if opts.get("alpha_matting"):
            tuned = [(label, opts.get(key)) for key, label in (
                ("alpha_matting_foreground_threshold", "fg"), ("alpha_matting_background_threshold", "bg"),
                ("alpha_matting_erode_size", "erode")) if opts.get(key) not in (None, REMBG_DEFAULTS[key])]
            parts.append("alpha matting" + (f" ({' '.join(f'{k} {v}' for k, v in tuned)})" if tuned else ""))
        for key, label in (("only_mask", "mask only"), ("post_process_mask", "post-process")):
            if opts.get(key):
                parts.append(label)
        if opts.get("bgcolor"):
            rgba = [int(c) for c in opts["bgcolor"]]
            parts.append("bg #" + "".join(f"{c:02x}" for c in (rgba[:3] if rgba[3:] in ([], [255]) else rgba)))
    known = set(REMBG_DEFAULTS) if job.get("processor", "rembg") == "rembg" else {"model", "format"}
    parts += [f"{k}={v}" for k, v in opts.items() if k not in known]
    return " · ".join(parts)


def summary(job: dict, now: float, wide: bool) -> Table:
    """Two lines: state, progress and counts; then processor/options and timings."""
    grid = Table.grid(padding=(0, 2), expand=True)
    grid.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
    counts = Text()
    for state in fmt.FINISHED_FIRST:
        n = int(job.get(state) or 0)
        label = f" {state}" if wide else ""
        counts.append(f"{fmt.STATE_ICON[state]} {n}{label}  ", style=fmt.STATE_STYLE[state] if n else "dim")
    line1 = Text.assemble(fmt.state_text(job.get("state") or TaskState.QUEUED), "  ",
                          fmt.progress_bar(job, 40 if wide else 14, marks=False),
                          (f"  {fmt.percent(job)}% done  ", "bold"), counts)
    line2 = Text.assemble((options_text(job), "#7dcfff"), ("  submitted ", "dim"),
                          fmt.clock(job.get("created"), now))
    if job.get("finished"):
        line2.append_text(Text.assemble(("  finished ", "dim"), fmt.clock(job.get("finished"), now)))
    line2.append_text(Text.assemble(("  took " if job.get("finished") else "  running for ", "dim"),
                                    fmt.duration(fmt.job_duration(job, now))))
    if wide:
        line2.append_text(Text.assemble(("  tenant ", "dim"), str(job.get("tenant") or "default"),
                                        ("  priority ", "dim"), str(job.get("priority") or 0)))
    grid.add_row(line1)
    grid.add_row(line2)
    return grid
