"""The upload engine: one run of ``bulk upload`` over a run directory, as a small orchestrator.

:class:`Run` opens the job, starts the tasks in one anyio task group, handles SIGINT/SIGTERM
and shutdown, and turns how the run ended into an exit code (:class:`RunResult`). The work
itself is done by the parts below; this is the path of one record, top to bottom::

    bulk._rundir.open_job        run directory: room on disk, state.db + its Checkpoint,
         |                       same-job check, outputs cut back to the checkpoint's sizes
    bulk._jobstate.JobState      the job's state, restored from that Checkpoint: tally,
         |                       watermark (Tracker), done_beyond, reserved, traffic, elapsed
         v
    bulk.source.InputFile.batches  read: lists of up to 64 RawLines (bytes, line number, offsets), from the watermark
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
    JobState.checkpoint          every --checkpoint-every s, at each write-ahead and at the end:
                                 outputs flushed -> Checkpoint (bulk.checkpoint) on the loop;
                                 fsyncs -> one commit -> latency.hdr.json and summary.json
                                 (bulk._summary.build) in a worker thread, one at a time

Alongside: the checkpointer, the progress ticker (bulk._status), the measurements' second ticker
(bulk.measure) and the signal watcher (bulk._signals: SIGINT/SIGTERM -> stop reading, let
in-flight finish, a second signal or a 10 s grace -> cancel; exit 130).

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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio import CancelScope

from . import _signals, _status
from ._intake import Intake, file_reread
from ._jobstate import JobState
from ._recorder import Recorder
from ._rundir import open_job, places_rejects
from ._worker import Item, Workers
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
from .measure import Measure
from .pacing import Pacer
from .progress import ProgressSink
from .source import InputFile
from .targets.base import Target
from .transport import Transport, redactor

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
        self.stopping = False
        self._inflight: dict[int, RecordJob] = {}
        self._t0 = time.monotonic()
        self._started_at = _utc_now()  # the job's start: a resumed run keeps the first run's
        self._session: Session | None = None
        self._work_scope: CancelScope | None = None

    # --- the tasks --------------------------------------------------------------------------
    async def _produce(self, feed: Feed[Item]) -> None:
        c = self.config
        js = self._job
        tracker, done_beyond = js.tracker, js.done_beyond
        window = c.effective_window
        intake = Intake(max_line_bytes=c.max_line_bytes, first_line=js.opened.state.first_line, target=self.target,
                        shard=c.shard, reread=file_reread(c.input) if c.shard and places_rejects(js.opened) else None)
        screen, reject = intake.screen, self._recorder.reject
        add, finish, pending, put = tracker.add, tracker.finish, tracker.pending, feed.put
        reserved = js.reserved  # js.reserved's value: only this task changes it
        try:
            with self._reading:  # a first signal cancels it: a read waiting on a stalled pipe ends now
                # Lines come in small batches (InputFile.batches: one generator step for many lines);
                # each is handled exactly as one at a time, the stop flag checked before each.
                async for batch in self._input.batches(start=tracker.offset, first_line=tracker.line,
                                                       max_line_bytes=c.max_line_bytes):
                    for raw in batch:
                        if self.stopping:
                            break
                        entry = add(raw)
                        line_no = raw.line_no
                        if done_beyond and line_no in done_beyond:
                            done_beyond.discard(line_no)  # from now on the tracker holds it
                            finish(entry)
                            continue
                        if len(pending) >= window:
                            await tracker.wait_for_room(window)
                        try:
                            record = screen(raw)
                        except InvalidRecord as exc:
                            reject(raw, exc, intake.external_id)
                            finish(entry)
                            continue
                        if record is None:  # blank, or another shard's
                            finish(entry)
                            continue
                        if line_no > reserved:
                            # Write ahead: a resumed run must know which records may have been sent.
                            # Durable before this record is put: the wait holds the producer only.
                            js.reserved = reserved = line_no + window
                            await js.checkpoint()
                        data = raw.data
                        assert data is not None  # a record's line is in memory (intake rejects an overlong one)
                        await put((entry, record, data))
                    if self.stopping:
                        break
        finally:
            feed.close()

    async def _checkpointer(self) -> None:
        while True:
            await anyio.sleep(self.config.checkpoint_every)
            await self._job.checkpoint()

    def _cancel_work(self) -> None:
        if self._work_scope is not None:
            self._work_scope.cancel()

    # --- run ---------------------------------------------------------------------------------
    async def execute(self, *, handle_signals: bool = True) -> RunResult:
        c = self.config
        job = open_job(c, self.out)
        self._job = js = JobState(c, self.measure, job, self._inflight, t0=self._t0, started_at=self._started_at)
        self._input = InputFile(c.input)
        self._reading = CancelScope()  # the producer's: a graceful stop ends its reading (bulk._signals)
        self._recorder = Recorder(job.outputs, js.tally, input_path=c.input,
                                  copyable=not (self._input.is_stdin or c.input.endswith(".gz")))
        error: BulkError | None = None
        finished = False  # _run_tasks returned: not cancelled from outside, no foreign exception
        try:
            pacer = Pacer(limits=c.pacing_limits(self.target.default_limits), concurrency=c.concurrency,
                          give_up_after=c.give_up_after, max_wait=c.max_wait)
            async with Transport(self.target.base_url, headers=self.target.headers(), timeout=c.timeout,
                                 connections=c.concurrency, secrets=self.target.secrets()) as transport:
                self._session = js.session = Session(
                    transport=transport, pacer=pacer, target=self.target, state=job.state, attempts=c.attempts,
                    item_concurrency=c.item_concurrency, marks=job.marks)
                self._session.latency = self.measure.latency
                self.measure.open_timeline(self.out, js.counters())
                error = await self._run_tasks(handle_signals)
                finished = True
        finally:
            js.ended_at = _utc_now()
            try:
                self.measure.row(js.counters())  # the last (partial) second
            except OutputError as exc:
                error = error or exc
            js.t_end = time.monotonic()
            self._input.close()
            if not isinstance(error, OutputError):
                if finished and error is None and not self.stopping:
                    js.complete = True  # never for a run its caller cancelled or a crash ended
                try:
                    with CancelScope(shield=True):  # the final checkpoint completes, whatever cancels the run
                        await js.checkpoint()
                except OutputError as exc:
                    error = error or exc
            job.outputs.close()
            job.refs.close()
            job.marks.close()
            job.state.close()
            self.measure.close()
        summary = js.summary()
        if error is not None:
            # The output boundary: the error may quote an API's answer, which may quote a credential.
            redact_error(error, redactor(self.target.secrets()))
        if self.stopping and error is None:
            return RunResult(130, summary, None, interrupted=True)
        if error is not None:
            return RunResult(3 if isinstance(error, AbortRun) else 2, summary, error)
        t = js.tally
        return RunResult(1 if (t.rejected or t.failed or t.uncertain) else 0, summary)

    async def _run_tasks(self, handle_signals: bool) -> BulkError | None:
        c = self.config
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(self._checkpointer)
                outer.start_soon(self.measure.tick, self._job.counters, self._job.metrics)
                if self.progress is not None:
                    outer.start_soon(_status.tick, self.progress, self._job, self._input, c)
                if handle_signals:
                    outer.start_soon(_signals.watch, self, self.progress, self._cancel_work, self._reading.cancel)
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
                                          recorder=self._recorder, tracker=self._job.tracker,
                                          inflight=self._inflight, resume_progress=self._job.resume_progress,
                                          prev_reserved=self._job.prev_reserved, arrivals=self.measure.arrivals)
                        for _ in range(c.concurrency):
                            tg.start_soon(workers.work, feed)
                    if not self.stopping:
                        # Every record has finished: the target may reconcile what late requests
                        # of this run or an earlier one left (e.g. a duplicate to remove).
                        try:
                            self._job.reconciled = await self.target.finish(SessionJob(self._session))
                        except RetryableError:
                            pass  # nothing lost: the next run of the same command calls it again
                        except RecordError as exc:  # the records are done; only the reconciling is not
                            self._job.reconciled = {"note": self._session.transport.redact(
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
