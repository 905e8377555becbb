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
from urllib.parse import quote

from ..errors import AuthError, ConfigError, InvalidRecord, RecordRefused, ServerError, UnknownReference
from ..records import Record
from ..refs import OPTION as CREATE_MISSING
from ..refs import begin_create, record_created
from ..refs import found as refs_found
from ..transport import Reply, Request
from .base import Created, Job, RunJob, Target
from .chargeover_bulk import MAX_BULK, Batcher, Sub, parse
from .chargeover_existing import settle_invoice
from .chargeover_mapping import API, by_key, comparable, customer_body, invoice_body

__all__ = ["ChargeOverTarget"]

PUBLIC, PRIVATE = "CHARGEOVER_PUBLIC_KEY", "CHARGEOVER_PRIVATE_KEY"
OPTIONS = ("default_item", "bulk", "bulk_size", "bulk_linger_ms", "verify_totals", "currency_map")


class _NotFound(Exception):
    pass


_FIELD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(?:\[[0-9]+\])?(?:\.[A-Za-z_][A-Za-z0-9_]*)*): ")


_GONE = re.compile(r": no (customer|item|currency) ")


def _field_of(message: str) -> str:
    """The field a ChargeOver message names: its envelope has no field of its own, and its
    validation messages lead with it (``line_items[0].item_id: no item 7 ...``)."""
    match = _FIELD.match(message)
    return match.group(1) if match else ""


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
        self.start_run()  # usable outside a run too (e.g. classify in a unit test); the engine calls it again

    def start_run(self) -> None:
        super().start_run()
        self.batcher: Batcher | None = None
        self._missing: set[tuple[str, str]] = set()  # (kind, key) not found this run
        self._recovered: set[tuple[str, str]] = set()  # (kind, key) made by this run, answer lost
        self.create_items = "items" in self.create_missing

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
        return _field_of(message), message

    def check(self, record: Record) -> None:
        if self.default_item is None:
            for i, line in enumerate(record.lines):
                if line.item_ref is None:
                    raise _no_item(record, i)

    async def prepare(self, job: RunJob) -> None:
        self.batcher = Batcher(size=self.bulk_size, linger=self.linger) if self.use_bulk else None
        # The smoke test: bad keys stop the run before any write.
        await job.send(Request("GET", f"{API}/customer?limit=1", kind="read"), stage="auth")
        if self.default_item is not None:
            try:  # read directly: the smoke test and this check use plain GETs only
                await self._item_id(job, self.default_item, direct=True)
            except _NotFound:
                raise ConfigError(f"--option default_item={self.default_item}: no ChargeOver item has "
                                  "this external key; create the item or name another one") from None

    # --- one record --------------------------------------------------------------------

    async def upload(self, record: Record, job: Job) -> Created:
        customer_id = await job.resolve("chargeover.customer", record.customer.external_id,
                                        lambda: self._customer(record, job))
        currency_id = await self._currency_id(job, record.currency)
        item_ids = []
        for i, line in enumerate(record.lines):
            ref = line.item_ref or self.default_item
            if ref is None:
                raise _no_item(record, i)
            try:
                item_ids.append(await self._item_id(job, ref, title=line.title if self.create_items else None))
            except _NotFound:
                where = f"lines[{i}].item_ref" if line.item_ref else f"lines[{i}] (--option default_item)"
                raise RecordRefused(404, f'{where}: no ChargeOver item has the external key "{ref}"',
                                    stage="item") from None
        key = record.external_id
        body = invoice_body(record, currency_id, item_ids)
        try:
            invoice_id, existed, obj = await self._create(job, "invoice", body, key)
        except RecordRefused as exc:
            raise self._stale(record, exc) from None
        if existed and obj is not None and str(obj.get("customer_id")) != customer_id:
            raise RecordRefused(400, f'the external key "{key}" is already used by ChargeOver invoice '
                                f"{invoice_id} of another customer ({obj.get('customer_id')})")
        action = None
        if existed:  # --on-existing (bulk.targets.chargeover_existing)
            ours = job.maybe_sent_before or ("invoice", key) in self._recovered
            action = await settle_invoice(self, job, invoice_id, obj, body, ours=ours)
            if action == "updated":
                obj = None  # re-read for the total below
        reported = status = None
        if self.verify and comparable(record):
            if obj is None:
                obj = await self._get(job, f"{API}/invoice/{invoice_id}", stage="invoice")
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

    async def _customer(self, record: Record, job: Job) -> str:
        key = record.customer.external_id
        hit = await self._get(job, by_key("customer", key), stage="customer")
        if isinstance(hit, dict):
            refs_found(job, "customer", key, str(hit["customer_id"]))  # made by a killed run of this job?
            return str(hit["customer_id"])
        await begin_create(job, "customer", key)
        customer_id, existed, _ = await self._create(job, "customer", customer_body(record), key)
        self._created(job, "customer", key, customer_id, existed)
        return customer_id

    def _created(self, job: RunJob, kind: str, key: str, api_id: str, existed: bool) -> None:
        """List what ``_create`` gave: made now, or found after its answer was lost (ours), or
        refused as taken (ours if an earlier run of this job began that create)."""
        if not existed or (kind, key) in self._recovered:
            record_created(job, kind, key, api_id)
        else:
            refs_found(job, kind, key, api_id)

    async def _currency_id(self, job: Job, code: str) -> str:
        if code in self.currency_map:
            return self.currency_map[code]

        async def find() -> str:
            uri = f"{API}/currency?where=" + quote(f"currency_iso4217:EQUALS:{code}", safe=":")
            rows = None if ("currency", code) in self._missing else await self._get(job, uri, stage="currency")
            if not rows:
                self._missing.add(("currency", code))
                raise RecordRefused(404, f"currency: {code} is not set up in the ChargeOver account; add it "
                                    f"there, or map it with --option currency_map={code}:<currency_id>",
                                    stage="currency")
            return str(rows[0]["currency_id"])

        return await job.resolve("chargeover.currency", code, find)

    async def _item_id(self, job: RunJob, ref: str, *, direct: bool = False, title: str | None = None) -> str:
        """The item's id by external key; with ``title`` (``--create-missing items``) an item
        the lookup does not find is created, named ``title``."""
        async def find() -> str:
            found = None if ("item", ref) in self._missing and title is None else await self._get(
                job, by_key("item", ref), stage="item", direct=direct)
            if isinstance(found, dict):
                if title is not None:
                    refs_found(job, "item", ref, str(found["item_id"]))  # made by a killed run of this job?
                return str(found["item_id"])
            if title is None:
                self._missing.add(("item", ref))
                raise _NotFound(ref)
            # _create looks the key up before any resend, and a 400 "key in use" is looked up
            # too: a copy of a killed run that lands first is used, never doubled (keys are unique).
            await begin_create(job, "item", ref)
            item_id, existed, _ = await self._create(
                job, "item", {"name": title[:255], "external_key": ref, "type": "service"}, ref)
            self._created(job, "item", ref, item_id, existed)
            return item_id

        return await job.resolve("chargeover.item", ref, find)

    # --- calls -------------------------------------------------------------------------

    async def _create(self, job: RunJob, kind: str, body: dict[str, Any], key: str) -> tuple[str, bool, Any]:
        """POST ``body`` as a new ``kind``: ``(id, existed, object if it was looked up)``."""
        lookup = by_key(kind, key)
        sub = await self._batched(job, "POST", f"{API}/{kind}", body, lookup)
        if sub is not None and (sub.code == 429 or sub.code >= 500 or sub.code < 200):
            sub = None  # not handled, or maybe committed: once more alone, with recovery
        if sub is None:
            sub = await self._direct(job, "POST", f"{API}/{kind}", body, lookup, stage=kind)
        if sub.recovered:
            self._recovered.add((kind, key))  # our own create, its answer lost
            return str(sub.response[f"{kind}_id"]), True, sub.response
        made = 200 <= sub.code < 300
        if made and isinstance(sub.response, dict) and sub.response.get("id") is not None:
            return str(sub.response["id"]), False, None
        if made or sub.code == 400:  # made without saying its id; or the key is taken: by us, or not
            found = await self._get(job, lookup, stage=kind)
            if isinstance(found, dict):
                return str(found[f"{kind}_id"]), not made, found
        raise self._refused(sub, kind)

    async def _get(self, job: RunJob, uri: str, *, stage: str, direct: bool = False) -> Any:
        """The ``response`` of a GET, or None for a 404."""
        sub = None if direct else await self._batched(job, "GET", uri, None, None)
        if sub is not None:
            if 200 <= sub.code < 300 or sub.code == 404:
                return sub.response if sub.code != 404 else None
            if 400 <= sub.code < 500 and sub.code != 429:
                raise self._refused(sub, stage)
        sub = await self._direct(job, "GET", uri, None, None, stage=stage)
        if sub.code == 404:
            return None
        if not 200 <= sub.code < 300:
            raise self._refused(sub, stage)
        return sub.response

    async def _batched(self, job: RunJob, method: str, uri: str, payload: Any, lookup: str | None) -> Sub | None:
        """The call's answer through ``_bulk``; None when batching is off or the account has no
        ``_bulk`` endpoint (404/405: nothing was run, batching stops for this run)."""
        if self.batcher is None:
            return None
        try:
            return await self.batcher.call(job, method, uri, payload, lookup=lookup)
        except RecordRefused as exc:
            if exc.stage != "bulk" or exc.status not in (404, 405):
                raise
            self.batcher = None
            return None

    async def _direct(self, job: RunJob, method: str, uri: str, payload: Any, lookup: str | None,
                      *, stage: str) -> Sub:
        """One request outside ``_bulk``; a lost create is looked up by key before a resend."""
        found: Any = None

        async def recover() -> Reply | None:
            nonlocal found
            assert lookup is not None
            found = await self._get(job, lookup, stage=stage)
            return Reply(200, {}, b"") if isinstance(found, dict) else None

        req = Request(method, uri, json=payload, kind="read" if method == "GET" else "write")
        try:
            reply = await job.send(req, stage=stage, recover=recover if lookup else None)
        except RecordRefused as exc:
            return Sub(exc.status, exc.api_message, None)
        if isinstance(found, dict):
            return Sub(200, "", found, recovered=True)
        data = parse(reply.content)
        return Sub(reply.status, "", data.get("response") if isinstance(data, dict) else None)

    def _refused(self, sub: Sub, stage: str) -> Exception:
        message = sub.message or f"HTTP {sub.code}"
        if sub.code in (401, 403):
            return AuthError(sub.code, message, self.auth_hint)
        if 400 <= sub.code < 500:
            return RecordRefused(sub.code, message, stage=stage, field=_field_of(message))
        return ServerError(sub.code, message)
