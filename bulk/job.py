"""The engine's side of the target contract: sending with retries, single-flight resolution.

:class:`Session` holds what every record of a run shares (transport, pacer, target, counters,
resolver); :class:`RecordJob` is the per-record handle a target's ``upload`` receives, and
:class:`SessionJob` the record-less one of ``prepare`` and ``finish``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from . import _send
from .errors import RecordError, RetryableError, UnknownReference
from .latency import Latency
from .pacing import Backoff, Pacer
from .transport import BaseTransport, Reply

if TYPE_CHECKING:
    from .checkpoint import StateStore
    from .marks import MarkLog
    from .records import Record
    from .targets.base import Created, Target

__all__ = ["Counters", "RecordJob", "Session", "SessionJob", "failure", "new_record_job", "upload", "upload_again"]


@dataclass(slots=True)
class Counters:
    """HTTP traffic of this run (observable by progress and the summary)."""

    requests: int = 0
    retries: int = 0
    throttled: int = 0


class _Flight:
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.value: str | None = None
        self.error: BaseException | None = None


class Session:
    """Per-run shared machinery. Created inside the run; dies with it."""

    def __init__(
        self,
        *,
        transport: BaseTransport,
        pacer: Pacer,
        target: Target,
        state: StateStore,
        attempts: int,
        item_concurrency: int,
        backoff: Backoff | None = None,
        marks: MarkLog | None = None,
    ) -> None:
        self.transport = transport
        self.marks = marks  # write-ahead marks (bulk.marks); None: nothing survives the run
        self.pacer = pacer
        self.target = target
        self.state = state
        self.attempts = attempts
        self.item_concurrency = item_concurrency
        self.backoff = backoff or Backoff()
        self.counters = Counters()
        self.latency = Latency()  # every request's latency and status, by kind and stage (issue 15)
        self._flights: dict[tuple[str, str], _Flight] = {}
        self.stale: dict[tuple[str, str], str] = {}  # ids forgotten as unknown to the API, this run
        # The session is the run, in whichever process it runs: the target's run state starts here.
        target.start_run()

    #: Send with pacing and retries (the contract: :meth:`bulk.targets.base.RunJob.send`):
    #: :func:`bulk._send.send` itself, so a call is that coroutine with no frame around it.
    send = _send.send

    def forget(self, ns: str, key: str, stale: str | None) -> None:
        """Drop the cached ``ns``/``key`` (memory and resume file) when it still holds ``stale``
        (another record may already have resolved it again: that fresh value stays)."""
        if stale is not None and self.state.get(ns, key) == stale:
            self.state.forget(ns, key)
            self.stale[(ns, key)] = stale

    async def resolve(self, ns: str, key: str, factory: Callable[[], Awaitable[str]], look: bool = True) -> str:
        """Cached (``look`` False: the caller just looked), else in flight, else ``factory()``'s."""
        if look and (cached := self.state.get(ns, key)) is not None:
            return cached
        flight = self._flights.get((ns, key))
        if flight is not None:
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            assert flight.value is not None
            return flight.value
        flight = self._flights[(ns, key)] = _Flight()
        try:
            flight.value = value = await factory()
            self.state.put(ns, key, value)
            return value
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[(ns, key)]
            flight.done.set()


class SessionJob:
    """The :class:`bulk.targets.base.RunJob` of ``prepare`` and ``finish``: the run, no record.

    Also the base of :class:`RecordJob` (as ``Job`` extends ``RunJob``): sending, resolving,
    the resume file's cache and the write-ahead marks are the run's, whichever handle asks."""

    __slots__ = ("_session", "item_concurrency", "send")

    #: :meth:`Session.send` itself (the contract: :meth:`bulk.targets.base.RunJob.send`), bound
    #: once per handle: a call of ``job.send`` is the session's coroutine with no Python frame
    #: of ours around it (one a request fewer than a method forwarding to it).
    send: Callable[..., Coroutine[Any, Any, Reply]]

    def __init__(self, session: Session) -> None:
        self._session = session
        self.item_concurrency = session.item_concurrency
        self.send = session.send

    async def resolve(self, ns: str, key: str, factory: Callable[[], Awaitable[str]]) -> str:
        return await self._session.resolve(ns, key, factory)

    def stale(self, ns: str, key: str) -> str | None:
        return self._session.stale.get((ns, key))

    def remember(self, ns: str, key: str, value: str) -> None:
        self._session.state.put(ns, key, value)

    def remembered(self, ns: str) -> dict[str, str]:
        return self._session.state.items(ns)

    async def mark(self, ns: str, key: str) -> None:
        if self._session.marks is not None:
            await self._session.marks.mark(ns, key)

    def marked_before(self, ns: str, key: str) -> bool:
        marks = self._session.marks
        return marks is not None and marks.marked_before(ns, key)


