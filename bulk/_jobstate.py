"""The job's state across runs: what a checkpoint stores, a resumed run restores, the summary reports.

:class:`JobState` holds the part of one run that belongs to the job: the tally, the watermark
(:class:`bulk.watermark.Tracker`), the lines an earlier run finished beyond it, the step state
it left for records in flight, the write-ahead reservation, and the request counters and
elapsed time carried over from the earlier runs. It is built from the run directory
:func:`bulk._rundir.open_job` opened (restored from its :class:`bulk.checkpoint.Checkpoint`, if
any); :meth:`JobState.checkpoint` makes everything finished so far durable, and
:meth:`JobState.summary` lays out ``summary.json`` (:func:`bulk._summary.build`).

The contract a checkpoint keeps (see :mod:`bulk.pipeline`): the outputs are flushed, the state
snapshotted and committed with no await between flush and snapshot, so no checkpoint sees an
outcome in the outputs without it in the tally and the watermark, or the other way round. The
durable part (fsyncs, the state.db commit, the summary) runs in a worker thread from what that
synchronous step took, so the loop goes on meanwhile: appends beyond the flushed sizes are the
next checkpoint's (a resume cuts the outputs back to the sizes a commit recorded).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio

from . import _summary
from ._rundir import SHARD_BY, SHARD_BY_LINE_REPORTS, OpenJob, places_rejects
from .checkpoint import Checkpoint, Commit
from .config import UploadConfig
from .job import RecordJob, Session
from .measure import Measure
from .refs import FILE as REFS_FILE
from .tally import Tally
from .watermark import Tracker

__all__ = ["JobState"]


class JobState:
    """The job's state in one run. ``inflight`` (line -> job) is the workers' map of records
    in flight, whose step state a checkpoint stores; ``t0`` and ``started_at`` are when this run
    started (a resumed run keeps the first run's ``started_at``); ``session`` is set once open."""

    def __init__(self, config: UploadConfig, measure: Measure, job: OpenJob, inflight: dict[int, RecordJob], *,
                 t0: float, started_at: str) -> None:
        self.config = config
        self.measure = measure
        self.out = Path(config.out)
        self.opened = job  # the run directory's state.db and outputs: the Run closes them
        self.inflight = inflight
        self.tally = Tally()
        self.done_beyond: set[int] = set()  # lines an earlier run finished that the producer has not re-read
        self.resume_progress: dict[int, dict[str, Any]] = {}  # line -> step state an earlier run left
        self.prev_reserved = 0  # lines up to it may have been sent by an earlier run
        self.reserved = 0  # write ahead: lines up to it may have been sent (never marks anything finished)
        self._traffic0 = {"requests": 0, "retries": 0, "throttled": 0}
        self._elapsed0 = 0.0
        self.already_done = 0
        self.complete = False
        self.t0 = t0
        self.t_end: float | None = None  # when this run ended: the summary written then and the one returned agree
        self.started_at = started_at
        self.ended_at: str | None = None
        self.session: Session | None = None
        self.reconciled: dict[str, Any] | None = None  # what target.finish reported
        self._one_at_a_time = anyio.Lock()  # checkpoints, in order (anyio's Lock is first come, first served)
        offset, line = self._restore(job.checkpoint) if job.checkpoint else (0, 1)
        self.created0 = self.tally.created
        self.tracker = Tracker(offset, line)

    def _restore(self, cp: Checkpoint) -> tuple[int, int]:
        self.tally = Tally.from_json(cp.tally)
        self.already_done = self.tally.read
        self.done_beyond = set(cp.done_beyond)
        self.resume_progress = {int(k): v for k, v in cp.progress.items()}
        self.prev_reserved = self.reserved = cp.reserved
        self._traffic0 = dict(cp.traffic)
        self._elapsed0 = cp.elapsed
        self.started_at = cp.started_at or self.started_at
        self.measure.restore(cp.measured())
        return cp.offset, cp.line

    # --- the checkpoint ---------------------------------------------------------------------
    def _snapshot(self, sizes: dict[str, int]) -> Checkpoint:
        return Checkpoint(
            target=self.config.target, input=self.opened.fingerprint,
            shard=str(self.config.shard) if self.config.shard else None,
            shard_by=(SHARD_BY if places_rejects(self.opened) else SHARD_BY_LINE_REPORTS)
            if self.config.shard else None,
            offset=self.tracker.offset, line=self.tracker.line,
            # The earlier runs' finished lines this run's producer has not re-read yet are
            # still finished: forgetting them would have the next run redo, and record
            # again, what the outputs already hold (issue 10).
            done_beyond=sorted({*self.tracker.done_beyond(), *self.done_beyond}),
            progress={str(k): j.progress for k, j in self.inflight.items() if j.progress},
            reserved=self.reserved, tally=self.tally.to_json(), traffic=self.traffic(), elapsed=self.elapsed(),
            outputs=sizes, complete=self.complete, started_at=self.started_at, **self.measure.snapshot())

    async def checkpoint(self) -> None:
        """Make everything finished so far durable, in this order: outputs, then state; then
        ``latency.hdr.json`` and ``summary.json``.

        On the loop, with no await between: the outputs flushed, the state snapshotted (and
        serialized, with the summary and the histograms), the state.db rows taken. Then, in a
        worker thread while the loop goes on: the outputs' and refs' fsyncs, the commit, the
        histograms and the summary written. One checkpoint at a time, in the order they were
        called (a later snapshot never commits before an earlier one). The thread's wait is
        not cancellable (anyio's default): once taken, a checkpoint is written or raises
        (OutputError, as before); a caller cancelled meanwhile sees it after."""
        async with self._one_at_a_time:
            job = self.opened
            sizes = job.outputs.flush()
            sizes[REFS_FILE] = job.refs.flush()
            snapshot = self._snapshot(sizes).to_json()  # no await between flush and snapshot: they agree
            summary = job.outputs.summary_bytes(self.summary())
            latency = self.measure.persisted(snapshot)
            commit = job.state.take(snapshot)
            try:
                await anyio.to_thread.run_sync(self._write, commit, latency, summary)
            except BaseException:
                job.state.settle(commit, ok=False)
                raise
            job.state.settle(commit, ok=True)

    def _write(self, commit: Commit, latency: bytes, summary: bytes) -> None:
        """A checkpoint's durable part (a worker thread): nothing here reads the live state."""
        job = self.opened
        job.outputs.sync()
        job.refs.sync()
        job.state.write(commit)
        # after the commit: a kill between the two leaves latency.hdr.json behind the checkpoint
        # (the resumed run's histograms, from the checkpoint, include all it holds), never ahead
        self.measure.persist(self.out, latency)
        job.outputs.write_summary(summary)

    # --- what it reports --------------------------------------------------------------------
    def traffic(self) -> dict[str, int]:
        c = self.session.counters if self.session else None
        now = [c.requests, c.retries, c.throttled] if c else [0, 0, 0]
        return {
            "requests": self._traffic0["requests"] + now[0],
            "retries": self._traffic0["retries"] + now[1],
            "throttled": self._traffic0["throttled"] + now[2],
        }

    def elapsed(self) -> float:
        return self._elapsed0 + ((self.t_end or time.monotonic()) - self.t0)

    def summary(self) -> dict[str, Any]:
        t = self.tally
        end = self.t_end or time.monotonic()
        summary = _summary.build(
            started_at=self.started_at, ended_at=self.ended_at, target=self.config.target,
            input=self.config.input, where={"shard": str(self.config.shard) if self.config.shard else None},
            complete=self.complete, processes=1, tally=t, already_done=self.already_done,
            created_refs=self.opened.refs.summary(),
            reconciled=self.reconciled, traffic=self.traffic(), elapsed=self.elapsed(),
            this_run=_summary.this_run(t.created - self.created0, end - self.t0))
        self.measure.add_to(summary)
        return summary

    def counters(self) -> list[int]:
        """The job's counters a timeline row is the difference of (see bulk.timeline)."""
        traffic, latency = self.traffic(), self.measure.latency
        return [traffic["requests"], latency.finished, self.tally.created, traffic["throttled"], latency.errors]

    def metrics(self) -> list[Any]:
        from .prom import families

        t = self.tally
        return families(self.measure.latency, self.traffic(), {
            "created": t.created, "existing": t.existing, "rejected": t.rejected, "failed": t.failed,
            "uncertain": t.uncertain}, self.measure.late_starts)
