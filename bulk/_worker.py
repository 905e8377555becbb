"""The worker loop: take a record from the feed, upload it, record its outcome, mark it finished.

A run starts ``--concurrency`` of these loops over one :class:`bulk.feed.Feed`, in whichever
process the run is (one, or one shard worker of ``--processes N``: each is an ordinary run).
For one record:

1. wait, in open-loop mode (``--arrival-rate``), for the record's due time;
2. build its :class:`bulk.job.RecordJob` (the step state an interrupted run left, and whether
   an earlier run may have sent it: the write-ahead reservation) and keep it *in flight*, where
   a checkpoint finds its step state;
3. ``bulk.job.upload``, inline: the target's ``upload`` through the session (pacing, retries),
   once more after a stale cached id (``bulk.job.upload_again``);
4. in one synchronous step, no await between: the outcome into the outputs and the tally
   (:class:`bulk._recorder.Recorder`), out of the in-flight map, finished in the watermark
   (:class:`bulk.watermark.Tracker`). A checkpoint therefore sees all three or none.

A record taken after a stop request is not started: it stays unfinished, the next run does it.
"""

from __future__ import annotations

from typing import Any, Protocol

from anyio import EndOfStream

from ._recorder import Recorder
from .arrivals import Arrivals
from .errors import RecordError, RetryableError, UnknownReference
from .feed import Feed
from .job import RecordJob, Session, failure, upload_again
from .latency import INTENDED
from .records import Record
from .targets.base import Target
from .watermark import Entry, Tracker

__all__ = ["Item", "Stoppable", "Workers"]

_new_object = object.__new__

#: what the producer hands a worker: the record's watermark entry, the record, its line's bytes
Item = tuple[Entry, Record, bytes]


class Stoppable(Protocol):
    stopping: bool  # set once a stop is requested (SIGINT/SIGTERM): start nothing more


class Workers:
    """What the worker loops of one run share; :meth:`work` is one loop."""

    __slots__ = ("_arrivals", "_inflight", "_prev_reserved", "_recorder", "_resume_progress", "_run", "_session",
                 "_target", "_tracker")

    def __init__(self, run: Stoppable, *, session: Session, target: Target, recorder: Recorder, tracker: Tracker,
                 inflight: dict[int, RecordJob], resume_progress: dict[int, dict[str, Any]], prev_reserved: int,
                 arrivals: Arrivals | None) -> None:
        self._run = run
        self._session = session
        self._target = target
        self._recorder = recorder
        self._tracker = tracker
        self._inflight = inflight  # line -> job, read by the checkpoint (step state)
        self._resume_progress = resume_progress  # line -> step state an earlier run left
        self._prev_reserved = prev_reserved  # lines up to it may have been sent by an earlier run
        self._arrivals = arrivals

    async def work(self, feed: Feed[Item]) -> None:
        run, session, target, arrivals = self._run, self._session, self._target, self._arrivals
        inflight, resume_progress, prev_reserved = self._inflight, self._resume_progress, self._prev_reserved
        created, failed, finish = self._recorder.created, self._recorder.failed, self._tracker.finish
        redact = session.transport.redact
        # bulk.job.new_record_job, inline (once per record: a call fewer), with what every
        # record's handle shares bound once per loop: the same handle (tests/test_engine_handles.py)
        new_job, item_concurrency, send, cached = _new_object, session.item_concurrency, session.send, session.state.get
        pop_progress = resume_progress.pop
        while True:
            try:
                entry, record, data = await feed.get()
            except EndOfStream:
                break
            if run.stopping:
                continue  # not started: stays unfinished, the next run does it
            if arrivals is not None:
                INTENDED.set([await arrivals.start()])  # open loop: wait for the record's due time
                if run.stopping:
                    continue
            line = record.line_no
            job = new_job(RecordJob)
            job._session = session
            job.item_concurrency = item_concurrency
            job.send = send
            job.cached = cached
            job.record = record
            # a fresh run has no step state to resume: no lookup (a call) per record
            job.progress = {} if not resume_progress or (progress := pop_progress(line, None)) is None else progress
            job.maybe_sent_before = line <= prev_reserved
            inflight[line] = job
            try:
                try:  # bulk.job.upload, inline: one coroutine less per record
                    outcome = await target.upload(record, job)
                except UnknownReference as exc:
                    outcome = await upload_again(target, job, exc)
            except (RecordError, RetryableError) as exc:
                failed(line, data, record.external_id, *failure(exc, redact))
            else:
                created(record, outcome)
            del inflight[line]
            finish(entry)  # the watermark's own step (kept in one place: resume rests on it)
