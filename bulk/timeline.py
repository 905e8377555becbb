"""``RUN_DIR/timeline.csv``: the run second by second (issue 15).

Header, then one row per wall-clock second::

    time,elapsed_s,requests_started,requests_finished,invoices_created,throttled,errors,p50_ms,p99_ms

A row is the difference of the job's cumulative counters between two rows (so nothing is
counted twice or lost between rows), plus the p50/p99 of the requests that finished in it
(empty when none did). Each row is one ``write`` of a whole line to a file opened unbuffered:
a ``kill -9`` leaves only whole rows.

Sums equal the summary: the checkpoint keeps the file's size and the counters at its last
row (:meth:`Timeline.state`); a resumed run cuts the file back to that size (the killed run's
later rows counted requests the checkpoint does not) and continues from those counters, so
its first row also holds what the killed run did between its last row and the checkpoint.
That first row's p50/p99 are of the requests this run finished in it: the killed run's share
is in the job's histogram (latency.hdr.json), so a first row holding only that share has
counts but empty percentiles.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from .errors import OutputError
from .latency import stats_ms

__all__ = ["HEADER", "Timeline"]

HEADER = b"time,elapsed_s,requests_started,requests_finished,invoices_created,throttled,errors,p50_ms,p99_ms\n"


class Timeline:
    """The appender of timeline.csv. ``state`` is what an earlier checkpoint kept (or None)."""

    def __init__(self, run_dir: Path, state: dict[str, Any] | None, counters: list[int]) -> None:
        self.path = run_dir / "timeline.csv"
        self._t0 = time.monotonic()
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
            size = os.lseek(self._fd, 0, os.SEEK_END)
            keep = int(state["size"]) if state else 0
            if size > keep:  # (never extended: a file shorter than its checkpoint stays as it is)
                os.ftruncate(self._fd, keep)  # rows the checkpoint does not cover
                size = os.lseek(self._fd, keep, os.SEEK_SET)
            if size == 0:
                os.write(self._fd, HEADER)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        # the job's counters at the last row: an earlier run's checkpoint, or where this run starts
        self._last = [int(v) for v in state["last"]] if state else list(counters)

    def row(self, counters: list[int], interval: HdrHistogram, second: int | None = None) -> None:
        """Write the row of the second now ending: ``counters`` are the job's cumulative
        [requests_started, requests_finished, invoices_created, throttled, errors];
        ``interval`` the histogram of the requests finished since the last row; ``second``
        the row's time (Unix seconds; default: now)."""
        # strict=False: _last comes from a checkpoint, which an older run may have written
        delta = [now - before for now, before in zip(counters, self._last, strict=False)]
        if interval.get_total_count():
            st = stats_ms(interval)
            p50, p99 = f"{st['p50']:.3f}", f"{st['p99']:.3f}"
        else:
            p50 = p99 = ""
        when = dt.datetime.fromtimestamp(time.time() if second is None else second, dt.UTC)
        stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        line = f"{stamp},{int(time.monotonic() - self._t0)},{','.join(map(str, delta))},{p50},{p99}\n"
        try:
            os.write(self._fd, line.encode())  # one write of a whole line: a kill never tears it
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self._last = list(counters)

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the file's size and the counters at its last row."""
        return {"size": os.lseek(self._fd, 0, os.SEEK_CUR), "last": list(self._last)}

    def sync(self) -> None:
        with contextlib.suppress(OSError):
            os.fsync(self._fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
