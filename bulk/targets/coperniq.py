"""Coperniq public API (``$COPERNIQ_BASE_URL``, real ``https://api.coperniq.io/v1``), seed 003,
API-NOTES §4 and the vendor's OpenAPI document (``fixtures/coperniq/coperniq-openapi.yml``).

Mapping
    See ``bulk.targets.coperniq_mapping`` (recordId from ``extra.recordId``, ``--option
    record_map=FILE.csv`` or the account titled with the customer id; catalog items by SKU,
    merged when one repeats; whole quantities; no tax at Coperniq). ``--create-missing``
    (``bulk.refs``): ``customers`` makes the account titled with the customer id when none is
    (``Records.account``), ``items`` the catalog item of a SKU none holds (``Catalog.make``).
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

import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import anyio

from ..errors import ConfigError, InvalidRecord, RecordRefused, RetryableError, UnknownReference
from ..records import Record
from ..refs import OPTION as CREATE_MISSING
from ..transport import Reply, Request
from ._coperniq_catalog import Catalog, line_names
from ._coperniq_invoices import Invoices
from ._coperniq_quota import Quota, Recover, recovering
from ._coperniq_records import Records
from ._coperniq_sweep import WATCH, Sweep
from .base import Created, Job, RunJob, Target
from .coperniq_existing import settle_invoice
from .coperniq_mapping import MAX_QUANTITY, comparable, exact, invoice_body, load_record_map, merge_lines

__all__ = ["CoperniqTarget"]


class CoperniqTarget(Target):
    """The Coperniq client. Its parts, one module each: the record of an invoice
    (``_coperniq_records``), catalog items (``_coperniq_catalog``), a record's invoices
    (``_coperniq_invoices``), the quota gate (``_coperniq_quota``) and the sweep
    (``_coperniq_sweep``); this class checks the options, makes the run's parts in
    :meth:`start_run` and creates each invoice exactly once (:meth:`upload`)."""

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
        # options only (no run state): check() uses it offline, before any run
        self._records = Records(record_map=self.record_map, lookup=self.lookup, create=self.create_accounts,
                                send=self.send)

    def start_run(self) -> None:
        super().start_run()
        # this run's state (made afresh by every run; anyio primitives bound to its loop lazily)
        self._quota = Quota()
        self._catalog = Catalog(send=self.send, default_item=self.default_item, create=self.create_items)
        self._invoices = Invoices(self.send)
        self._sweep = Sweep(send=self.send, invoices=self._invoices, mode=self.sweep)

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
        merge_lines(record, skus, line_names(record, self.default_item))
        self._records.known(record)

    # --- quota (X-RateLimit-*) ------------------------------------------------------------
    def classify(self, reply: Reply, stage: str) -> Reply:
        self._quota.observe(reply)
        return super().classify(reply, stage)

    async def send(self, job: RunJob, req: Request, *, stage: str, recover: Recover | None = None) -> Reply:
        """``job.send`` behind this run's quota gate (:meth:`Quota.send`), the one way every
        Coperniq request goes out: the client's parts (records, catalog, invoices, sweep) and
        ``bulk.targets.coperniq_existing`` send through it, never through ``job.send`` directly,
        so no request escapes the daily quota. Inside the run only (the gate is run state)."""
        return await self._quota.send(job, req, stage=stage, recover=recover)

    # --- upload ----------------------------------------------------------------------------
    async def upload(self, record: Record, job: Job) -> Created:
        record_id, kind = await self._records.resolve(record, job)
        items = await self._catalog.items(record, job)
        return await self._create(record, record_id, kind, items, job)

    async def _create(self, record: Record, record_id: int, kind: str | None,
                      items: list[tuple[int, Decimal, list[int]]], job: Job) -> Created:
        at_risk = job.maybe_sent_before  # an earlier run may have sent it: its copy may land late
        # Every run looks (not only a resumed one): an earlier JOB may hold the invoice
        # (--on-existing, bulk.targets.coperniq_existing).
        try:
            listing = await self._invoices.listing(record_id, kind, job)
        except RecordRefused as exc:
            raise self._stale(record, exc, exc.status == 404) from None
        copies = listing.get(record.external_id)
        if copies:
            kept = min(copies, key=lambda c: int(c["id"]))
            if at_risk:
                # Copies already there are removed now: the sweep's `recent` listing starts
                # at this run's first answer, after they were made.
                await self._sweep.remove_copies({record.external_id: str(kept["id"])}, copies, job,
                                                listed_all=True, strict=True)
            action, kept = await settle_invoice(self, job, kept, invoice_body(record, record_id, items),
                                                ours=at_risk, parse=exact)
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
            with recovering():
                start, pause = time.monotonic(), 0.5
                while True:
                    try:
                        invoice = await self._invoices.find(record.external_id, record_id, kind, job)
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
            found_now.append(invoice)
            return Reply(200, {}, b"")

        try:
            reply = await self.send(job, Request("POST", "/invoices", json=invoice_body(record, record_id, items)),
                                     stage="invoice", recover=recover)
        except RecordRefused as exc:
            raise self._stale(record, exc, exc.field == "recordId" and "not found" in exc.api_message) from None
        except RetryableError as exc:
            if exc.maybe_committed:  # ends uncertain: its attempts may all land; keep one of them
                job.remember(WATCH, record.external_id, f"{record_id} {kind or '-'} - {self._quota.since()}")
            raise
        invoice, existed = (found_now[0], True) if found_now else (exact(reply), False)
        if not at_risk:
            return self._created(record, record_id, invoice, existed=existed)
        return self._watch(record, record_id, kind, invoice, job, existed=existed)

    def _watch(self, record: Record, record_id: int, kind: str | None, invoice: dict[str, Any], job: Job,
               *, existed: bool, action: str | None = None) -> Created:
        """The record's outcome, kept in the resume file for the sweeps of this and later runs."""
        job.remember(WATCH, record.external_id, f"{record_id} {kind or '-'} {invoice['id']} {self._quota.since()}")
        return self._created(record, record_id, invoice, existed=existed, action=action)

    def _stale(self, record: Record, exc: RecordRefused, unknown_record: bool) -> RecordRefused:
        """``exc`` as an :class:`UnknownReference` when it says the account we found by title is
        gone (deleted, or made again under a new id): the engine looks the title up again."""
        if not unknown_record or self._records.known(record) is not None:
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

    # --- the sweep: late copies of watched records ----------------------------------------
    async def finish(self, job: RunJob) -> dict[str, Any]:
        """Delete every exact copy of a watched record's kept invoice (see the module docstring)."""
        return await self._sweep.run(job)