class RecordJob(SessionJob):
    """The :class:`bulk.targets.Job` for one record: the run's handle plus the record."""

    __slots__ = ("cached", "maybe_sent_before", "progress", "record")

    #: :meth:`bulk.targets.Job.cached`: the resume store's own ``get``, bound once per record
    #: (a cache hit is then one Python call, not two)
    cached: Callable[[str, str], str | None]

    def __init__(
        self, session: Session, record: Record, *, progress: dict[str, Any] | None, maybe_sent_before: bool
    ) -> None:
        # new_record_job sets the same (keep the two alike)
        self._session = session  # SessionJob.__init__, inline
        self.item_concurrency = session.item_concurrency
        self.send = session.send
        self.cached = session.state.get
        self.record = record
        self.progress: dict[str, Any] = progress if progress is not None else {}
        self.maybe_sent_before = maybe_sent_before

    async def resolve(self, ns: str, key: str, factory: Callable[[], Awaitable[str]]) -> str:
        # Once per record: a value already resolved is returned without a second coroutine.
        session = self._session
        cached = session.state.get(ns, key)
        if cached is not None:
            return cached
        return await session.resolve(ns, key, factory, False)


def new_record_job(session: Session, record: Record, progress: dict[str, Any] | None,
                   maybe_sent_before: bool) -> RecordJob:
    """``RecordJob(session, record, progress=..., maybe_sent_before=...)``, for the worker (once
    per record): a function call, where calling the class with keywords first packs them into
    a tuple and a dict. Sets what :meth:`RecordJob.__init__` sets."""
    job = _new_object(RecordJob)
    job._session = session
    job.item_concurrency = session.item_concurrency
    job.send = session.send
    job.cached = session.state.get
    job.record = record
    job.progress = progress if progress is not None else {}
    job.maybe_sent_before = maybe_sent_before
    return job


_new_object = object.__new__


async def upload(target: Target, job: RecordJob) -> Created:
    """``target.upload`` of the job's record, resolving stale cached ids again once.

    When the API refuses a request because an id it references is unknown
    (:class:`~bulk.errors.UnknownReference`: a contact deleted since it was resolved and cached
    in the resume file), the cached ids the request was built from (``exc.refs``) are forgotten
    and the whole upload runs once more (:func:`upload_again`): its resolves call their
    factories again (a lookup, then a create), and every step before the refused one is
    idempotent (targets make it so for resumed runs anyway). A second refusal fails the record
    with the API's answer.
    """
    try:
        return await target.upload(job.record, job)
    except UnknownReference as exc:
        return await upload_again(target, job, exc)


async def upload_again(target: Target, job: RecordJob, exc: UnknownReference) -> Created:
    """The second ``target.upload`` of :func:`upload`, after ``exc`` (re-raised when it names
    no cached id). The worker calls ``target.upload`` itself and this only after a refusal."""
    if not exc.refs:
        raise exc
    session = job._session
    stale = [(ns, key, session.state.get(ns, key)) for ns, key in exc.refs]
    for ns, key, value in stale:
        session.forget(ns, key, value)
    return await target.upload(job.record, job)


def failure(exc: RecordError | RetryableError, redact: Callable[[str], str]) -> tuple[str, str, str, int | str, str]:
    """How a record that ended with ``exc`` is reported: (kind, stage, field, status, message),
    the columns of failed_reasons.csv. A retryable error that outlived the retry budget is
    ``uncertain`` when the request may have been committed, ``failed`` otherwise."""
    if isinstance(exc, RecordError):
        # The API's own words, redacted here (the output boundary): an answer may quote a credential.
        return (exc.kind, exc.stage, redact(getattr(exc, "field", "")), getattr(exc, "status", ""),
                redact(getattr(exc, "api_message", exc.message)))
    kind = "uncertain" if exc.maybe_committed else "failed"
    return kind, "request", "", exc.status or "", redact(str(exc))
