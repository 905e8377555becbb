"""The contract every target API adapter implements, and the one the engine provides to it.

A target is a small class: it says how to authenticate, what it checks beyond the common input
rules, and how one record becomes invoices at its API (:meth:`Target.upload`). It never paces,
retries, checkpoints or writes output: the engine does, through the :class:`Job` handed to
``upload`` and the hooks below. Register a new target in ``bulk.targets.TARGETS`` or through the
``bulk.targets`` entry-point group, its sandbox dialect (sharing no code with the client)
through ``bulk.sandbox``; how the two meet in the embedded sandbox and the tests (credentials,
seeds) is ``bulk.embedded``'s, not the target's. Prove it with ``bulk.testing.conformance``
(README: "Writing a target"; ``tests/plugin_ledger`` is a complete fifth target).
What a target implements: the class attributes of :class:`Target` (``name``, ``credential_env``,
``base_url_env``, ...), :meth:`~Target.headers` and :meth:`~Target.upload`; where the API needs
it, :meth:`~Target.check`, :meth:`~Target.classify` / :meth:`~Target.error_detail` (its error
shape), :meth:`~Target.start_run` (run state), :meth:`~Target.prepare` (a smoke test),
:meth:`~Target.finish` (reconcile late copies) and :meth:`~Target.affinity`. A request is a
:class:`bulk.transport.Request` (``method``, ``path`` after the base URL, ``params``, ``json``
(a Decimal goes as an exact number), ``headers``, ``kind`` ``"read"``/``"write"``); an answer a
:class:`bulk.transport.Reply` (``status``, ``headers``, ``content``; ``json()`` gives floats:
read money with ``json.loads(reply.content, parse_float=Decimal)``). The record is a
:class:`bulk.records.Record`, already validated (money as Decimal). This module is the whole
contract; the default bodies of the error-answer hooks live in ``bulk.targets._answers`` and the
credential check in ``bulk.targets._credentials`` (private: extend the hooks with ``super()``).

The lifecycle: ``__init__`` before the run (check the options: a ConfigError is exit 2 before
anything starts); ``check`` for every record as it is read, before anything is sent for it
(``bulk validate`` and ``--dry-run`` run it and send nothing); inside the run, ``start_run``
(in every process), ``prepare`` (parent only), ``upload`` for every record that passed
``check``, from many workers at once, ``classify`` on every answer ``job.send`` receives, and
``finish`` (parent only, when the input was read to the end). Errors: one tree,
:mod:`bulk.errors`, each class meaning one thing to the engine (see :meth:`Target.upload`).

Exactly-once is the target's responsibility *using the engine's help*: ``job.send`` with
``recover``, ``job.resolve``, ``job.maybe_sent_before``, stale ids, ``job.remember`` /
``job.mark``, ``job.progress`` and :meth:`Target.finish`, each described, with when to use it, in
``bulk.targets._handles`` (the :class:`RunJob` and :class:`Job` handles).

Hooks the engine offers (use them rather than building your own; each is run state, made in
:meth:`Target.start_run`, except the pacing, which is the engine's own):

- every request is paced by its ``Request.kind`` against :attr:`Target.default_limits` (or
  ``--rate`` / ``--limit``), on aiolimiter lanes in :mod:`bulk.pacing`, and a 429 slows them;
- per-key spacing, for an API that limits *identical* requests (anny: 4 per second):
  ``async with spacer.slot(key):`` around ``job.send`` with a :class:`bulk.spacing.KeySpacer`,
  which counts each key's requests from their completion, so twins never arrive ``limit + 1``
  times within the window;
- a quota over a long window (``X-RateLimit-Remaining`` of a daily quota): a
  :class:`bulk.spacing.QuotaGate` whose ``remaining`` the target sets from every answer (in
  ``classify``); ``async with gate.slot(exhausted):`` around ``job.send`` keeps the requests in
  flight within what is left and raises ``exhausted()`` (e.g.
  :class:`~bulk.errors.QuotaExhausted`) only when nothing is in flight and nothing is left
  (Coperniq, ``bulk.targets._coperniq_quota``);
- batching small requests into one bulk call, where the API has one and limits requests, not
  objects (ChargeOver's ``_bulk``, 25 creates per request): a :class:`bulk.batching.Batches`
  ``(flush, size=..., linger=...)``; every ``upload`` awaits its own sub-answer with
  ``await batches.call(job, item)``. The first caller to find no open batch leads it, waits
  until it is full or the linger has passed, and awaits ``flush(batch, job)``, which the
  target writes: it sends ``batch.items`` with one ``job.send`` (paced and retried; its
  ``recover`` looks the batch's creates up after a lost answer), calls ``batch.close()`` when
  the body is encoded (so the batch fills while it waits for its slot) and returns one result
  per item, in order; an error it raises reaches every caller of the batch.
  ``bulk.targets.chargeover_bulk.Batcher`` is ChargeOver's flush;
- with ``--processes N`` / ``--shard K/N`` each process gets 1/N of every limit, and the
  records of one :meth:`Target.affinity` key stay in one process.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ..refs import kinds_of
from ..transport import Reply
from . import _answers, _credentials
from ._credentials import MIN_SECRET_LENGTH
from ._handles import Created, Job, RunJob

if TYPE_CHECKING:
    from ..records import Record

__all__ = ["MIN_SECRET_LENGTH", "Created", "Job", "RunJob", "Target"]


class Target(abc.ABC):
    """Base class of the API adapters. Subclasses set the class attributes and implement
    :meth:`headers` and :meth:`upload`; every other method is an optional hook with a working
    default (extend it with ``super()``). :meth:`credentials_from_env` is the engine's."""

    name: ClassVar[str]
    #: environment variables holding the credentials, in the order the adapter wants them
    credential_env: ClassVar[tuple[str, ...]]
    #: further environment variables the adapter reads when set (listed in ``--help``)
    optional_env: ClassVar[tuple[str, ...]] = ()
    #: environment variable that may hold the base URL (``--base-url`` wins)
    base_url_env: ClassVar[str]
    #: documented request rates of the real API, requests per second per ``Request.kind`` ("read",
    #: "write"; "*" for every kind without its own);
    #: a class default an instance may replace (anny's adjustable limits, the embedded sandbox's none)
    default_limits: Mapping[str, float] = {}
    #: what to check when the API answers 401/403
    auth_hint: ClassVar[str] = "check the API token in the environment"
    #: the path the adapter puts after the base URL on every request (Agiled's ``/public/v1``):
    #: a ``--base-url`` that already ends with it doubles it (the CLI's hint after a 404)
    path_prefix: ClassVar[str] = ""
    #: the ``--option`` keys the adapter reads; the CLI refuses any other key (exit 2)
    option_keys: ClassVar[tuple[str, ...]] = ()
    #: what ``--create-missing`` may name for this API (``customers``, ``items``; see ``bulk.refs``)
    creatable: ClassVar[frozenset[str]] = frozenset()
    #: what the target creates without the flag (today's behaviour)
    default_create: ClassVar[frozenset[str]] = frozenset()
    #: the creatable kinds whose create the API refuses to repeat (a unique key): only these may be
    #: created by several upload processes at once (``--processes N``: no shared single flight)
    unique_creates: ClassVar[frozenset[str]] = frozenset()
    #: why a kind is not creatable, said with the exit-2 refusal
    cannot_create_why: ClassVar[str] = ""

    def __init__(self, *, base_url: str, credentials: Mapping[str, str], options: Mapping[str, Any]) -> None:
        from ..existing import ON_EXISTING_KEY, on_existing_policy

        self.base_url = base_url
        self.credentials = dict(credentials)
        #: what to do with an invoice the API already holds under the record's external id
        #: (``--on-existing``; the CLI passes it as this reserved option key)
        self.on_existing = on_existing_policy(options.get(ON_EXISTING_KEY))
        self.options = {k: v for k, v in options.items() if k != ON_EXISTING_KEY}
        #: the kinds of reference this instance creates when missing (``--create-missing``;
        #: ConfigError for a kind the API cannot create, see ``bulk.refs``)
        self.create_missing = kinds_of(type(self), self.options)

    # --- construction --------------------------------------------------------------------
    @classmethod
    def credentials_from_env(cls, env: Mapping[str, str]) -> dict[str, str]:
        """The :attr:`credential_env` variables of ``env``: ConfigError for one missing, or one
        shorter than ``MIN_SECRET_LENGTH`` (too short to redact from messages and outputs safely)."""
        return _credentials.credentials_from_env(cls.name, cls.credential_env, env)

    # --- the adapter's contract ----------------------------------------------------------
    @abc.abstractmethod
    def headers(self) -> dict[str, str]:
        """Headers sent with every request (authentication), fixed for the run: the transport
        is built with them when the run starts (a per-request header goes in ``Request.headers``).
        Secret: never logged; every secret in them must be in :meth:`secrets`."""

    def secrets(self) -> list[str]:
        """Every secret string, so the engine can redact it from any message or output file.
        Default: the credentials; extend it with any secret the adapter derives (a base64 pair)."""
        return list(self.credentials.values())

    def check(self, record: Record) -> None:  # noqa: B027 - an optional hook whose default does nothing
        """Raise :class:`~bulk.errors.InvalidRecord` (line, field, reason, fix) for what this API
        cannot take, offline: no request, no run state (it also runs in ``bulk validate``). The
        record is then ``rejected`` and never reaches :meth:`upload`. Default: nothing."""

    def writes_per_invoice(self) -> float:
        """Write requests one invoice costs, roughly (the CLI's start-up duration estimate)."""
        return 1.0

    def affinity(self, record: Record) -> str:
        """The key ``upload`` resolves the record's customer by. With ``--processes N`` (or
        ``--shard K/N``) the records sharing it go to the same shard, so the customer is resolved once."""
        return record.customer.external_id

    def start_run(self) -> None:  # noqa: B027 - an optional hook whose default does nothing
        """Create this run's state (caches, locks, events, batchers, per-run counters); called
        by the engine inside the run, in every process that uploads, before :meth:`prepare` and
        before any :meth:`upload`. A target object is built before the run (options are checked
        in ``__init__``, so a usage error exits 2 before anything starts) and must not hold run
        state from there: an ``anyio`` primitive is bound to the loop that first uses it, and a
        library user may run one target object twice. Extend with ``super().start_run()``.
        Default: nothing."""

    async def prepare(self, job: RunJob) -> None:  # noqa: B027 - an optional hook whose default does nothing
        """Called once per run, in the parent process only, after :meth:`start_run` and before
        any record (e.g. an auth smoke test). ``job`` has no record. A RetryableError stops the
        run resumably ("the API is not answering"); an AuthError stops it at once. Default:
        nothing."""

    @abc.abstractmethod
    async def upload(self, record: Record, job: Job) -> Created:
        """Create ``record`` at the API exactly once and say what was created.

        Concurrency: the engine calls ``upload`` from ``--concurrency`` workers at once (and,
        with ``--processes N``, in N processes, each with its own target object, records routed
        by :meth:`affinity`). Shared between concurrent calls: ``self`` (so state made in
        :meth:`start_run` needs a lock or single flight where two calls could race: prefer
        ``job.resolve``, which is already single flight, cached and resumable), the run's pacer
        and transport behind ``job.send``. Within one call, keep at most ``job.item_concurrency``
        requests in flight (the engine does not enforce it). Never sleep to pace or retry:
        ``job.send`` does both, and returns only a 2xx answer (``classify`` decides).

        The one wait a target may make itself is a *settle* wait (an API with no idempotency
        key): time for a request already on its way (a killed run's, a lost answer's attempt) to
        land before the target looks for it, so the look-up does not miss what a resend would
        duplicate. No engine hook says "not before T" (KeySpacer and QuotaGate count requests),
        so it is the target's; there are three (``tests/test_target_contract.py`` checks it):

        - anny, ``Calls.settled`` (``bulk.targets._anny_calls``): a record an earlier run may
          have sent (``job.maybe_sent_before`` or resume progress) is not looked up before
          ``--option settle`` seconds (default 2, at most 3600) have passed since this
          process's first answer from anny: one deadline per process, paid once, by a resumed run.
          And ``recover`` in ``Calls.create``: a create whose answer was lost within a run is
          looked up ``settle`` seconds after the engine's backoff (only a lost answer pays it).
        - Coperniq, ``recover`` in ``CoperniqTarget._create``: after a create's answer was lost,
          the invoice is looked up again, pausing 0.5 s doubling to 5 s between look-ups, for
          up to ``--option settle`` seconds (default 10, at most 3600) before the engine sends
          the create again; look-ups that fail go on within the engine's give-up time.

        Success: return :class:`Created` (``invoice_id`` is what ``id_map.csv`` writes;
        ``reported_gross``, the API's total, is checked against the money rule; ``existed`` /
        ``action`` when the invoice was found rather than made, see ``bulk.existing``).

        Errors: let what ``job.send`` raises pass through; raise, or let ``classify`` raise, the
        :mod:`bulk.errors` class that says what the engine must do:

        - :class:`~bulk.errors.RecordRefused` (``classify``'s for a 4xx: status, field and the
          API's message) or :class:`~bulk.errors.InvalidRecord` (``record.line_no``, field,
          reason, fix): this record fails (``failed_reasons.csv``) and the run goes on. Prefer
          :meth:`check` for what can be seen before sending.
        - :class:`~bulk.errors.UnknownReference`: an id the request was built from is unknown
          to the API; the engine forgets the ``refs`` and runs ``upload`` once more.
        - a :class:`~bulk.errors.RetryableError` (``ServerError``, ``TransportError``) escaping
          ``upload`` after ``job.send`` used up the retry budget: the record is ``failed``, or
          ``uncertain`` when ``maybe_committed``. Do not catch them to retry yourself.
        - :class:`~bulk.errors.AbortRun` (``AuthError``, ``QuotaExhausted``, ``ApiUnavailable``):
          the whole run stops, resumably (exit 3). :class:`~bulk.errors.ConfigError` is a usage
          error: raise it in ``__init__``, not here.

        Any other exception is a bug in the target and stops the run. ``upload`` must be safe
        to run again from the start for the same record (a resumed run, a stale reference):
        make every create idempotent or look before creating (see the module docstring)."""

    def error_detail(self, reply: Reply) -> tuple[str, str]:
        """``(field, message)`` of an error answer, in the API's own words: the field(s) it
        names (comma-separated, empty when none) and its message, with each field's own message.
        Understands a Laravel-style ``{"message", "errors": {field: [messages]}}`` (Agiled) and
        a top-level ``{"message", "field"}`` (Coperniq); override for other shapes."""
        return _answers.error_detail(reply, self.error_message(reply))

    async def finish(self, job: RunJob) -> dict[str, Any] | None:
        """Called once at the end of a run whose input was read to the end (also when the job
        was already finished), in the parent process, after every record finished (``job`` has
        no record). What it returns goes into ``summary.json`` as ``reconciled``. A failure must
        not lose the job: a RetryableError escaping it is absorbed (the next run of the same
        command calls ``finish`` again), a RecordError is noted in ``reconciled``, an AbortRun
        stops the run resumably. Default: nothing."""
        return None

    def error_message(self, reply: Reply) -> str:
        """The API's own message from an error answer (override for its error shape)."""
        return _answers.error_message(reply)

    def classify(self, reply: Reply, stage: str) -> Reply:
        """Return a 2xx reply; raise the `bulk` error that says what to do with any other.
        Called by ``job.send`` on every answer (each attempt), in the run. Default: 401/403
        AuthError (with :attr:`auth_hint`), 429 Throttled (``Retry-After``), 5xx ServerError,
        3xx AbortRun (redirects are never followed), any other status RecordRefused with
        :meth:`error_detail`'s field and message. Override to read more of an answer (quota
        headers, an API that says 200 for an error, an UnknownReference) and call ``super()``."""
        if 200 <= reply.status < 300:
            return reply
        raise _answers.error_for(reply, stage, self.error_detail(reply), self.auth_hint)
