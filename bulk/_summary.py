"""The job's ``summary.json``: one builder for a run (:meth:`bulk._jobstate.JobState.summary`) and a merge
of shards (:func:`bulk.merge.merge_runs`), so both documents have the same keys, meanings and
rounding.

The caller hands over what it knows (the tally, the request counters, elapsed time, the
created references...); :func:`build` lays them out. Measurements (``latency_ms``,
``status_codes``, ``late_starts``, ``arrival_rate``, ``thresholds``) are the caller's to add
after it: a run adds them with :meth:`bulk.measure.Measure.add_to` (thresholds are judged on the
finished summary), a merge with :func:`add_latency` from the shards' histograms added.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .latency import Latency
from .tally import Tally

__all__ = ["add_latency", "build", "rate", "this_run"]


def rate(count: int, elapsed: float) -> float:
    """Invoices per second, as every summary rounds them."""
    return round(count / elapsed, 2) if elapsed > 0 else 0.0


def this_run(created: int, elapsed: float) -> dict[str, Any]:
    """The ``this_run`` section: what this invocation made, in its own time."""
    return {"created": created, "elapsed_seconds": round(elapsed, 3), "invoices_per_second": rate(created, elapsed)}


def build(*, started_at: str | None, ended_at: str | None, target: str | None, input: str | None,
          where: Mapping[str, Any], complete: bool, processes: int | None, tally: Tally, already_done: int,
          created_refs: Mapping[str, int], reconciled: Mapping[str, Any] | None, traffic: Mapping[str, int],
          elapsed: float, this_run: Mapping[str, Any] | None) -> dict[str, Any]:
    """The summary document, in its key order.

    ``where``: what the summary is of, after ``input`` (a run: ``shard``; a merge:
    ``input_fingerprint`` and ``shards``); ``processes`` and ``this_run``: left out when None
    (``bulk merge`` of shards run elsewhere knows neither); ``reconciled``: left out when None
    (the target's end-of-run check did not run).
    """
    t = tally
    summary: dict[str, Any] = {
        "version": _version(),
        "started_at": started_at,  # when the job's first run started (UTC)
        "ended_at": ended_at,  # when this run ended (UTC); null while it runs
        "target": target,
        "input": input,
        **where,
        "complete": complete,
    }
    if processes is not None:
        summary["processes"] = processes  # --processes N runs N shard runs (bulk.procs)
    summary.update({
        "records": {
            "read": t.read, "created": t.created, "existing": t.existing,
            "updated": t.updated, "unchanged": t.unchanged,
            "already_done": already_done, "rejected": t.rejected,
            "failed": t.failed, "uncertain": t.uncertain,
        },
        "totals": t.totals.to_json(),
        "created_refs": dict(created_refs),
        "mismatches": {"count": t.mismatch_count, "first": t.mismatches},
    })
    if reconciled is not None:
        summary["reconciled"] = reconciled
    summary.update(traffic)
    summary["elapsed_seconds"] = round(elapsed, 3)
    summary["invoices_per_second"] = rate(t.created, elapsed)
    if this_run is not None:
        summary["this_run"] = this_run
    return summary


def add_latency(summary: dict[str, Any], latency: Latency, late_starts: int, arrival_rate: float | None) -> None:
    """The measurements of requests merged from shards (a run's own: ``Measure.add_to``)."""
    summary["latency_ms"] = latency.latency_ms()
    summary["status_codes"] = latency.status_codes()
    summary["late_starts"] = late_starts
    summary["arrival_rate"] = arrival_rate


def _version() -> str:
    from . import __version__  # bulk/__init__ imports the engine, which imports this module

    return __version__
