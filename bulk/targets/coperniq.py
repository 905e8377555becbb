"""Coperniq public API (``$COPERNIQ_BASE_URL``, real ``https://api.coperniq.io/v1``), seed 003,
API-NOTES §4 and the vendor's OpenAPI document (``fixtures/coperniq/coperniq-openapi.yml``).

Mapping
    See ``bulk.targets.coperniq_mapping`` (recordId from ``extra.recordId``, ``--option
    record_map=FILE.csv`` or the account titled with the customer id; catalog items by SKU,
    merged when one repeats; whole quantities; no tax at Coperniq). ``--create-missing``
    (``bulk.refs``): ``customers`` makes the account titled with the customer id when none is
    (``_account``), ``items`` the catalog item of a SKU none holds (``_make_catalog_item``).
Exactly once (no idempotency at Coperniq): look before creating, then sweep late copies
    Coperniq has no idempotency key and no unique field on invoices, and a create that ``bulk``
    gave up on -- or that a killed run sent -- can reach the API at any later time: a proxy, a
    load balancer or the API's own queue may hold it, and nothing the client does bounds how
    long. So no wait ("settle") can be made safe, and the design does not rest on one:

    1. *Look before creating.* Before creating any record (one an earlier run may have sent,
       ``job.maybe_sent_before``, from the resume file's write-ahead window, and, since
       ``--on-existing``, every other one too: an earlier job may hold it, see
       ``bulk.targets.coperniq_existing``), the record's invoices are listed (``GET
       /projects/{id}/invoices`` or ``/accounts/{id}/invoices``; the kind is probed once when the
       map does not say it), once per record (customer) per run, and the one whose description
       starts with the external id is taken (when several do -- copies that landed before the lookup
       -- the oldest is kept and its exact copies are deleted there and then, as in 3.; a DELETE
       that keeps failing fails the record, reported, instead of leaving a copy a ``recent`` sweep
       would not see). After a lost answer (timeout, reset, 5xx) the listing is polled for
       ``--option settle=SECONDS`` (default 10) before the create is sent again. Both only make a
       duplicate *rarer*.
    2. *Watch what may have a copy in flight.* A record whose create was sent by an earlier
       run (maybe), or whose answer was lost in this run, is written to the resume file
       (``coperniq.watch``: external id -> record, kind, the invoice id in ``id_map.csv``),
       in the same SQLite transaction as the checkpoint that first records its outcome.
    3. *Sweep at the end of every run* (:meth:`CoperniqTarget.finish`, after every record
       finished, in the parent process): the invoices that may hold a late copy are listed
       afresh -- ``--option sweep=records``: each watched record's invoices; ``recent``: ``GET
       /invoices?updated_after=T``, T the API's clock (``Date``) at the first answer of the
       earliest run that watched a record, less a minute (a copy that landed late did so after
       that run's lookup, so after T); ``auto`` (default): ``records`` for up to 100 watched
       projects/accounts, else ``recent`` -- and every other invoice carrying a watched external id
       that is an exact copy of the kept one (same record, description, status, due date and line
       items as a multiset of catalog item, quantity, unit price, unit cost and text) is deleted
       (``DELETE /invoices/{id}``, documented in Coperniq's OpenAPI ``delete-invoice``). The kept
       invoice is always the one ``id_map.csv`` names, so the map, the summary and the API agree. A
       copy that differs (edited in Coperniq since) is never deleted: it is counted
       as ``kept_differs`` and named in the note. A kept invoice that is gone is counted, not
       replaced. Lost answers: listings are retried (reads); a ``DELETE`` whose answer was
       lost is retried and its 404 means the first one did it; a sweep that cannot list a
       record (API down) leaves it for the next run (``unswept``).

    A late create that lands after the last sweep, i.e. after the job ended, stays a
    duplicate until the same command is run again: a finished job read again does nothing but
    this sweep (watched records are kept for good, so every later run sweeps them again). The
    cost per run: ``records``, one listing (per 100 invoices) per project or account holding
    a watched record; ``recent``, one request per 100 invoices the company created or changed
    since T. Watched are the records whose answer was lost and, after a kill, every record the
    resumed run was told an interrupted run may have sent (``job.maybe_sent_before``: the
    write-ahead window, up to ``--window`` records beyond the watermark, so with a small job
    it can be all of the rest). The user sees it in ``summary.json``
    (``reconciled``: ``watched``, ``duplicates_removed``, ``unswept``, ``kept_differs``,
    ``kept_missing``, ``sweep``) and in the CLI's line "N invoices are watched for late copies ... run
    the same command again later to sweep again". A record that ended ``uncertain`` (its
    create's outcome unknown after every retry) is watched with no kept invoice: the
    sweep keeps the oldest of its copies and deletes the exact others.
Limits
    100 requests/s per key (``default_limits``) and 5,000 per rolling 24 h. Every answer's
    ``X-RateLimit-Remaining`` is read: when it cannot cover the requests in flight, or a 429
    comes with Remaining <= 100 (Remaining lags), the run stops with
    :class:`~bulk.errors.QuotaExhausted` (exit 3, resumable) and says when to run again, instead
    of spending the day on 429s; a 429 with quota left is a short shared pause. Before stopping
    it lets the requests in flight finish, so no sent create is abandoned.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import email.utils
import functools
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any

import anyio

from ..errors import (
    ConfigError,
    InvalidRecord,
    QuotaExhausted,
    RecordError,
    RecordRefused,
    RetryableError,
    UnknownReference,
)
from ..records import Record
from ..refs import OPTION as CREATE_MISSING
from ..refs import begin_create, record_created
from ..refs import found as refs_found
from ..spacing import QuotaGate
from ..transport import Reply, Request
from .base import Created, Job, RunJob, Target
from .coperniq_existing import settle_invoice
from .coperniq_mapping import MAX_QUANTITY, comparable, external_id_of, invoice_body, load_record_map, merge_lines

__all__ = ["CoperniqTarget"]

_DAY = dt.timedelta(hours=24)
# A 429 while Remaining is at most this is the daily quota, not the per-second limit: Remaining
# lags (C-auth: usage is cached up to 60 s per key), so "almost nothing left" + 429 means "spent".
_QUOTA_429_MARGIN = 100
_RECOVERING = contextvars.ContextVar("coperniq_recovering", default=False)
_WATCH = "coperniq.watch"  # external id -> "record_id kind invoice_id": may have a late copy in flight
_REMOVED = "coperniq.removed"  # invoice id of a removed late copy -> its external id
_SWEEPS = 8  # records swept at once
_RECORDS_SWEEP_MAX = 100  # sweep=auto lists each record's invoices up to this many records, else the recent ones
_DATE_MARGIN = 60  # s: the API's Date and its updatedAt may come from different hosts' clocks
_NO_DATE_MARGIN = 3600  # s: without a Date header, the client's clock stands in, with this margin


def _exact(reply: Reply) -> Any:
    """The body with every JSON number that has a fraction as a Decimal (money stays exact)."""
    return json.loads(reply.content, parse_float=Decimal)


def _server_time(reply: Reply) -> int | None:
    """The API's clock (the ``Date`` header, RFC 9110) as POSIX seconds, None without one."""
    try:
        return int(email.utils.parsedate_to_datetime(reply.headers["Date"]).timestamp())
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def _remaining(reply: Reply) -> int | None:
    value = reply.headers.get("X-RateLimit-Remaining")
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


