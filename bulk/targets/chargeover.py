"""ChargeOver REST API v3 (``$CHARGEOVER_BASE_URL/api/v3``), seed 002 and API-NOTES.md section 3.

Written against the contract in ``bulk.sandbox.chargeover`` (what is documented, what is assumed).

HTTP Basic auth (public key : private key). What a record becomes on the wire is in
``bulk.targets.chargeover_mapping``. The customer must exist: it is found by
``GET /customer/external_key:<id>`` and created once per customer. The invoice's
``currency_id`` is the account's id for the ISO code, found by ``GET
/currency?where=currency_iso4217:EQUALS:X`` (cached) or given with ``--option
currency_map=EUR:2,USD:1``.

Items. ChargeOver needs an existing item on every line. ``item_ref`` is resolved to an
``item_id`` by ``GET /item/external_key:<ref>``, cached for the run; an unknown ref fails the
record naming the line, unless ``--create-missing items``: then an item the lookup does not
find is created (``POST /item``: ``name`` the first line's title that uses it, ``external_key``
the ref, ``type`` service), once (single flight, looked up again before any resend; a create
refused because the key is taken resolves to that item), and listed in ``created_refs.csv``.
Lines without ``item_ref`` (discounts) use ``--option
default_item=<item external key>``; without it such records are rejected before anything is
sent. The embedded sandbox defaults to its seeded ``ADJUSTMENT`` item
(``bulk.embedded``), so ``bulk upload file --target chargeover`` needs no setup.

Tax and totals (the decision). ChargeOver applies the account's tax configuration and does not
publish its tax-override fields, so no tax is sent: ``line_rate`` is the record's unit price
as written, net or gross. ChargeOver's ``total`` is then Σ round(rate x quantity) plus the
account's taxes. The money rule's gross equals Σ round(quantity x price) exactly when prices
are gross or every tax rate is 0, so only for those records is ``total`` comparable: it is
read back (one GET) and reported as ``reported_gross``, so the summary's mismatch list shows
any difference: the account adding tax on top of gross prices, or rounding other than ours.
For net prices with tax, ChargeOver's total depends on the account's tax setup, not on the
record: ``reported_gross`` is None. ``--option verify_totals=false`` skips the GET.

Exactly once. External keys are unique and never reusable (O-ext), and there is no
idempotency header. A create whose answer may be lost is looked up by external key before it
is resent (``job.send(recover=...)``); a create refused with 400 is looked up too and, when the
key exists, resolves to that object (``Created.existed``); an invoice of another customer
holding the key fails the record instead. A create of a killed run, or one given up on, that
reaches ChargeOver late (after a resumed run looked and created) is refused by the key, so no
wait and no sweep is needed here, unlike Coperniq: whichever copy comes second is a 400.

Bulk. By default every call (creates, lookups, the total read-back) goes through ``POST
/api/v3/_bulk``, up to 25 per request (``bulk.targets.chargeover_bulk``); ``--option
bulk=false`` sends one request per call. Measured against the sandbox at 20 requests/s, the
client paced at that rate, 1000 generated invoices: one request per call 86.4 s (1667
requests), ``_bulk`` 4.5 s (69 requests): 19x faster (without the read-back: 65.1 s vs 3.5 s,
1258 vs 53 requests). With no limit at all it still halves the time (300 invoices: 0.45 s vs
0.22 s).

Rate limits. ChargeOver documents 429 but no numbers and no Retry-After, so the real-API
defaults are conservative guesses: 2 writes and 4 reads per second; a ``_bulk`` call is a
write, so that is up to 50 calls per second. A 429 without Retry-After pauses every worker
1 s (the engine's rule); ``--rate`` overrides the guesses.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from ..errors import ConfigError, InvalidRecord, RecordRefused, UnknownReference
from ..records import Record
from ..refs import OPTION as CREATE_MISSING
from ..transport import Reply, Request
from ._chargeover_calls import Calls, field_of
from ._chargeover_refs import NotFound, References
from .base import Created, Job, RunJob, Target
from .chargeover_bulk import MAX_BULK, Batcher, parse
from .chargeover_existing import settle_invoice
from .chargeover_mapping import API, comparable, invoice_body

__all__ = ["ChargeOverTarget"]

PUBLIC, PRIVATE = "CHARGEOVER_PUBLIC_KEY", "CHARGEOVER_PRIVATE_KEY"
OPTIONS = ("default_item", "bulk", "bulk_size", "bulk_linger_ms", "verify_totals", "currency_map")

_GONE = re.compile(r": no (customer|item|currency) ")


def _no_item(record: Record, i: int) -> InvalidRecord:
    return InvalidRecord(record.line_no, f"lines[{i}].item_ref",
                         "is missing, and ChargeOver needs an item on every line",
                         "add an item_ref, or run with --option default_item=<external key of a ChargeOver item>")


def _option_int(options: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    raw = options.get(name, default)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        value = lo - 1
    if not lo <= value <= hi:
        raise ConfigError(f"--option {name}={raw}: use a whole number from {lo} to {hi}")
    return value


def _option_flag(options: dict[str, Any], name: str) -> bool:
    raw = str(options.get(name, "true")).lower()
    if raw not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise ConfigError(f"--option {name}={raw}: use true or false")
    return raw in ("true", "1", "yes", "on")


def _currency_map(raw: str) -> dict[str, str]:
    out = {}
    for pair in filter(None, (p.strip() for p in raw.split(","))):
        code, _, ident = pair.partition(":")
        if len(code) != 3 or not ident.isdigit():
            raise ConfigError(f"--option currency_map: {pair!r} is not CODE:ID (e.g. EUR:2)")
        out[code.upper()] = ident
    return out


class ChargeOverTarget(Target):
    name = "chargeover"
    credential_env = (PUBLIC, PRIVATE)
    base_url_env = "CHARGEOVER_BASE_URL"
    # No published numbers (API-NOTES §3): conservative guesses, override with --rate.
    default_limits: Mapping[str, float] = {"write": 2.0, "read": 4.0}
    path_prefix = API
    option_keys = OPTIONS
    auth_hint = "check CHARGEOVER_PUBLIC_KEY and CHARGEOVER_PRIVATE_KEY (Settings > Developer > REST API)"
    creatable = frozenset({"customers", "items"})  # POST /customer, POST /item
    default_create = frozenset({"customers"})
    unique_creates = frozenset({"customers", "items"})  # external_key is unique at ChargeOver

    def __init__(self, *, base_url: str, credentials: Mapping[str, str], options: Mapping[str, Any]) -> None:
        super().__init__(base_url=base_url, credentials=credentials, options=options)
        unknown = sorted(set(self.options) - {*OPTIONS, CREATE_MISSING})
        if unknown:
            raise ConfigError(f"unknown chargeover option {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
        self.default_item: str | None = self.options.get("default_item") or None
        self.use_bulk = _option_flag(self.options, "bulk")
        self.bulk_size = _option_int(self.options, "bulk_size", MAX_BULK, 1, MAX_BULK)
        self.linger = _option_int(self.options, "bulk_linger_ms", 10, 0, 1000) / 1000
        self.verify = _option_flag(self.options, "verify_totals")
        self.currency_map = _currency_map(str(self.options.get("currency_map", "")))
        self.create_items = "items" in self.create_missing

    def start_run(self) -> None:
        super().start_run()
        # In every process that uploads (an upload process of --processes never runs prepare).
        #: the run's requests, batched into _bulk unless --option bulk=false (bulk.targets._chargeover_calls)
        self.calls = Calls(Batcher(size=self.bulk_size, linger=self.linger) if self.use_bulk else None,
                           self.auth_hint)
        #: the run's customer, currency and item ids (bulk.targets._chargeover_refs)
        self.refs = References(self.calls, self.currency_map)

    def writes_per_invoice(self) -> float:
        return 1 / self.bulk_size if self.use_bulk else 1.0  # _bulk carries up to bulk_size creates

    def _token(self) -> str:
        pair = f"{self.credentials.get(PUBLIC, '')}:{self.credentials.get(PRIVATE, '')}"
        return base64.b64encode(pair.encode()).decode()

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Basic {self._token()}", "Accept": "application/json"}

    def secrets(self) -> list[str]:
        return [*self.credentials.values(), self._token()]

    def error_message(self, reply: Reply) -> str:
        data = parse(reply.content)
        if isinstance(data, dict) and isinstance(data.get("message"), str) and data["message"]:
            return str(data["message"])
        return super().error_message(reply)

    def error_detail(self, reply: Reply) -> tuple[str, str]:
        message = self.error_message(reply)
        return field_of(message), message

    def check(self, record: Record) -> None:
        if self.default_item is None:
            for i, line in enumerate(record.lines):
                if line.item_ref is None:
                    raise _no_item(record, i)

    async def prepare(self, job: RunJob) -> None:
        # The smoke test: bad keys stop the run before any write.
        await job.send(Request("GET", f"{API}/customer?limit=1", kind="read"), stage="auth")
        if self.default_item is not None:
            try:  # read directly: the smoke test and this check use plain GETs only
                await self.refs.item_id(job, self.default_item, direct=True)
            except NotFound:
                raise ConfigError(f"--option default_item={self.default_item}: no ChargeOver item has "
                                  "this external key; create the item or name another one") from None

    # --- one record --------------------------------------------------------------------

    async def upload(self, record: Record, job: Job) -> Created:
        customer_id = await job.resolve("chargeover.customer", record.customer.external_id,
                                        lambda: self.refs.customer(record, job))
        currency_id = await self.refs.currency_id(job, record.currency)
        item_ids = []
        for i, line in enumerate(record.lines):
            ref = line.item_ref or self.default_item
            if ref is None:
                raise _no_item(record, i)
            try:
                item_ids.append(await self.refs.item_id(job, ref, title=line.title if self.create_items else None))
            except NotFound:
                where = f"lines[{i}].item_ref" if line.item_ref else f"lines[{i}] (--option default_item)"
                raise RecordRefused(404, f'{where}: no ChargeOver item has the external key "{ref}"',
                                    stage="item") from None
        key = record.external_id
        body = invoice_body(record, currency_id, item_ids)
        try:
            invoice_id, existed, obj = await self.calls.create(job, "invoice", body, key)
        except RecordRefused as exc:
            raise self._stale(record, exc) from None
        if existed and obj is not None and str(obj.get("customer_id")) != customer_id:
            raise RecordRefused(400, f'the external key "{key}" is already used by ChargeOver invoice '
                                f"{invoice_id} of another customer ({obj.get('customer_id')})")
        action = None
        if existed:  # --on-existing (bulk.targets.chargeover_existing)
            ours = job.maybe_sent_before or ("invoice", key) in self.calls.recovered
            action = await settle_invoice(self, job, invoice_id, obj, body, ours=ours)
            if action == "updated":
                obj = None  # re-read for the total below
        reported = status = None
        if self.verify and comparable(record):
            if obj is None:
                obj = await self.calls.get(job, f"{API}/invoice/{invoice_id}", stage="invoice")
            if isinstance(obj, dict) and obj.get("total") is not None:
                reported = Decimal(obj["total"]) if isinstance(obj["total"], (int, Decimal)) else None
                status = obj.get("invoice_status_str")
        return Created(invoice_id=invoice_id, customer_id=customer_id, status=status,
                       reported_gross=reported, existed=existed, action=action)

    def _stale(self, record: Record, exc: RecordRefused) -> RecordRefused:
        """``exc`` as an :class:`UnknownReference` when it says an object we resolved is gone
        (``customer_external_key: no customer ...``, ``line_items[0].item_id: no item ...``,
        ``currency_id: no currency ...``), naming the cached ids to resolve again."""
        refs = {"customer": (("chargeover.customer", record.customer.external_id),),
                "item": tuple(("chargeover.item", line.item_ref or self.default_item or "") for line in record.lines),
                "currency": (("chargeover.currency", record.currency),)}
        gone = _GONE.search(exc.api_message) if exc.status in (400, 404) else None
        if gone is None:
            return exc
        return UnknownReference(exc.status, exc.api_message, stage=exc.stage, field=exc.field,
                                refs=refs[gone.group(1)])
