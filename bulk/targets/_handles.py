"""What the engine and a target hand each other: the handles and the result of ``upload``.

:class:`RunJob` is the run's handle (``prepare``, ``finish``), :class:`Job` one record's
(``upload``); both are implemented by the engine in ``bulk.job`` and typed here as protocols, so
a target depends on what it may call, not on the engine's classes. :class:`Created` is what
``upload`` returns. The contract that uses them is :class:`bulk.targets.base.Target`; import
these names from ``bulk.targets`` (or ``bulk.targets.base``), not from this private module.

Exactly-once is the target's responsibility *using the engine's help*:

- ``job.send(req, stage=..., recover=find)``: for a create that is not idempotent at the API,
  ``find`` is awaited before every resend after an answer that may have been lost (timeout,
  reset, 5xx). If it finds the object, its Reply is returned instead of creating again.
- ``job.resolve(ns, key, factory)``: a shared object (customer, item) found or made once per
  job, single flight across workers, cached in the resume file.
- ``job.maybe_sent_before`` is True when an earlier run may have sent this record (it was
  in that run's write-ahead window): look before creating when the API has no idempotency key.
- stale cached ids: when the API refuses a request because an id it references is unknown
  (a contact deleted since it was resolved), ``classify`` raises
  :class:`~bulk.errors.UnknownReference`, and ``job.send(..., refs=((ns, key),))`` names the
  resolved ids the request was built from (or the target raises it with ``refs`` itself). The
  engine drops those from the cache and the resume file and runs ``upload`` once more, whose
  ``job.resolve`` calls then run their factories again.
- ``job.remember(ns, key, value)`` keeps a fact in the resume file (as ``resolve`` does, but
  overwriting), and ``job.remembered(ns)`` (in :meth:`Target.finish` only) reads them all back:
  e.g. the records whose earlier attempts may still reach the API late; ``job.mark`` /
  ``job.marked_before`` note durably an act a kill could leave unrecorded (``bulk.refs``).
- :meth:`Target.finish` runs once at the end of every run that read its input to the end
  (a re-run of a finished job too), after every record finished: the place to reconcile what
  late requests may have left at the API.
- ``job.progress`` is a dict persisted at every checkpoint while the record is in flight, so
  a multi-step workflow resumes at the step it reached (it must still verify, because the
  last steps may have happened after the last checkpoint).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from ..transport import Reply, Request

if TYPE_CHECKING:
    from ..records import Record

__all__ = ["Created", "Job", "RunJob"]


@dataclass(frozen=True, slots=True)
class Created:
    """What a target reports for one finished record (``upload``'s result)."""

    invoice_id: str  # the API's id of the invoice: the ID map's ``invoice_id``
    customer_id: str | None = None  # the API's id of the customer it belongs to, when it has one
    status: str | None = None  # the status the API holds (None: the record's)
    reported_gross: Decimal | None = None  # the API's invoice total, checked against the money rule
    existed: bool = False  # found at the API already (lost answer, earlier job), not made now
    #: what the job did: "created", "existing", "updated", "unchanged" (see bulk.existing);
    #: None means "existing" when ``existed`` else "created"
    action: str | None = None

    @property
    def outcome(self) -> str:
        return self.action or ("existing" if self.existed else "created")


class RunJob(Protocol):
    """What the engine offers a target for the whole run, outside any record: the handle that
    :meth:`Target.prepare` and :meth:`Target.finish` receive (implemented in ``bulk.job``).
    :class:`Job` (one record's handle) has all of it too. Every call is shared by the run's
    workers: ``resolve`` is single flight across them, ``send`` passes the run's one pacer."""

    #: how many requests of one record ``upload`` may have in flight at once (``--item-concurrency``)
    item_concurrency: int

    async def send(
        self, req: Request, *, stage: str, recover: Callable[[], Awaitable[Reply | None]] | None = None,
        refs: tuple[tuple[str, str], ...] = (),
    ) -> Reply:
        """Send with pacing and retries; return a 2xx Reply or raise a `bulk` error.

        ``refs``: the ``(namespace, key)`` of every resolved id the request was built from.
        When ``classify`` raises :class:`~bulk.errors.UnknownReference` for it (the API says a
        referenced id is unknown), the engine forgets those ids and runs the upload once more."""

    async def resolve(self, ns: str, key: str, factory: Callable[[], Awaitable[str]]) -> str:
        """Resolve ``key`` once per job (single flight, cached, kept in the resume file)."""

    def stale(self, ns: str, key: str) -> str | None:
        """The id cached for ``ns``/``key`` that the API refused as unknown in this run (so it is
        being resolved again), or None. A factory whose create carries an idempotency key derives
        a new key from it: the old key would replay the deleted object's answer."""

    def remember(self, ns: str, key: str, value: str) -> None:
        """Keep ``key -> value`` in the resume file (replacing an earlier value), durable with
        the checkpoint that first covers this record's outcome, never after it."""

    def remembered(self, ns: str) -> dict[str, str]:
        """Everything remembered in ``ns`` by this job's runs. Only in :meth:`Target.finish`."""

    async def mark(self, ns: str, key: str) -> None:
        """Note durably, before an act a kill could leave unrecorded (a reference's create), that
        this job began it: fsynced before it returns (``bulk.marks``; one fsync each, for rare acts)."""

    def marked_before(self, ns: str, key: str) -> bool:
        """True when an earlier run of this job marked ``ns``/``key`` (it may have been killed
        after the act, before its checkpoint): what the resumed run finds is its job's doing."""


class Job(RunJob, Protocol):
    """What the engine offers a target for one record (implemented in ``bulk.job``)."""

    def cached(self, ns: str, key: str) -> str | None:
        """What ``resolve(ns, key, ...)`` would return at once, without a wait, when ``key`` is
        already resolved (cached or in the resume file); else None (then ``await
        job.resolve(...)``). Synchronous: a target resolving per record tries it first, as a
        cache hit is the common case and needs neither a coroutine nor the factory's closure."""

    #: the record being uploaded (the same object ``upload`` gets)
    record: Record
    #: persisted with every checkpoint while the record is in flight (see the module docstring)
    progress: dict[str, Any]
    #: an earlier run may have sent this record: look before creating when the API has no key
    maybe_sent_before: bool