class _Missing(LookupError):
    """A lookup found nothing; turned into a per-record InvalidRecord by the caller."""

    def __init__(self, message: str, *, none: bool = False) -> None:
        super().__init__(message)
        self.none = none  # nothing at all (not several): a create may fill the gap


class CoperniqTarget(Target):
    name = "coperniq"
    credential_env = ("COPERNIQ_API_KEY",)
    base_url_env = "COPERNIQ_BASE_URL"
    # C-auth: 100 requests per second per key, reads and writes alike
    default_limits: Mapping[str, float] = {"*": 100.0}
    path_prefix = ""  # the documented base URL carries the version: https://api.coperniq.io/v1
    option_keys = ("record_map", "record_lookup", "default_catalog_item", "settle", "sweep")
    auth_hint = "check COPERNIQ_API_KEY: an API key of a user allowed to read records and create invoices"
    # --create-missing: customers as accounts (POST /accounts), items as catalog items (POST
    # /catalog-items). Without it nothing is created (an account is a CRM record: found by title).
    creatable = frozenset({"customers", "items"})

    def __init__(self, *, base_url: str, credentials: Mapping[str, str], options: Mapping[str, Any]) -> None:
        super().__init__(base_url=base_url, credentials=credentials, options=options)
        unknown = set(self.options) - {*self.option_keys, CREATE_MISSING}
        if unknown:
            raise ConfigError(f"unknown coperniq option(s) {', '.join(sorted(unknown))}; known: "
                              "record_map, record_lookup, default_catalog_item, settle, sweep")
        self.sweep = self.options.get("sweep", "auto")
        if self.sweep not in ("auto", "records", "recent"):
            raise ConfigError("--option sweep must be auto, records or recent")
        try:
            self.settle = float(self.options.get("settle", 10))
        except ValueError:
            self.settle = -1.0
        if not 0 <= self.settle <= 3600:
            raise ConfigError("--option settle must be seconds between 0 and 3600")
        path = self.options.get("record_map")
        self.record_map = load_record_map(path) if path else {}
        self.lookup = self.options.get("record_lookup", "off" if path else "title")
        if self.lookup not in ("title", "off"):
            raise ConfigError("--option record_lookup must be title or off")
        self.default_item = self.options.get("default_catalog_item", "DISCOUNT")
        self.create_accounts = "customers" in self.create_missing
        self.create_items = "items" in self.create_missing
        self.start_run()  # usable outside a run too (e.g. classify in a unit test); the engine calls it again

    def start_run(self) -> None:
        super().start_run()
        # this run's state, bound to the running loop lazily (made afresh by every run)
        self._create_lock: anyio.Lock | None = None
        self._catalogue: dict[str, str] | None = None
        self._lock: anyio.Lock | None = None
        self._listings: dict[int, dict[str | None, list[dict[str, Any]]]] = {}
        self._listing_flights: dict[int, anyio.Event] = {}
        self._gate = QuotaGate()  # X-RateLimit-Remaining covers the requests in flight
        self._limit = "5000"
        self._first_answer: dt.datetime | None = None
        self._server_start: int | None = None  # the API's clock (Date) at this run's first answer
        self._tally = {"unswept": 0, "kept_differs": 0, "kept_missing": 0}  # this run's reconciliation
        self._differs: list[str] = []

    def headers(self) -> dict[str, str]:
        return {"x-api-key": self.credentials["COPERNIQ_API_KEY"], "Accept": "application/json"}

    # --- offline checks ------------------------------------------------------------------
    def check(self, record: Record) -> None:
        for i, line in enumerate(record.lines):
            if line.quantity != line.quantity.to_integral_value() or line.quantity > MAX_QUANTITY:
                raise InvalidRecord(
                    record.line_no, f"lines[{i}].quantity",
                    f"Coperniq quantities are whole numbers up to {MAX_QUANTITY}, got {line.quantity}",
                    "use a whole quantity (e.g. bill 2.5 h as 150 min at a per-minute price)")
        skus = [line.item_ref or self.default_item for line in record.lines]
        merge_lines(record, skus, self._names(record))
        self._record_ref(record)

    def _names(self, record: Record) -> list[str]:
        return [f"catalog item {ln.item_ref}" if ln.item_ref else
                f"the default catalog item {self.default_item} (a line without item_ref)" for ln in record.lines]

    def _record_ref(self, record: Record) -> tuple[int, str | None] | None:
        """(recordId, kind) known offline, or None when it is to be looked up by title."""
        raw = record.extra.get("recordId")
        if raw is not None:
            text = str(raw) if type(raw) in (int, str) else ""
            if text.isascii() and text.isdigit() and int(text) >= 1:
                return int(text), None
            raise InvalidRecord(record.line_no, "extra.recordId", f"must be a positive integer, got {raw!r}",
                                "give the id of the Coperniq project or account the invoice belongs to")
        found = self.record_map.get(record.customer.external_id)
        if found is not None:
            return found
        if self.lookup == "title" or self.create_accounts:  # found by title, or made (--create-missing)
            return None
        where = "is not in the record_map file" if self.record_map else "has no record map"
        raise InvalidRecord(record.line_no, "extra.recordId",
                            f"no Coperniq recordId: customer {record.customer.external_id!r} {where}",
                            "add extra.recordId, or map the customer in --option record_map=FILE.csv "
                            "(customer_external_id,record_id), or allow --option record_lookup=title")

    # --- quota (X-RateLimit-*) ------------------------------------------------------------
    def classify(self, reply: Reply, stage: str) -> Reply:
        remaining = _remaining(reply)
        if self._first_answer is None:
            self._first_answer = dt.datetime.now(dt.UTC)
        if self._server_start is None:
            self._server_start = _server_time(reply)
        if remaining is not None:
            self._gate.remaining = remaining
            self._limit = reply.headers.get("X-RateLimit-Limit") or self._limit
        left = self._gate.remaining
        if reply.status == 429 and left is not None and left <= _QUOTA_429_MARGIN:
            raise self._exhausted()
        return super().classify(reply, stage)

    def _exhausted(self) -> QuotaExhausted:
        now = dt.datetime.now(dt.UTC)
        start = min(self._first_answer or now, now)
        at, full = (start + _DAY).isoformat(timespec="seconds"), (now + _DAY).isoformat(timespec="seconds")
        return QuotaExhausted(
            f"Coperniq's daily request quota for this API key ({self._limit} per rolling 24 h) is used up "
            f"(X-RateLimit-Remaining {self._gate.remaining}); stopped instead of spending the day on 429s; resume "
            f"after {at} with the same command, when this run's first requests leave the window (the whole "
            f"quota is back by {full})", resume_at=at)

    async def _send(self, job: RunJob, req: Request, *, stage: str,
                    recover: Callable[[], Awaitable[Reply | None]] | None = None) -> Reply:
        """job.send, but only while the last X-RateLimit-Remaining covers the requests in flight.

        When it does not, wait for those to finish (their answers update Remaining); stop only
        when nothing is in flight and Remaining is still spent, so no sent create is abandoned.
        """
        if _RECOVERING.get():  # a lookup inside the retry of a create that is itself in flight
            return await job.send(req, stage=stage, recover=recover)
        async with self._gate.slot(self._exhausted):  # the engine's quota hook (bulk.spacing)
            return await job.send(req, stage=stage, recover=recover)

    # --- upload ----------------------------------------------------------------------------
    async def upload(self, record: Record, job: Job) -> Created:
        record_id, kind = await self._record(record, job)
        items = await self._items(record, job)
        return await self._create(record, record_id, kind, items, job)

    async def _create(self, record: Record, record_id: int, kind: str | None,
                      items: list[tuple[int, Decimal, list[int]]], job: Job) -> Created:
        at_risk = job.maybe_sent_before  # an earlier run may have sent it: its copy may land late
        # Every run looks (not only a resumed one): an earlier JOB may hold the invoice
        # (--on-existing, bulk.targets.coperniq_existing).
        try:
            listing = await self._listing(record_id, kind, job)
        except RecordRefused as exc:
            raise self._stale(record, exc, exc.status == 404) from None
        copies = listing.get(record.external_id)
        if copies:
            kept = min(copies, key=lambda c: int(c["id"]))
            if at_risk:
                # Copies already there are removed now: the sweep's `recent` listing starts
                # at this run's first answer, after they were made.
                await self._remove_copies({record.external_id: str(kept["id"])}, copies, job, listed_all=True,
                                          strict=True)
            action, kept = await settle_invoice(self, job, kept, invoice_body(record, record_id, items),
                                                ours=at_risk, parse=_exact)
            if at_risk:
                return self._watch(record, record_id, kind, kept, job, existed=True, action=action)
            return self._created(record, record_id, kept, existed=True, action=action)
        found_now: list[dict[str, Any]] = []

        async def recover() -> Reply | None:
            # The attempt we gave up on may still commit at the server: keep looking for `settle`
            # seconds before the engine sends it again. That only makes a copy rarer; the sweep
            # in finish() removes one that lands later. A lookup that failed proves nothing:
            # look again (the engine's give-up time bounds it).
            nonlocal at_risk
            at_risk = True
            token = _RECOVERING.set(True)
            try:
                start, pause = time.monotonic(), 0.5
                while True:
                    try:
                        invoice = await self._find(record.external_id, record_id, kind, job)
                        known = True
                    except RetryableError:
                        invoice, known = None, False
                    if invoice is not None:
                        break
                    left = self.settle - (time.monotonic() - start)
                    if known and left <= 0:
                        return None
                    await anyio.sleep(min(pause, left) if left > 0 else pause)
                    pause = min(pause * 2, 5.0)
            finally:
                _RECOVERING.reset(token)
            found_now.append(invoice)
            return Reply(200, {}, b"")

        try:
            reply = await self._send(job, Request("POST", "/invoices", json=invoice_body(record, record_id, items)),
                                     stage="invoice", recover=recover)
        except RecordRefused as exc:
            raise self._stale(record, exc, exc.field == "recordId" and "not found" in exc.api_message) from None
        except RetryableError as exc:
            if exc.maybe_committed:  # ends uncertain: its attempts may all land; keep one of them
                job.remember(_WATCH, record.external_id, f"{record_id} {kind or '-'} - {self._since()}")
            raise
        invoice, existed = (found_now[0], True) if found_now else (_exact(reply), False)
        if not at_risk:
            return self._created(record, record_id, invoice, existed=existed)
        return self._watch(record, record_id, kind, invoice, job, existed=existed)

    def _watch(self, record: Record, record_id: int, kind: str | None, invoice: dict[str, Any], job: Job,
               *, existed: bool, action: str | None = None) -> Created:
        """The record's outcome, kept in the resume file for the sweeps of this and later runs."""
        job.remember(_WATCH, record.external_id, f"{record_id} {kind or '-'} {invoice['id']} {self._since()}")
        return self._created(record, record_id, invoice, existed=existed, action=action)

    def _since(self) -> int:
        """A time (the API's clock) before any copy this run can still see land late was made."""
        return self._server_start or int(time.time()) - _NO_DATE_MARGIN

    def _stale(self, record: Record, exc: RecordRefused, unknown_record: bool) -> RecordRefused:
        """``exc`` as an :class:`UnknownReference` when it says the account we found by title is
        gone (deleted, or made again under a new id): the engine looks the title up again."""
        if not unknown_record or self._record_ref(record) is not None:
            return exc
        return UnknownReference(exc.status, exc.api_message, stage=exc.stage, field=exc.field,
                                refs=(("coperniq.record", record.customer.external_id),))

    @staticmethod
    def _created(record: Record, record_id: int, invoice: dict[str, Any], *, existed: bool,
                 action: str | None = None) -> Created:
        amount = invoice.get("amount")
        return Created(
            invoice_id=str(invoice["id"]), customer_id=str(record_id),
            status=str(invoice.get("status") or record.status).lower(),
            reported_gross=Decimal(amount) if amount is not None and comparable(record) else None,
            existed=existed, action=action)

    async def _record(self, record: Record, job: Job) -> tuple[int, str | None]:
        known = self._record_ref(record)
        if known is not None:
            return known
        customer = record.customer.external_id
        factory = (functools.partial(self._account, record, job) if self.create_accounts
                   else lambda: self._by_title(customer, job))
        try:
            found = await job.resolve("coperniq.record", customer, factory)
        except _Missing as exc:
            raise InvalidRecord(record.line_no, "customer.external_id", str(exc),
                                "add extra.recordId or map the customer in --option record_map=FILE.csv") from None
        return int(found), "accounts"

    async def _by_title(self, title: str, job: Job) -> str:
        for page in range(1, 11):
            reply = await self._send(job, Request("GET", "/accounts", params={
                "title": title, "page": str(page), "page_size": "100"}, kind="read"), stage="customer")
            rows = reply.json() or []
            hits = [row["id"] for row in rows if row.get("title") == title]
            if len(hits) > 1:
                raise _Missing(f"{len(hits)} Coperniq accounts are titled {title!r}")
            if hits:
                return str(hits[0])
            if len(rows) < 100:
                break
        raise _Missing(f"no Coperniq account is titled {title!r}", none=True)

    async def _account(self, record: Record, job: Job) -> str:
        """The account titled with the customer's external id; created when there is none
        (``--create-missing customers``). The create is ``POST /accounts?match_by=title&
        match_found_strategy=skip``: Coperniq itself answers an account already titled so (a
        copy of a killed run's create) instead of making a second one, and after a lost answer
        the title is looked up again before the create is resent."""
        title = record.customer.external_id
        try:
            hit = await self._by_title(title, job)
        except _Missing as exc:
            if not exc.none:
                raise
        else:
            refs_found(job, "account", title, hit)  # made by a killed run of this job?
            return hit
        c = record.customer
        address = c.address
        line = ", ".join(p for p in (address.line1, address.line2, address.postal_code, address.city, address.region,
                                     address.country) if p) if address is not None else ""
        body: dict[str, Any] = {"title": title, "address": [line], "accountType": "COMMERCIAL" if c.company else
                                "RESIDENTIAL", "primaryEmail": c.email}
        found: list[str] = []

        async def recover() -> Reply | None:
            try:
                found.append(await self._by_title(title, job))
                return Reply(200, {}, b"")
            except _Missing:
                return None

        await begin_create(job, "account", title)
        reply = await self._send(job, Request("POST", "/accounts", params={
            "match_by": "title", "match_found_strategy": "skip"}, json=body), stage="customer", recover=recover)
        account_id = found[0] if found else str(_exact(reply)["id"])
        record_created(job, "account", title, account_id)
        return account_id

    async def _items(self, record: Record, job: Job) -> list[tuple[int, Decimal, list[int]]]:
        resolved = []
        for i, line in enumerate(record.lines):
            sku = line.item_ref or self.default_item
            factory = (functools.partial(self._make_catalog_item, sku, line.title, line.unit_price, job)
                       if self.create_items and line.item_ref else functools.partial(self._catalog_item, sku, job))
            try:
                value = await job.resolve("coperniq.catalog", sku, factory)
            except _Missing as exc:
                raise InvalidRecord(record.line_no, f"lines[{i}].item_ref", str(exc),
                                    "create the item in Coperniq's catalog, fix item_ref, or set "
                                    "--option default_catalog_item=SKU for lines without one") from None
            catalog_id, _, cost = value.partition(" ")
            resolved.append((int(catalog_id), Decimal(cost)))
        groups = merge_lines(record, [catalog_id for catalog_id, _ in resolved], self._names(record))
        return [(resolved[g[0]][0], resolved[g[0]][1], g) for g in groups]

    async def _catalog_item(self, sku: str, job: Job) -> str:
        """``"<id> <unit cost>"`` of the active catalog item with this SKU (one list per run)."""
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if self._catalogue is None:
                reply = await self._send(job, Request("GET", "/catalog-items", kind="read"), stage="item")
                catalogue: dict[str, str] = {}
                for item in _exact(reply):
                    key = item.get("sku")
                    if key and not item.get("isArchived"):
                        cost = item.get("cost") or 0
                        catalogue[key] = "" if key in catalogue else f"{item['id']} {cost}"
                self._catalogue = catalogue
        found = self._catalogue.get(sku)
        if not found:
            what = "several active catalog items have" if found == "" else "no active catalog item has"
            raise _Missing(f"{what} the SKU {sku!r}")
        return found

    async def _make_catalog_item(self, sku: str, title: str, price: Decimal, job: Job) -> str:
        """``_catalog_item``, creating the item when no active one has the SKU
        (``--create-missing items``): ``POST /catalog-items`` with the first line's title as its
        name, type SERVICE, category INSTALLATION (``OTHER`` is in both category enums, which the
        document's ``oneOf`` refuses), cost 0 and the line's unit price. Coperniq has no key to
        make the create idempotent, so the catalogue is listed afresh before every create and
        after a lost answer (creates one at a time, each listing seeing the ones before), and a
        create refused for its SKU (taken meanwhile) takes the item that holds it."""
        try:
            listed = await self._catalog_item(sku, job)
        except _Missing as exc:
            if "several" in str(exc):
                raise
        else:
            refs_found(job, "item", sku, listed.partition(" ")[0])  # made by a killed run of this job?
            return listed
        if self._create_lock is None:
            self._create_lock = anyio.Lock()
        async with self._create_lock:
            fresh = await self._fresh_item(sku, job)
            if fresh is not None:
                refs_found(job, "item", sku, fresh.partition(" ")[0])
                return fresh
            await begin_create(job, "item", sku)
            body = {"name": title[:255] or sku, "type": "SERVICE", "category": "INSTALLATION", "cost": 0,
                    "price": price, "sku": sku, "description": None}
            found: list[str] = []

            async def recover() -> Reply | None:
                hit = await self._fresh_item(sku, job)
                if hit is None:
                    return None
                found.append(hit)
                return Reply(200, {}, b"")

            try:
                reply = await self._send(job, Request("POST", "/catalog-items", json=body), stage="item",
                                         recover=recover)
            except RecordRefused as exc:
                if exc.status != 400 or exc.field != "sku" or (hit := await self._fresh_item(sku, job)) is None:
                    raise
                refs_found(job, "item", sku, hit.partition(" ")[0])  # ours only if a killed run began it
                return hit  # another's create holds the SKU: use it
            if found:
                value = found[0]
            else:
                item = _exact(reply)
                value = f"{item['id']} {item.get('cost') or 0}"
            record_created(job, "item", sku, value.partition(" ")[0])
            assert self._catalogue is not None
            self._catalogue[sku] = value
            return value

    async def _fresh_item(self, sku: str, job: Job) -> str | None:
        """``"<id> <cost>"`` of the active catalog item with ``sku`` in a fresh listing, else None
        (the run's cached catalogue is replaced by it)."""
        reply = await self._send(job, Request("GET", "/catalog-items", kind="read"), stage="item")
        catalogue: dict[str, str] = {}
        for item in _exact(reply):
            key = item.get("sku")
            if key and not item.get("isArchived"):
                catalogue[key] = "" if key in catalogue else f"{item['id']} {item.get('cost') or 0}"
        self._catalogue = catalogue
        found = catalogue.get(sku)
        if found == "":
            raise _Missing(f"several active catalog items have the SKU {sku!r}")
        return found

    # --- finding an invoice that may exist already -----------------------------------------
    async def _kind(self, record_id: int, kind: str | None, job: RunJob) -> str:
        if kind is not None:
            return kind
        return await job.resolve("coperniq.kind", str(record_id), lambda: self._probe(record_id, job))

    async def _probe(self, record_id: int, job: RunJob) -> str:
        for kind in ("projects", "accounts"):
            try:
                await self._send(job, Request("GET", f"/{kind}/{record_id}/invoices", params={"page_size": "1"},
                                              kind="read"), stage="lookup")
                return kind
            except RecordRefused as exc:
                if exc.status != 404:
                    raise
        return "none"  # no such record: nothing to find; the create will say so

    async def _pages(self, record_id: int, kind: str | None, job: RunJob) -> AsyncIterator[list[dict[str, Any]]]:
        kind = await self._kind(record_id, kind, job)
        page = 1
        while kind != "none":
            reply = await self._send(job, Request("GET", f"/{kind}/{record_id}/invoices", params={
                "page": str(page), "page_size": "100", "order_by": "desc"}, kind="read"), stage="lookup")
            data = _exact(reply)
            yield data["items"]
            if not data.get("has_more"):
                return
            page += 1

    async def _find(self, external_id: str, record_id: int, kind: str | None, job: Job) -> dict[str, Any] | None:
        """The record's invoice whose description starts with ``external_id`` (fresh listing)."""
        async for items in self._pages(record_id, kind, job):
            for invoice in items:
                if external_id_of(invoice.get("description")) == external_id:
                    return dict(invoice)
        return None

    async def _listing(self, record_id: int, kind: str | None, job: Job) -> dict[str | None, list[dict[str, Any]]]:
        """All of a record's invoices (lists) by external id, listed once per run (single flight):
        what earlier runs made. (A lost answer in this run is looked up afresh by :meth:`_find`.)"""
        while record_id not in self._listings:
            flight = self._listing_flights.get(record_id)
            if flight is not None:
                await flight.wait()  # the owner failed if there is still no listing: try ourselves
                continue
            flight = self._listing_flights[record_id] = anyio.Event()
            try:
                found: dict[str | None, list[dict[str, Any]]] = {}
                async for items in self._pages(record_id, kind, job):
                    for invoice in items:
                        found.setdefault(external_id_of(invoice.get("description")), []).append(invoice)
                self._listings[record_id] = found
            finally:
                del self._listing_flights[record_id]
                flight.set()
        return self._listings[record_id]

    # --- the sweep: late copies of watched records ----------------------------------------
    async def finish(self, job: RunJob) -> dict[str, Any]:
        """Delete every exact copy of a watched record's kept invoice (see the module docstring)."""
        watched = job.remembered(_WATCH)
        by_record: dict[tuple[int, str | None], dict[str, str]] = defaultdict(dict)
        since = None
        for external_id, value in watched.items():
            rid, rkind, invoice_id, started = value.split(" ")
            by_record[(int(rid), None if rkind == "-" else rkind)][external_id] = invoice_id
            since = int(started) if since is None else min(since, int(started))
        mode = self.sweep if self.sweep != "auto" else (
            "records" if len(by_record) <= _RECORDS_SWEEP_MAX else "recent")
        if mode == "records" or since is None:
            limiter = anyio.CapacityLimiter(_SWEEPS)

            async def sweep(record_id: int, kind: str | None, keep: dict[str, str]) -> None:
                async with limiter:
                    try:
                        found = [dict(inv) async for page in self._pages(record_id, kind, job) for inv in page]
                    except (RetryableError, RecordError):
                        self._tally["unswept"] += len(keep)  # the next run sweeps it again
                        return
                    await self._remove_copies(keep, found, job, listed_all=True)

            async with anyio.create_task_group() as tg:
                for (record_id, kind), keep in by_record.items():
                    tg.start_soon(sweep, record_id, kind, keep)
        else:
            keep = {ext: inv for group in by_record.values() for ext, inv in group.items()}
            try:
                found = await self._recent(since - _DATE_MARGIN, job)
            except (RetryableError, RecordError):
                self._tally["unswept"] += len(keep)
            else:
                await self._remove_copies(keep, found, job, listed_all=False)
        return self._report(len(watched), len(job.remembered(_REMOVED)), mode)

    async def _recent(self, since: int, job: RunJob) -> list[dict[str, Any]]:
        """Every invoice updated after ``since`` (the API's clock), oldest first: any copy that
        can have landed late was created after the first answer of the run that watched it."""
        after = dt.datetime.fromtimestamp(since, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            reply = await self._send(job, Request("GET", "/invoices", params={
                "updated_after": after, "page": str(page), "page_size": "100", "order_by": "asc"},
                kind="read"), stage="reconcile")
            data = _exact(reply)
            found.extend(dict(inv) for inv in data["items"])
            if not data.get("has_more"):
                return found
            page += 1

    async def _remove_copies(self, keep: dict[str, str], found: list[dict[str, Any]], job: RunJob, *,
                             listed_all: bool, strict: bool = False) -> None:
        """Delete the exact copies among ``found`` of each kept invoice (external id -> invoice id).
        ``listed_all``: ``found`` holds all of the record's invoices (else only recent ones, and
        a kept invoice not among them is read by id). ``strict``: a DELETE that keeps failing
        raises (the record fails and is reported) instead of being left to the next sweep."""
        copies: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
        for invoice in found:
            ext = external_id_of(invoice.get("description"))
            if ext in keep:
                copies[ext].append(invoice)
        for external_id, invoice_id in keep.items():
            mine = copies.get(external_id, [])
            if invoice_id == "-":
                # The record ended uncertain: no id in id_map.csv; keep the oldest copy. Every
                # copy was made after its run's first answer, so a recent listing holds them all.
                if not mine:
                    continue
                invoice_id = str(min(int(c["id"]) for c in mine))
            kept = next((c for c in mine if str(c["id"]) == invoice_id), None)
            others = [c for c in mine if c is not kept]
            if kept is None and not listed_all and others:
                try:
                    kept = _exact(await self._send(job, Request("GET", f"/invoices/{invoice_id}", kind="read"),
                                                   stage="reconcile"))
                except RecordRefused as exc:
                    if exc.status != 404:  # not "gone": unknown, so checked again by the next run
                        self._tally["unswept"] += 1
                        continue
                except RetryableError:
                    self._tally["unswept"] += 1
                    continue
            if kept is None:
                if listed_all or others:
                    self._tally["kept_missing"] += 1
                continue
            for other in others:
                if _content(other) != _content(kept):
                    self._tally["kept_differs"] += 1
                    self._differs.append(external_id)
                    continue
                try:
                    await self._delete(int(other["id"]), job)
                except (RetryableError, RecordError):
                    if strict:
                        raise
                    self._tally["unswept"] += 1
                    continue
                job.remember(_REMOVED, str(other["id"]), external_id)

    def _report(self, watched: int, removed: int, mode: str) -> dict[str, Any]:
        tally, differs = self._tally, self._differs
        report: dict[str, Any] = {"watched": watched, "duplicates_removed": removed, **tally, "sweep": mode}
        if watched:
            note = (f"{watched} invoices are watched for late copies of an earlier attempt "
                    f"(the API has no idempotency): {removed} such copies deleted so far")
            if tally["unswept"]:
                note += f"; {tally['unswept']} could not be checked now"
            if differs:
                note += (f"; {len(differs)} other invoices carry a watched id but differ (e.g. {differs[0]!r}):"
                         " check them")
            report["note"] = note + "; run the same command again later to sweep again"
        return report

    async def _delete(self, invoice_id: int, job: RunJob) -> None:
        try:
            await self._send(job, Request("DELETE", f"/invoices/{invoice_id}"), stage="reconcile")
        except RecordRefused as exc:
            if exc.status != 404:  # 404: gone already (our earlier DELETE, whose answer was lost)
                raise


def _content(invoice: dict[str, Any]) -> tuple[Any, ...]:
    """What ``bulk`` sent for an invoice, as the API keeps it: two copies of one create are equal."""
    lines = sorted(
        ((li.get("catalogItemId"), li.get("quantity"), _number(li.get("unitPrice")), _number(li.get("unitCost")),
          li.get("description")) for li in invoice.get("lineItems") or []),
        key=repr)
    return (invoice.get("description"), invoice.get("status"), (invoice.get("record") or {}).get("id"),
            invoice.get("dueDate"), lines)


def _number(value: Any) -> Decimal | None:
    """A JSON number as an exact Decimal (1.50 == 1.5), None when absent or not a number."""
    try:
        return None if value is None or isinstance(value, bool) else Decimal(str(value))
    except ArithmeticError:
        return None
