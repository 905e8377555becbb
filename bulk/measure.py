"""What a run measures, in one place the engine hooks into (issue 15: benchmark runs).

:class:`Measure` owns the run's :class:`~bulk.latency.Latency` (the session records into it;
upload processes' deltas are added to it), the timeline (``timeline.csv``), the open-loop
schedule (``--arrival-rate``), the ``/metrics`` endpoint and the thresholds. The engine
calls it at a few points: restore (from a checkpoint), snapshot (into a checkpoint), persist
(at a checkpoint: ``latency.hdr.json``), tick (a task: one timeline row a second), the
summary, and close.

Everything measured is per *job*, like the summary's counts: a resumed run starts from what
its checkpoint kept (histograms, status counts, late starts, the timeline's position).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson

from .arrivals import Arrivals
from .latency import Latency
from .outputs import write_atomic
from .thresholds import Threshold, evaluate
from .timeline import Timeline

__all__ = ["LATENCY_REFRESH_S", "Measure", "measured_lines"]

#: A mid-run summary's latency percentiles are recomputed at most this often (seconds).
LATENCY_REFRESH_S = 10.0


class Measure:
    def __init__(self, *, arrival_rate: float | None = None, thresholds: tuple[Threshold, ...] = (),
                 metrics: Any = None) -> None:
        self.latency = Latency()
        self.arrivals = Arrivals(arrival_rate) if arrival_rate else None
        self.arrival_rate = arrival_rate
        self.thresholds = thresholds
        self.metrics = metrics  # a bulk.prom.MetricsServer, or None
        self._late0 = 0
        self._timeline_state: dict[str, Any] | None = None
        self.timeline: Timeline | None = None
        self._latency_ms: tuple[float, dict[str, Any]] | None = None  # (when, latency_ms) of a mid-run summary

    # --- the checkpoint --------------------------------------------------------------------------
    def restore(self, cp: dict[str, Any]) -> None:
        """An earlier run's measurements (absent from checkpoints older than issue 15)."""
        if isinstance(cp.get("latency"), dict):
            self.latency.add_json(cp["latency"])
        self._late0 = int(cp.get("late_starts") or 0)
        self._timeline_state = cp.get("timeline")

    def snapshot(self) -> dict[str, Any]:
        """The checkpoint's part: taken in the same synchronous step as its counters, so the
        histograms and the timeline agree with them."""
        return {"latency": self.latency.to_json(), "late_starts": self.late_starts,
                "timeline": self.timeline.state() if self.timeline else self._timeline_state}

    def persisted(self, snapshot: dict[str, Any]) -> bytes:
        """``latency.hdr.json``'s bytes from the checkpoint's ``snapshot`` (on the loop, with it)."""
        return orjson.dumps({k: v for k, v in snapshot["latency"].items() if not k.startswith("_")}) + b"\n"

    def persist(self, run_dir: Path, latency: bytes) -> None:
        """``latency.hdr.json`` written (atomically) from :meth:`persisted`; the timeline synced.
        Reads nothing live: a checkpoint calls it in a worker thread."""
        write_atomic(run_dir / "latency.hdr.json", latency)
        if self.timeline is not None:
            self.timeline.sync()

    @property
    def late_starts(self) -> int:
        return self._late0 + (self.arrivals.late if self.arrivals else 0)

    # --- the timeline ------------------------------------------------------------------------------
    def open_timeline(self, run_dir: Path, counters: list[int]) -> None:
        self.timeline = Timeline(run_dir, self._timeline_state, counters)

    async def tick(self, counters: Callable[[], list[int]], metrics: Callable[[], list[Any]]) -> None:
        """Once a wall-clock second: a timeline row, and fresh /metrics."""
        boundary = math.floor(time.time()) + 1
        while True:
            await anyio.sleep(max(0.0, boundary - time.time()) + 0.001)
            self.row(counters(), boundary - 1)  # the second that just ended
            boundary = max(boundary + 1, math.floor(time.time()) + 1)
            if self.metrics is not None:
                self.metrics.publish(metrics())

    def row(self, counters: list[int], second: int | None = None) -> None:
        if self.timeline is not None:
            self.timeline.row(counters, self.latency.take_interval(), second)

    # --- the summary ---------------------------------------------------------------------------
    def add_to(self, summary: dict[str, Any]) -> None:
        """``latency_ms``, ``status_codes``, ``late_starts``, ``arrival_rate`` and ``thresholds``.

        The percentiles of a *mid-run* summary (``summary["ended_at"]`` null: a checkpoint's
        summary.json, rewritten every second) are at most :data:`LATENCY_REFRESH_S` old:
        computing them reads every histogram (~16M instructions for four of 5,000 requests),
        which a checkpoint a second made a large share of a run's CPU. A summary of an ended
        run (the final checkpoint's, the one returned, a stop's) is always computed fresh. A mid-run
        summary's ``thresholds`` are judged on those same percentiles; the exit code, on the final."""
        summary["latency_ms"] = self._latency_now(final=summary.get("ended_at") is not None)
        summary["status_codes"] = self.latency.status_codes()
        summary["late_starts"] = self.late_starts
        summary["arrival_rate"] = self.arrival_rate
        if self.thresholds:
            summary["thresholds"] = evaluate(self.thresholds, summary, sorted(self.latency.kinds))

    def _latency_now(self, *, final: bool) -> dict[str, Any]:
        now = time.monotonic()
        if final or self._latency_ms is None or now - self._latency_ms[0] >= LATENCY_REFRESH_S:
            self._latency_ms = (now, self.latency.latency_ms())
        return self._latency_ms[1]

    def close(self) -> None:
        if self.timeline is not None:
            self.timeline.close()


def measured_lines(summary: dict[str, Any]) -> list[str]:
    """The human summary's lines about latency, statuses, late starts and thresholds."""
    lines = []
    latency = summary.get("latency_ms") or {}
    parts = [f"{kind} p50 {latency[kind]['p50']:g} ms, p99 {latency[kind]['p99']:g} ms"
             for kind in ("write", "read") if (latency.get(kind) or {}).get("count")]
    codes = summary.get("status_codes") or {}
    status = ["{} {}".format(kind, " ".join(f"{code}x{n}" for code, n in codes[kind].items()))
              for kind in ("write", "read") if codes.get(kind)]
    if parts or status:
        lines.append("latency: " + "; ".join(parts) + (f"; status: {'; '.join(status)}" if status else ""))
    if summary.get("arrival_rate"):
        lines.append(f"open loop at {summary['arrival_rate']:g} records/s: {summary.get('late_starts', 0)} late starts")
    for t in summary.get("thresholds") or ():
        lines.append(f"threshold {t['expr']}: {'met' if t['met'] else 'NOT MET'} ({t['value']})")
    return lines
