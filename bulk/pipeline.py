"""The upload engine: one run of ``bulk upload`` over a run directory, as a small orchestrator.

:class:`Run` opens the job, starts the tasks in one anyio task group, handles SIGINT/SIGTERM
and shutdown, and turns how the run ended into an exit code (:class:`RunResult`). The work
itself is done by the parts below; this is the path of one record, top to bottom::

    bulk._rundir.open_job        run directory: room on disk, state.db + its Checkpoint,
         |                       same-job check, outputs cut back to the checkpoint's sizes
         v
    bulk.source.InputFile.lines  read: one RawLine (bytes, line number, offsets), from the watermark
         |
    Run._produce                 the producer task, for each line, in input order:
         |  bulk.watermark.Tracker.add       the line is started (the watermark waits for it)
         |  (done_beyond)                    finished by an earlier run: finished, skipped
         |  Tracker.wait_for_room            at most `window` lines between watermark and newest
         |  bulk._intake.Intake.screen       parse, validate, dedupe (state.db), shard, Target.check
         |      rejected ----------------->  bulk._recorder.Recorder.reject, Tracker.finish
         |      blank / another shard's -->  Tracker.finish
         |  write ahead                      `reserved` past the line? checkpoint first
         v
    bulk.feed.Feed               bounded hand-off, producer -> workers
         |
    bulk._worker.Workers.work    --concurrency loops, each, for one record:
         |  (open loop)                      wait for its due time (--arrival-rate)
         |  bulk.job.RecordJob               its step state; kept in flight for the checkpoint
         |  bulk.job.upload                  Target.upload through the session (pacing, retries)
         |  Recorder.created / .failed       outcome -> outputs (id_map.csv / failed.*) + tally
         |  Tracker.finish                   finished: the watermark moves past it
         v                                   (these three in one synchronous step)
    Run.checkpoint               every --checkpoint-every s, at each write-ahead and at the end:
                                 outputs flushed -> Checkpoint (bulk.checkpoint) -> one commit;
                                 then latency.hdr.json and summary.json (bulk._summary.build)

Alongside: the checkpointer, the progress ticker, the measurements' second ticker
(bulk.measure) and the signal watcher (SIGINT/SIGTERM -> stop reading, let in-flight finish,
a second signal or a 10 s grace -> cancel; exit 130).

Exactly-once across kills: a record is *finished* only when its outcome is in the output
files; the checkpoint stores the watermark (every record before it is finished), the lines
finished beyond it, and the output sizes at that instant. A resumed run truncates the
outputs back to those sizes and redoes everything else, which the targets make idempotent
(idempotency keys, unique numbers/external keys, or a lookup before retrying a create).

The invariant every checkpoint keeps (tests/test_resume_accounting.py checks it after every
run, killed or not): *the lines it calls finished (below the watermark, or in done_beyond)
are exactly the lines the outputs record up to its sizes, each once, and its tally counts and
totals exactly those rows.* Three things hold it:

- an outcome is written to the outputs, counted in the tally and marked finished in the
  tracker in one synchronous step (no await between: ``Workers.work``, and ``Run._produce``
  for a rejected line), and a checkpoint flushes, snapshots and commits with no await between
  flush and snapshot: no checkpoint sees one without the other;
- a resumed run's done_beyond is the earlier run's lines it has not re-read yet *plus* the
  tracker's: a resumed producer may wait (a smaller --concurrency, a full feed, a stalled
  record) before it reaches the lines an earlier run finished out of order, and a checkpoint
  taken then must still call them finished, or the next run records them again;
- the write-ahead reservation (``reserved``) only says which records *may have been sent*;
  it never marks anything finished.
"""

from __future__ import annotations

import datetime as dt
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio import CancelScope

from . import _summary
from ._intake import Intake
from ._recorder import Recorder
from ._rundir import SHARD_BY, open_job
from ._worker import Item, Workers
from .checkpoint import Checkpoint
from .config import UploadConfig
from .errors import (
    AbortRun,
    ApiUnavailable,
    BulkError,
    InvalidRecord,
    OutputError,
    RecordError,
    RetryableError,
    find_bulk_error,
    redact_error,
)
from .feed import Feed
from .job import RecordJob, Session, SessionJob
from .marks import MarkLog
from .measure import Measure
from .pacing import Pacer
from .progress import ProgressSink, Status
from .refs import FILE as REFS_FILE
from .refs import RefsFile
from .source import InputFile
from .tally import Tally
from .targets.base import Target
from .transport import Transport, redactor
from .watermark import Tracker

