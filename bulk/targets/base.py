"""The contract every target API adapter implements, and the one the engine provides to it.

A target is a small class: it says how to authenticate, what it checks beyond the common input
rules, and how one record becomes invoices at its API (:meth:`Target.upload`). It never paces,
retries, checkpoints or writes output: the engine does, through the :class:`Job` handed to
``upload``. Register a new target in ``bulk.targets.TARGETS`` or through the ``bulk.targets``
entry-point group.

Exactly-once is the target's responsibility *using the engine's help*:

- ``job.send(req, stage=..., recover=find)``: for a create that is not idempotent at the API,
  ``find`` is awaited before every resend after an answer that may have been lost (timeout,
  reset, 5xx). If it finds the object, its Reply is returned instead of creating again.
- ``job.maybe_sent_before`` is True when an earlier run may have sent this record (it was
  at or after that run's watermark): look before creating when the API has no idempotency key.
- stale cached ids: when the API refuses a request because an id it references is unknown
  (a contact deleted since it was resolved), ``classify`` raises
  :class:`~bulk.errors.UnknownReference`, and ``job.send(..., refs=((ns, key),))`` names the
  resolved ids the request was built from (or the target raises it with ``refs`` itself). The
  engine drops those from the cache and the resume file and runs ``upload`` once more, whose
  ``job.resolve`` calls then run their factories again. ``upload`` must be safe to run again
  from the start (it already is: a resumed run does just that).
- ``job.remember(ns, key, value)`` keeps a fact in the resume file (as ``resolve`` does, but
  overwriting), and ``job.remembered(ns)`` (in :meth:`Target.finish` only) reads them all back:
  e.g. the records whose earlier attempts may still reach the API late.
- :meth:`Target.finish` runs once at the end of every run that read its input to the end
  (a re-run of a finished job too), after every record finished: the place to reconcile what
  late requests may have left at the API.
- ``job.progress`` is a dict persisted at every checkpoint while the record is in flight, so
  a multi-step workflow resumes at the step it reached (it must still verify, because the
  last steps may have happened after the last checkpoint).
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ..errors import AbortRun, AuthError, ConfigError, RecordRefused, ServerError, Throttled
from ..pacing import parse_retry_after
from ..refs import kinds_of
from ..transport import Reply, Request

if TYPE_CHECKING:
    from ..records import Record

__all__ = ["Created", "Job", "Target", "MIN_SECRET_LENGTH"]

#: the shortest credential accepted from the environment (see ``credentials_from_env``)
MIN_SECRET_LENGTH = 8


@dataclass(frozen=True, slots=True)
class Created:
    """What a target reports for one finished record."""

    invoice_id: str
    customer_id: str | None = None
    status: str | None = None
    reported_gross: Decimal | None = None  # the API's invoice total, checked against the money rule
    existed: bool = False  # found at the API already (lost answer, earlier job), not made now


class Job(Protocol):
    """What the engine offers a target for one record (implemented in ``bulk.job``)."""

    record: Record
    progress: dict[str, Any]
    maybe_sent_before: bool
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


class Target(abc.ABC):
    """Base class of the API adapters. Subclasses set the class attributes and ``upload``."""

    name: ClassVar[str]
    #: environment variables holding the credentials, in the order the adapter wants them
    credential_env: ClassVar[tuple[str, ...]]
    #: further environment variables the adapter reads when set (listed in ``--help``)
    optional_env: ClassVar[tuple[str, ...]] = ()
    #: environment variable that may hold the base URL (``--base-url`` wins)
    base_url_env: ClassVar[str]
    #: documented request rates of the real API, requests per second per kind ("read"/"write")
    default_limits: ClassVar[Mapping[str, float]] = {}
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
    #: why a kind is not creatable, said with the exit-2 refusal
    cannot_create_why: ClassVar[str] = ""

    def __init__(self, *, base_url: str, credentials: Mapping[str, str], options: Mapping[str, Any]) -> None:
        self.base_url = base_url
        self.credentials = dict(credentials)
        self.options = dict(options)
        #: the kinds of reference this instance creates when missing (``--create-missing``;
        #: ConfigError for a kind the API cannot create, see ``bulk.refs``)
        self.create_missing = kinds_of(type(self), self.options)

    # --- construction --------------------------------------------------------------------
    @classmethod
    def credentials_from_env(cls, env: Mapping[str, str]) -> dict[str, str]:
        missing = [name for name in cls.credential_env if not env.get(name)]
        if missing:
            raise ConfigError(f"the {cls.name} target needs {', '.join(missing)} in the environment")
        # Refused, not warned about: a credential this short also occurs in ordinary text (an
        # id, an amount, a word of an error message), so it can be kept out of the outputs only
        # by mangling them ("***" for every "a"), and left in them it would leak. No real API
        # issues keys this short (the embedded sandbox makes its own long secrets).
        short = [name for name in cls.credential_env if len(env[name]) < MIN_SECRET_LENGTH]
        if short:
            raise ConfigError(f"{', '.join(short)} is shorter than {MIN_SECRET_LENGTH} characters: too short to "
                              "keep out of messages and output files safely; give the real credential")
        return {name: env[name] for name in cls.credential_env}

    @classmethod
    def sandbox_credentials(cls, secret: str) -> tuple[dict[str, str], str]:
        """Credentials for the embedded sandbox, and the token string its dialect accepts."""
        return {name: secret for name in cls.credential_env}, secret

    @classmethod
    def sandbox_options(cls) -> dict[str, Any]:
        """Dialect options for the embedded sandbox (e.g. seeded catalogue)."""
        return {}

    @classmethod
    def sandbox_client_options(cls) -> dict[str, Any]:
        """Client ``--option`` defaults that fit the embedded sandbox's seeded data."""
        return {}

    # --- the adapter's contract ----------------------------------------------------------
    @abc.abstractmethod
    def headers(self) -> dict[str, str]:
        """Headers sent with every request (authentication). Secret: never logged."""

    def secrets(self) -> list[str]:
        """Every secret string, so the engine can redact it from any message."""
        return list(self.credentials.values())

    def check(self, record: Record) -> None:
        """Raise :class:`~bulk.errors.InvalidRecord` for what this API cannot take."""

    def writes_per_invoice(self) -> float:
        """Write requests one invoice costs, roughly (the CLI's start-up duration estimate)."""
        return 1.0

    def affinity(self, record: Record) -> str:
        """The key ``upload`` resolves the record's customer by. With ``--processes N`` the
        records sharing it go to the same process, so the customer is resolved once."""
        return record.customer.external_id

    async def prepare(self, job: Job) -> None:
        """Called once per run before any record (e.g. an auth smoke test). Default: nothing."""

    @abc.abstractmethod
    async def upload(self, record: Record, job: Job) -> Created:
        """Create ``record`` at the API exactly once and say what was created."""

    def error_detail(self, reply: Reply) -> tuple[str, str]:
        """``(field, message)`` of an error answer, in the API's own words: the field(s) it
        names (comma-separated, empty when none) and its message, with each field's own message.
        Understands a Laravel-style ``{"message", "errors": {field: [messages]}}`` (Agiled) and
        a top-level ``{"message", "field"}`` (Coperniq); override for other shapes."""
        message = self.error_message(reply)
        data = reply.json()
        if isinstance(data, dict):
            errors = data.get("errors")
            if isinstance(errors, dict) and errors:
                pairs = [(str(name), "; ".join(str(m) for m in (msgs if isinstance(msgs, list) else [msgs])))
                         for name, msgs in list(errors.items())[:10]]
                detail = "; ".join(f"{name}: {text}" if text else name for name, text in pairs)
                return ", ".join(name for name, _ in pairs), f"{message} ({detail})"
            if isinstance(data.get("field"), str) and data["field"]:
                return str(data["field"]), message
        return "", message

    async def finish(self, job: Job) -> dict[str, Any] | None:
        """Called once at the end of a run whose input was read to the end (also when the job
        was already finished), in the parent process, after every record finished (``job.record``
        is None). What it returns goes into ``summary.json`` as ``reconciled``. A failure must
        not lose the job: a RetryableError here is the target's to absorb (the next run of the
        same command calls ``finish`` again); an AbortRun stops the run resumably. Default:
        nothing."""
        return None

    def error_message(self, reply: Reply) -> str:
        """The API's own message from an error answer (override for its error shape)."""
        data = reply.json()
        if isinstance(data, dict):
            for key in ("message", "error", "detail", "title"):
                if isinstance(data.get(key), str) and data[key]:
                    return str(data[key])
        return reply.text() or f"HTTP {reply.status}"

    def classify(self, reply: Reply, stage: str) -> Reply:
        """Return a 2xx reply; raise the `bulk` error that says what to do with any other."""
        status = reply.status
        if 200 <= status < 300:
            return reply
        field, message = self.error_detail(reply)
        if status in (401, 403):
            raise AuthError(status, message, self.auth_hint)
        if status == 429:
            raise Throttled(message, retry_after=parse_retry_after(reply.headers.get("Retry-After")))
        if status >= 500:
            raise ServerError(status, message)
        if 300 <= status < 400:
            raise AbortRun(
                f"HTTP {status}: the API redirected to {reply.headers.get('Location', '?')}; "
                "check --base-url (credentials are never forwarded across redirects)"
            )
        raise RecordRefused(status, message, stage=stage, field=field)
