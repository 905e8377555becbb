"""ChargeOver sandbox dialect, and the wire contract ``bulk`` assumes for ChargeOver's REST API v3.

Sources: seed 002 and API-NOTES.md section 3 (O-rest, O-http, O-ext, O-get, O-bulk, the PHP
SDK). What ChargeOver does not publish is marked *assumed*; the client in
``bulk.targets.chargeover`` is written against this text, not against this code.

General
    Base ``{base_url}/api/v3``. HTTP Basic auth: username = public key, password = private key
    (the sandbox's token is ``"<public>:<private>"``). JSON in and out. Every answer is the
    envelope ``{"code", "status": "OK"|"Error", "message", "details": {}, "response"}``.
    Amounts in answers are JSON numbers (O-get); in requests, JSON numbers or decimal strings,
    read exactly (never through float), at most 12 digits before and 10 after the point (assumed).
Errors (``response: false``; one message naming the field, wording ours)
    400 validation, malformed JSON, a taken external key: ``The external key "K" is already
    in use.`` (ChargeOver's code and wording for that are not public: assumed 400).
    Unknown fields are refused with 400 (assumed: the real API may ignore them).
    401 ``Invalid or incorrect authorization [Missing (basic) authorization header.]`` (O-http)
    or ``[...credentials...]``; 403 read-only credential on a write (sandbox only);
    404 unknown object or path; 405; 429 over the rate limit (O-http; ChargeOver documents no
    numbers and no ``Retry-After``: the sandbox sends none unless option ``retry_after`` is
    true, an assumption); 500 ``Internal server error.``.
Objects (``GET /api/v3/{customer|item|currency|invoice}/{ref}`` -> 200 | 404, ``ref`` = the
    numeric id or ``external_key:<key>``, percent-encoded; lists with ``where=field:OP:value``
    (EQUALS, NOTEQUALS, CONTAINS; ``\\,`` escapes a comma), ``limit`` (default 10, max 500),
    ``offset`` -> ``response: [objects]``; an invoice list omits line items)
    customer ``customer_id`` + fields as created; item ``item_id, name, external_key``;
    currency ``currency_id, currency_iso4217``; invoice ``invoice_id, external_key,
    customer_id, date, currency_id, currency_iso4217, refnumber, memo, bill_*, ship_*,
    custom_*, line_items[{line_item_id, item_id, item_external_key, descrip, line_rate,
    line_quantity, line_subtotal, ...}], subtotal, taxes, total, balance,
    invoice_status_str: "open-unpaid", write_datetime``.
``POST /api/v3/customer`` ``company`` (required) and the documented customer fields;
    ``external_key`` unique -> 201 ``{"id": N}`` + ``Location``.
``POST /api/v3/item`` ``name`` (required), ``external_key`` unique, ``type`` service|product
    (default service), ``description, accounting_sku, units`` -> 201 ``{"id": N}`` +
    ``Location`` (``chargeover_rules.validate_item``; pricing is not modelled).
``POST /api/v3/invoice`` exactly one of ``customer_id | customer_token |
    customer_external_key`` (an existing customer); ``external_key`` unique, never reusable;
    ``date`` YYYY-MM-DD (default today); ``currency_id`` (default: the account's first
    currency); ``refnumber, memo, bill_*, ship_*, class_id, terms_id, admin_id, paycycle,
    custom_1..20``; ``line_items`` at least one, each ``item_id`` (an existing item, required),
    ``line_rate`` (required), ``line_quantity`` (> 0, default 1), ``descrip`` (default the item
    name), ``paycycle``, ``custom_1..10``, ``tags`` -> 201 ``{"id": N}`` + ``Location``.
    Totals (rounding is not documented; assumed): line_subtotal = round(rate x quantity) half
    up to the currency's minor unit; subtotal = sum; taxes = round(subtotal x tax_percent / 100)
    from the account's tax setting (option ``tax_percent``, default 0: no tax configured);
    total = subtotal + taxes.
``PUT /api/v3/invoice/{id}`` (O-http: 202 + ``Location``; also inside ``_bulk``): the create's
    fields and rules; the fields sent replace the stored ones, ``line_items`` replaces every
    line, what is not sent stays; the external key stays unique; a closed invoice (paid or
    void, ``invoice_status_state`` ``c``) -> 400 ``invoice_status_str: Invoice N is closed-void:
    a closed invoice cannot be changed.``; unknown id -> 404.
``POST /api/v3/invoice/{id}/_action/void`` (O-void): ``invoice_status_str`` ``closed-void``,
    ``invoice_status_state`` ``c``, ``is_void`` true, ``void_datetime``, balance 0 -> 200
    ``response: true``; an invoice closed already -> 400; unknown id -> 404. (Payments are not
    modelled: a void is the sandbox's one way to close an invoice.)
``POST /api/v3/_bulk`` (O-bulk) a list of at most 25 ``{request_method: GET|POST|PUT, uri:
    "/api/v3/...", payload}``, handled in order -> 200 ``response: {"_bulk": [{code, status,
    message, response}, ...]}`` (the ``_bulk`` key as the SDK's example reads it), one per
    sub-request. One ``_bulk`` call is one request for the rate limit and the faults.

Sandbox options: ``items`` (comma-separated external keys; default SKU-001..SKU-050 and
ADJUSTMENT), ``currencies`` (ISO codes, the first is the account default; default USD EUR GBP
CHF JPY KWD CAD AUD), ``seed_items`` / ``seed_currencies`` (more of each, on top of those:
what ``--seed-from`` adds), ``tax_percent`` (default 0), ``retry_after`` (default false),
``bulk_item_fail_rate`` (probability that a ``_bulk`` sub-request answers 500 unhandled),
``bulk`` (false: ``/_bulk`` answers 404, like an account without it).
State (``GET /_sandbox/state``): ``customers, items, currencies, invoices`` (amounts as strings).

This module owns the dialect (auth, errors, HTTP, ``_bulk``); what each call does to the objects
is in ``_chargeover_objects`` (a mixin of the dialect).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson
from aiohttp import web

from bulk.sandbox._chargeover_objects import PREFIX, ChargeOverObjects
from bulk.sandbox.chargeover_rules import Answer, envelope, error, words
from bulk.sandbox.config import SandboxConfig, SandboxConfigError
from bulk.sandbox.core import WRITE_METHODS, Dialect, Problem
from bulk.sandbox.wire import plain

__all__ = ["ChargeOverSandbox", "create_app"]  # PREFIX, MAX_BULK, ADJUSTMENT_ITEM, ... importable too

MAX_BULK = 25
ADJUSTMENT_ITEM = "ADJUSTMENT"  # seeded for lines without an item of their own (discounts)
DEFAULT_ITEMS = (*(f"SKU-{k:03d}" for k in range(1, 51)), ADJUSTMENT_ITEM)
DEFAULT_CURRENCIES = ("USD", "EUR", "GBP", "CHF", "JPY", "KWD", "CAD", "AUD")
_MISSING_AUTH = "Invalid or incorrect authorization [Missing (basic) authorization header.]"
_BAD_AUTH = "Invalid or incorrect authorization [The supplied credentials are not valid.]"


def create_app(config: SandboxConfig) -> web.Application:
    dialect = ChargeOverSandbox(config)
    app = dialect.create_app()
    app.on_response_prepare.append(dialect.strip_retry_after)
    return app


def _number(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(plain(value))  # amounts are JSON numbers on the wire (O-get)
    raise TypeError(f"cannot serialise {type(value).__name__}")


class ChargeOverSandbox(ChargeOverObjects, Dialect):
    name = "chargeover"
    problems: ClassVar[Mapping[Problem, tuple[int, Any]]] = {
        Problem.UNAUTHORIZED: (401, envelope(401, False, _MISSING_AUTH)),
        Problem.FORBIDDEN: (403, envelope(403, False, "This API user may not write.")),
        Problem.NOT_FOUND: (404, envelope(404, False, "Not found.")),
        Problem.METHOD_NOT_ALLOWED: (405, envelope(405, False, "Method not allowed.")),
        Problem.MALFORMED_JSON: (400, envelope(400, False, "Malformed JSON in the request body.")),
        Problem.THROTTLED: (429, envelope(429, False, "Too many requests: over the REST API rate limit.")),
        Problem.SERVER_ERROR: (500, envelope(500, False, "Internal server error.")),
        # ChargeOver has no idempotency header; the dialect never uses the key store.
        Problem.IDEMPOTENCY_MISMATCH: (400, envelope(400, False, "Missing or invalid parameter.")),
        Problem.IDEMPOTENCY_IN_FLIGHT: (400, envelope(400, False, "Missing or invalid parameter.")),
        Problem.INVALID_IDEMPOTENCY_KEY: (400, envelope(400, False, "Missing or invalid parameter.")),
    }

    def __init__(self, config: SandboxConfig) -> None:
        super().__init__(config)
        options = config.options
        self.item_keys = _union(words(options.get("items"), DEFAULT_ITEMS), words(options.get("seed_items"), ()))
        self.currency_codes = _union(words(options.get("currencies"), DEFAULT_CURRENCIES),
                                     [c.upper() for c in words(options.get("seed_currencies"), ())])
        try:
            self.tax_percent = Decimal(str(options.get("tax_percent", "0")))
            self.bulk_item_fail_rate = float(options.get("bulk_item_fail_rate", 0))
            if not (self.tax_percent.is_finite() and 0 <= self.bulk_item_fail_rate <= 1):
                raise ValueError
        except (ArithmeticError, ValueError):
            raise SandboxConfigError("chargeover options: tax_percent must be a decimal number and "
                                     "bulk_item_fail_rate a probability") from None
        self.retry_after = str(options.get("retry_after", "false")).lower() in ("1", "true", "yes")
        self.bulk_enabled = str(options.get("bulk", "true")).lower() not in ("0", "false", "no")
        self.clear()

    # --- framework hooks ---------------------------------------------------------------

    durable_values = ("next_id", "line_ids")

    def clear(self) -> None:
        table = self.durable.table
        self.store: dict[str, dict[int, dict[str, Any]]] = {
            name: table(name) for name in ("customer", "item", "currency", "invoice")}
        self.keys: dict[str, dict[str, int]] = {name: table(f"keys:{name}") for name in self.store}
        self.next_id = {"customer": 1, "item": 101, "currency": 1, "invoice": 10_001}
        self.line_ids = 0
        if self.durable.restored:
            return
        for key in self.item_keys:
            self._add("item", {"name": f"Item {key}", "external_key": key, "type": "service"})
        for code in self.currency_codes:
            self._add("currency", {"currency_iso4217": code})

    def delete_object(self, collection: str, ident: Any, *, recreate: bool) -> Any:
        resource = collection.removesuffix("s")
        if resource not in ("customer", "item") or recreate:
            return super().delete_object(collection, ident, recreate=recreate)
        obj = self.store[resource].pop(int(ident))  # KeyError: no such object
        # ChargeOver's "clear the external key on delete" policy (O-ext): the key may be used again.
        if obj.get("external_key") is not None:
            self.keys[resource].pop(obj["external_key"], None)
        return None

    def snapshot(self) -> dict[str, Any]:
        return {name + "s" if name != "currency" else "currencies": list(objects.values())
                for name, objects in self.store.items()}

    def credential(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if header[:6].lower() != "basic ":
            return None
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded if ":" in decoded else None

    def problem(self, kind: Problem, request: web.Request) -> web.Response:
        if kind is Problem.UNAUTHORIZED and self.credential(request) is not None:
            return self._response((401, envelope(401, False, _BAD_AUTH), None))
        return super().problem(kind, request)

    async def strip_retry_after(self, request: web.Request, response: web.StreamResponse) -> None:
        """ChargeOver documents no Retry-After (API-NOTES §3): the framework's header on a 429 is
        removed, unless option ``retry_after`` or an explicit ``retry_after_override`` asks for it."""
        if (response.status == 429 and not self.retry_after
                and self.faults.settings.retry_after_override is None):
            response.headers.popall("Retry-After", None)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_route("*", PREFIX + "/{tail:.*}", self.handle)

    # --- HTTP --------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        body = await self.read_json(request) if request.method in WRITE_METHODS and request.can_read_body else None
        raw = request.raw_path.split("?", 1)[0]  # still percent-encoded: an escaped "/" stays in its key
        segments = [unquote(s) for s in raw[raw.index(PREFIX + "/") + len(PREFIX) + 1:].split("/")]
        if segments == ["_bulk"] and self.bulk_enabled:
            if request.method != "POST":
                return self._response(error(405, "Method not allowed."))
            return self._response(self.bulk(body))
        answer = self.dispatch(request.method, segments, dict(request.query), body)
        return self._response(answer, f"{request.scheme}://{request.host}")

    def _response(self, answer: Answer, origin: str = "") -> web.Response:
        status, body, location = answer
        response = web.Response(body=orjson.dumps(body, default=_number), status=status,
                                content_type=self.content_type)
        if location is not None:
            response.headers["Location"] = origin + location
        return response

    # --- the API, as plain calls (also what _bulk runs) ---------------------------------

    def bulk(self, body: Any) -> Answer:
        if not isinstance(body, list) or not all(isinstance(sub, dict) for sub in body):
            return error(400, "A bulk request is a JSON list of {request_method, uri, payload} objects.")
        if len(body) > MAX_BULK:
            return error(400, f"A bulk request may hold at most {MAX_BULK} requests (got {len(body)}).")
        results = []
        for sub in body:
            method, uri = sub.get("request_method"), sub.get("uri")
            if self.faults.hit(self.bulk_item_fail_rate):
                sub_answer = error(500, "Internal server error.")[1]
            elif method not in ("GET", "POST", "PUT") or not isinstance(uri, str):
                sub_answer = error(400, "request_method must be GET, POST or PUT and uri a string.")[1]
            else:
                split = urlsplit(uri)
                parts = split.path.split("/")
                if parts[:3] != ["", "api", "v3"] or parts[3:] == ["_bulk"]:
                    sub_answer = error(400, f"uri {uri!r} is not an API v3 resource.")[1]
                else:
                    sub_answer = self.dispatch(method, [unquote(p) for p in parts[3:]],
                                               dict(parse_qsl(split.query)), sub.get("payload"))[1]
            results.append({k: sub_answer[k] for k in ("code", "status", "message", "response")})
        return 200, envelope(200, {"_bulk": results}), None


def _union(first: list[str], more: list[str]) -> list[str]:
    """``first`` then what ``more`` adds, each once, in order (the first is the default currency)."""
    return list(dict.fromkeys([*first, *more]))