__all__ = ["Run", "RunResult"]

@dataclass(slots=True)
class RunResult:
    exit_code: int
    summary: dict[str, Any]
    error: BulkError | None = None
    interrupted: bool = False


class Run:
    """One ``bulk upload`` run over a run directory. Use :meth:`execute` once."""

    def __init__(self, config: UploadConfig, target: Target, *, progress: ProgressSink | None = None,
                 metrics: Any = None) -> None:
        self.config = config
        # latency, status codes, timeline, open loop, thresholds, /metrics (issue 15)
        self.measure = Measure(arrival_rate=config.arrival_rate, thresholds=config.thresholds, metrics=metrics)
        self.target = target
        self.progress = progress
        self.out = Path(config.out)
        self.tally = Tally()
        self.stopping = False
        self._inflight: dict[int, RecordJob] = {}
        self._resume_progress: dict[int, dict[str, Any]] = {}
        self._done_beyond: set[int] = set()
        self._prev_reserved = 0
        self._reserved = 0
        self._traffic0 = {"requests": 0, "retries": 0, "throttled": 0}
        self._elapsed0 = 0.0
        self._already_done = 0
        self._complete = False
        self._t0 = time.monotonic()
        self._t_end: float | None = None  # when this run ended: the summary written then and the one returned agree
        self._started_at = _utc_now()  # the job's start: a resumed run keeps the first run's
        self._ended_at: str | None = None
        self._session: Session | None = None
        self._reconciled: dict[str, Any] | None = None  # what target.finish reported
        self._work_scope: CancelScope | None = None
        self._refs: RefsFile | None = None  # created_refs.csv, opened with the job
        self._marks: MarkLog | None = None  # marks.log: write-ahead notes of reference creates

    # --- setup -------------------------------------------------------------------------------
    def _restore(self, cp: Checkpoint) -> tuple[int, int]:
        self.tally = Tally.from_json(cp.tally)
        self._already_done = self.tally.read
        self._done_beyond = set(cp.done_beyond)
        self._resume_progress = {int(k): v for k, v in cp.progress.items()}
        self._prev_reserved = self._reserved = cp.reserved
        self._traffic0 = dict(cp.traffic)
        self._elapsed0 = cp.elapsed
        self._started_at = cp.started_at or self._started_at
        self.measure.restore(cp.measured())
        return cp.offset, cp.line

    # --- the checkpoint ---------------------------------------------------------------------
    def _snapshot(self, sizes: dict[str, int]) -> Checkpoint:
        return Checkpoint(
            target=self.config.target, input=self._fingerprint,
            shard=str(self.config.shard) if self.config.shard else None,
            shard_by=SHARD_BY if self.config.shard else None,
            offset=self._tracker.offset, line=self._tracker.line,
            # The earlier runs' finished lines this run's producer has not re-read yet are
            # still finished: forgetting them would have the next run redo, and record
            # again, what the outputs already hold (issue 10).
            done_beyond=sorted({*self._tracker.done_beyond(), *self._done_beyond}),
            progress={str(k): j.progress for k, j in self._inflight.items() if j.progress},
            reserved=self._reserved, tally=self.tally.to_json(), traffic=self._traffic(), elapsed=self._elapsed(),
            outputs=sizes, complete=self._complete, started_at=self._started_at, **self.measure.snapshot())

    def checkpoint(self) -> None:
        """Make everything finished so far durable, in this order: outputs, then state."""
        sizes = self._outputs.flush()
        assert self._refs is not None
        sizes[REFS_FILE] = self._refs.flush()
        doc = self._snapshot(sizes).to_json()  # no await between flush and snapshot: they agree
        self._outputs.sync()
        self._refs.sync()
        self._state.commit(doc)
        # after the commit: a kill between the two leaves latency.hdr.json behind the checkpoint
        # (the resumed run's histograms, from the checkpoint, include all it holds), never ahead
        self.measure.persist(self.out, doc)
        self._outputs.write_summary(self.summary())

    def _traffic(self) -> dict[str, int]:
        c = self._session.counters if self._session else None
        now = [c.requests, c.retries, c.throttled] if c else [0, 0, 0]
        return {
            "requests": self._traffic0["requests"] + now[0],
            "retries": self._traffic0["retries"] + now[1],
            "throttled": self._traffic0["throttled"] + now[2],
        }

    def _elapsed(self) -> float:
        return self._elapsed0 + ((self._t_end or time.monotonic()) - self._t0)

    def summary(self) -> dict[str, Any]:
        t = self.tally
        end = self._t_end or time.monotonic()
        summary = _summary.build(
            started_at=self._started_at, ended_at=self._ended_at, target=self.config.target,
            input=self.config.input, where={"shard": str(self.config.shard) if self.config.shard else None},
            complete=self._complete, processes=1, tally=t, already_done=self._already_done,
            created_refs=self._refs.summary() if self._refs else {"customer": 0, "item": 0, "account": 0},
            reconciled=self._reconciled, traffic=self._traffic(), elapsed=self._elapsed(),
            this_run=_summary.this_run(t.created - self._created0, end - self._t0))
        self.measure.add_to(summary)
        return summary

    def _counters(self) -> list[int]:
        """The job's counters a timeline row is the difference of (see bulk.timeline)."""
        traffic, latency = self._traffic(), self.measure.latency
        return [traffic["requests"], latency.finished, self.tally.created, traffic["throttled"], latency.errors]

    def _metrics(self) -> list[Any]:
        from .prom import families

        t = self.tally
        return families(self.measure.latency, self._traffic(), {
            "created": t.created, "existing": t.existing, "rejected": t.rejected, "failed": t.failed,
            "uncertain": t.uncertain}, self.measure.late_starts)

    # --- the tasks --------------------------------------------------------------------------
    async def _produce(self, feed: Feed[Item]) -> None:
        c = self.config
        tracker = self._tracker
        window = c.effective_window
        intake = Intake(max_line_bytes=c.max_line_bytes, first_line=self._state.first_line, target=self.target,
                        shard=c.shard)
        screen, reject = intake.screen, self._recorder.reject
        try:
            async for raw in self._input.lines(start=tracker.offset, first_line=tracker.line,
                                               max_line_bytes=c.max_line_bytes):
                if self.stopping:
                    break
                entry = tracker.add(raw)
                if self._done_beyond and raw.line_no in self._done_beyond:
                    self._done_beyond.discard(raw.line_no)  # from now on the tracker holds it
                    tracker.finish(entry)
                    continue
                if len(tracker) >= window:
                    await tracker.wait_for_room(window)
                try:
                    record = screen(raw)
                except InvalidRecord as exc:
                    reject(raw, exc, intake.external_id)
                    tracker.finish(entry)
                    continue
                if record is None:  # blank, or another shard's
                    tracker.finish(entry)
                    continue
                if raw.line_no > self._reserved:
                    # Write ahead: a resumed run must know which records may have been sent.
                    self._reserved = raw.line_no + window
                    self.checkpoint()
                assert raw.data is not None  # a record's line is in memory (intake rejects an overlong one)
                await feed.put((entry, record, raw.data))
        finally:
            feed.close()

    async def _checkpointer(self) -> None:
        while True:
            await anyio.sleep(self.config.checkpoint_every)
            self.checkpoint()

    async def _ticker(self) -> None:
        assert self.progress is not None
        while True:
            self.progress.update(self.tally, self._traffic(), self._status())
            await anyio.sleep(0.25)

    def _status(self) -> Status:
        pacer = self._session.pacer if self._session else None
        shard = self.config.shard
        read_bytes, read_line = self._tracker.read
        return Status(done_bytes=self._tracker.offset, done_lines=self._tracker.line - 1,
                      read_bytes=read_bytes, read_lines=read_line - 1,
                      total_bytes=self._input.estimated_size(), share=1 / shard.count if shard else 1.0,
                      failing_since=pacer.failing_since if pacer else None,
                      give_up_at=pacer.last_ok + self.config.give_up_after if pacer else None,
                      # the API's words may quote a credential: redacted here, on their way out
                      last_error=self._session.transport.redact(pacer.last_error) if self._session and pacer else "")

    async def _watch_signals(self, outer: CancelScope) -> None:
        try:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                # A shard worker (bulk.procs) starts with both blocked: one that came early is delivered now.
                signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGINT, signal.SIGTERM))
                async for _ in signals:
                    if self.stopping:
                        break  # second signal: stop now
                    self.stopping = True
                    if self.progress:
                        self.progress.note("interrupted: finishing requests in flight (again to stop now)")
                    with anyio.move_on_after(10):
                        async for _ in signals:
                            break
                    break
        except (ValueError, NotImplementedError):
            await anyio.sleep_forever()  # not the main thread: the caller handles signals
            return
        if self._work_scope is not None:
            self._work_scope.cancel()

    # --- run ---------------------------------------------------------------------------------
    async def execute(self, *, handle_signals: bool = True) -> RunResult:
        c = self.config
        job = open_job(c, self.out)
        self._state, self._outputs, self._refs, self._marks = job.state, job.outputs, job.refs, job.marks
        self._fingerprint, cp = job.fingerprint, job.checkpoint
        offset, line = self._restore(cp) if cp else (0, 1)
        self._created0 = self.tally.created
        self._tracker = Tracker(offset, line)
        self._input = InputFile(c.input)
        self._recorder = Recorder(self._outputs, self.tally, input_path=c.input,
                                  copyable=not (self._input.is_stdin or c.input.endswith(".gz")))
        error: BulkError | None = None
        try:
            pacer = Pacer(limits=c.pacing_limits(self.target.default_limits), concurrency=c.concurrency,
                          give_up_after=c.give_up_after, max_wait=c.max_wait)
            async with Transport(self.target.base_url, headers=self.target.headers(), timeout=c.timeout,
                                 connections=c.concurrency, secrets=self.target.secrets()) as transport:
                self._session = Session(transport=transport, pacer=pacer, target=self.target, state=self._state,
                                        attempts=c.attempts, item_concurrency=c.item_concurrency,
                                        marks=self._marks)
                self._session.latency = self.measure.latency
                self.measure.open_timeline(self.out, self._counters())
                error = await self._run_tasks(handle_signals)
        finally:
            self._ended_at = _utc_now()
            try:
                self.measure.row(self._counters())  # the last (partial) second
            except OutputError as exc:
                error = error or exc
            self._t_end = time.monotonic()
            self._input.close()
            if not isinstance(error, OutputError):
                if error is None and not self.stopping:
                    self._complete = True
                try:
                    self.checkpoint()
                except OutputError as exc:
                    error = error or exc
            self._outputs.close()
            if self._refs is not None:
                self._refs.close()
            if self._marks is not None:
                self._marks.close()
            self._state.close()
            self.measure.close()
        summary = self.summary()
        if error is not None:
            # The output boundary: the error may quote an API's answer, which may quote a credential.
            redact_error(error, redactor(self.target.secrets()))
        if self.stopping and error is None:
            return RunResult(130, summary, None, interrupted=True)
        if error is not None:
            return RunResult(3 if isinstance(error, AbortRun) else 2, summary, error)
        t = self.tally
        return RunResult(1 if (t.rejected or t.failed or t.uncertain) else 0, summary)

    async def _run_tasks(self, handle_signals: bool) -> BulkError | None:
        c = self.config
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(self._checkpointer)
                outer.start_soon(self.measure.tick, self._counters, self._metrics)
                if self.progress is not None:
                    outer.start_soon(self._ticker)
                if handle_signals:
                    outer.start_soon(self._watch_signals, outer.cancel_scope)
                with CancelScope() as work_scope:
                    self._work_scope = work_scope
                    assert self._session is not None
                    try:
                        await self.target.prepare(SessionJob(self._session))
                    except RetryableError as exc:
                        raise ApiUnavailable(f"the API is not answering ({exc}): run the same command "
                                             "again to resume") from None
                    async with anyio.create_task_group() as tg:
                        feed: Feed[Item] = Feed(c.concurrency)
                        tg.start_soon(self._produce, feed)
                        workers = Workers(self, session=self._session, target=self.target,
                                          recorder=self._recorder, tracker=self._tracker, inflight=self._inflight,
                                          resume_progress=self._resume_progress,
                                          prev_reserved=self._prev_reserved, arrivals=self.measure.arrivals)
                        for _ in range(c.concurrency):
                            tg.start_soon(workers.work, feed)
                    if not self.stopping:
                        # Every record has finished: the target may reconcile what late requests
                        # of this run or an earlier one left (e.g. a duplicate to remove).
                        try:
                            self._reconciled = await self.target.finish(SessionJob(self._session))
                        except RetryableError:
                            pass  # nothing lost: the next run of the same command calls it again
                        except RecordError as exc:  # the records are done; only the reconciling is not
                            self._reconciled = {"note": self._session.transport.redact(
                                f"the check for late copies at the end of the run was refused ({exc}): "
                                "run the same command again to check again")}
                outer.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            return _first_bulk_error(group)
        except BulkError as exc:
            return exc
        return None



def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _first_bulk_error(group: BaseExceptionGroup) -> BulkError:
    found = find_bulk_error(group)
    if found is None:
        raise group
    return found
