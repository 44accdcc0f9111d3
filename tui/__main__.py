"""`python -m tui [--connect ENDPOINT] [--demo]`: the dashboard without the cutq CLI."""

from __future__ import annotations

import argparse
import threading

from tui.app import CutqApp, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tui", description="The cutq terminal dashboard.")
    parser.add_argument("--connect", help="broker endpoint (default: $CUTQ_CONNECT or tcp://127.0.0.1:5555)")
    parser.add_argument("--demo", action="store_true", help="show built-in sample data instead of a broker")
    args = parser.parse_args(argv)
    if not args.demo:
        run(args.connect)
        return 0
    import time

    from tui.memory import MemorySource, memory_feed, simulate
    from tui.sample_data import sample_dataset
    from tui.widgets.preview import detect_graphics

    detect_graphics()
    source = MemorySource(sample_dataset(time.time(), jobs=2_000))
    stop = threading.Event()
    threading.Thread(target=simulate, args=(source, 40.0, stop), daemon=True).start()
    try:
        CutqApp(memory_feed(source)).run()
    finally:
        stop.set()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
