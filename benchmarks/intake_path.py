"""Instructions per invoice of the intake path, from the input's bytes to a Record handed on.

``benchmarks.instructions`` counts a whole run, whose clock-driven part (checkpoints, timeline
rows) moves with the machine's load; this counts only what ``Run._produce`` does per line,
deterministically: :meth:`bulk.source.InputFile.batches` over a real file, the watermark
(:class:`bulk.watermark.Tracker` add and finish), :meth:`bulk._intake.Intake.screen` (the parse
and validation, the id's dedupe in memory: :func:`bulk._intake.memory_dedupe`, the Agiled
target's offline check) and the hand-off (:class:`bulk.feed.Feed`) to one consumer that
finishes each record. Also ``fingerprint`` and ``estimate_records`` of the input, as a run
calls them once at its start (for a small input they are per byte).

The input is ``bulk generate N`` (seed 0, cached in benchmarks/data), as the instructions
benchmark uploads it. Under callgrind, two sizes, the marginal count (start-up excluded)::

    .venv/bin/python -m benchmarks.intake_path --small 2000 --large 10000
    .venv/bin/python -m benchmarks.intake_path --small 200 --large 1000   # the instructions benchmark's

Nothing here sleeps or reads a clock, so before/after counts of a change compare on a busy
machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from benchmarks import _callgrind

ROOT = Path(__file__).resolve().parent.parent


def run(source: Path) -> None:
    """Take every line of ``source`` through the producer's path and one consumer."""
    import anyio

    from bulk._intake import Intake, memory_dedupe
    from bulk.errors import InvalidRecord
    from bulk.feed import Feed
    from bulk.source import InputFile, estimate_records, fingerprint
    from bulk.targets.agiled import AgiledTarget
    from bulk.watermark import Tracker

    fingerprint(str(source))
    estimate_records(str(source))
    target = AgiledTarget(base_url="http://mock.invalid", credentials={"AGILED_API_TOKEN": "bench-token-1"},
                          options={})

    async def main() -> None:
        intake = Intake(max_line_bytes=1 << 20, first_line=memory_dedupe(), target=target)
        screen = intake.screen
        tracker = Tracker(0, 1)
        add, finish = tracker.add, tracker.finish
        feed: Feed = Feed(64)  # type: ignore[type-arg]
        input_file = InputFile(str(source))

        async def produce() -> None:
            try:
                async for batch in input_file.batches(max_line_bytes=1 << 20):
                    for raw in batch:
                        entry = add(raw)
                        try:
                            record = screen(raw)
                        except InvalidRecord:
                            finish(entry)
                            continue
                        if record is None:
                            finish(entry)
                            continue
                        await feed.put((entry, record, raw.data))
            finally:
                feed.close()

        async def consume() -> None:
            while True:
                try:
                    entry, _record, _data = await feed.get()
                except anyio.EndOfStream:
                    return
                finish(entry)

        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            tg.start_soon(consume)
        input_file.close()

    anyio.run(main, backend_options={"use_uvloop": True})


def count(source: Path, keep: Path | None) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = (keep / f"callgrind.intake.{source.stem}") if keep else Path(tmp) / "cg.out"
        return _callgrind.total("benchmarks.intake_path", ["--child", str(source)], out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", type=int, default=2000)
    p.add_argument("--large", type=int, default=10000)
    p.add_argument("--keep", type=Path, help="keep the callgrind files in this directory")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        run(args.child)
        return 0
    # str hashes are salted per process: the dicts' and sets' layouts, and so the counts, moved by
    # ~1,500 instructions an invoice from run to run; a fixed seed makes a count repeat within ~10.
    os.environ["PYTHONHASHSEED"] = "0"
    from benchmarks.run import make_input

    data = ROOT / "benchmarks" / "data"
    data.mkdir(exist_ok=True)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    small = count(make_input(data, args.small), args.keep)
    large = count(make_input(data, args.large), args.keep)
    print(f"intake path: {small:,} Ir for {args.small}, {large:,} Ir for {args.large}: "
          f"{(large - small) / (args.large - args.small):,.0f} instructions per invoice (marginal)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
