"""Agiled sandbox dialect, and the wire contract ``bulk`` assumes for Agiled's public API.

Agiled does not publish its invoice body (API-NOTES.md section 1); the contract below is OUR
documented assumption, built on what Agiled does document (auth, errors, rate limits,
idempotency, pagination). The client in ``bulk.targets.agiled`` is written against this text.

General
    Base ``{base_url}/public/v1``. Every request: ``Authorization: Bearer <token>``. JSON in,
    JSON out (``application/json``). Amounts are decimal strings (``-?[0-9]+(.[0-9]+)?``:
    ``"12.50"``, ``"-3"``; no ``+``, exponent or spaces); JSON numbers are accepted too and
    read exactly (never through float). Quantities, prices and rates have at most 12 digits
    before and 10 after the point.
Errors (``{"error": message}``)
    400 ``Malformed JSON.`` (body not JSON) or ``Invalid Idempotency-Key.``;
    401 ``Unauthorized.`` (missing or wrong token); 403 ``Forbidden.`` (read-only token on a
    write); 404 ``Not Found.``; 405 ``Method Not Allowed.``;
    409 ``Idempotency key already used with a different request.`` /
    ``A request with this Idempotency-Key is already in progress.``;
    422 ``{"error": "The given data was invalid.", "errors": {"<field path>": ["<message>"]}}``
    (field paths like ``invoice_number``, ``items.0.quantity``);
    429 ``Too Many Attempts.`` with ``Retry-After: <seconds>``; 500 ``Server Error.``.
    Retry only 429 (after Retry-After), 500 and lost connections; never 4xx unchanged.
Rate limits
    Per token, writes (POST/PUT/PATCH/DELETE) and reads counted separately (Agiled: 30 writes
    and 60 reads per minute; the sandbox's are set by its config).
Idempotency (``Idempotency-Key: <key>`` or ``"<key>"``, 1-255 visible ASCII, on POSTs)
    Scope: organisation + method + path + key; kept 30 days. The first 2xx answer is stored;
    the same key with the same JSON body (key order and spacing ignored) replays it (same
    status, same body, same id); another body -> 409; while the first is in flight -> 409.
    Failed attempts are not stored: fix and retry with the same key.
``GET /public/v1/me`` -> 200 ``{"data": {"id": 1, "name": "Sandbox Org", "organization_id": 1}}``
Lists (``GET`` with ``page`` >= 1 default 1, ``per_page`` 1..100 default 25; out-of-range
    values are clamped, non-integers -> 422) -> 200 ``{"data": [...], "meta":
    {"current_page", "last_page", "per_page", "total"}}``, ordered by id.
``GET /public/v1/contacts?email=<email>``: exact match, case-insensitive.
``POST /public/v1/contacts`` ``{"email" (required, an address, <= 255), "first_name",
    "last_name", "company", "locale", "external_id" (each str | null, <= 255), "address": {"line1",
    "line2", "city", "state", "postal_code", "country"} (each str | null; no other keys)
    | null}`` -> 201 ``{"data": contact}``, contact = those fields (absent ones null) + ``"id"``.
    Other top-level keys are accepted and ignored (kept under ``extra`` in the sandbox state).
    Duplicate emails are allowed: look the contact up first.
``POST /public/v1/invoices``
    ``invoice_number`` str 1-100, required, unique in the organisation (taken -> 422
    ``The invoice number has already been taken.``); ``contact_id`` int (not a string), required,
    an existing contact; ``currency`` 3 upper-case letters, required; ``status`` ``draft`` |
    ``sent`` | ``paid``, default ``draft``; ``issue_date`` ``YYYY-MM-DD``, required unless
    draft; ``due_date`` ``YYYY-MM-DD`` | null, not before issue_date; ``tax_inclusive`` bool,
    default false; ``notes`` str | null; ``items`` array of at least 1, each exactly the keys
    ``name`` (str 1-185, required), ``description`` (str | null), ``quantity`` (decimal > 0,
    required), ``unit_price`` (decimal, may be negative, required), ``tax_rate`` (decimal
    percent >= 0, required), ``sku`` (str | null); an unknown item key -> 422. Other
    top-level keys: accepted, ignored (custom fields; kept under ``extra`` in the state).
    Totals per line, rounded half up (away from zero) to the currency's ISO 4217 minor unit
    (0: BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF; 3: BHD IQD JOD
    KWD LYD OMR TND; 4: CLF UYW; else 2):
    net prices: net = round(q x price), tax = round(net x rate / 100), gross = net + tax;
    ``tax_inclusive``: gross = round(q x price), net = round(gross x 100 / (100 + rate)),
    tax = gross - net. The invoice sums the lines.
    -> 201 ``{"data": invoice}``: ``id``, ``invoice_number``, ``contact_id``, ``currency``,
    ``status``, ``issue_date``, ``due_date``, ``tax_inclusive``, ``notes``, ``items`` (each:
    ``id``, ``name``, ``description``, ``quantity``, ``unit_price``, ``tax_rate``, ``sku``,
    ``net``, ``tax``, ``gross``), ``sub_total`` (sum of net), ``tax_total``, ``total`` (sum
    of gross), ``created_at`` (``2025-01-31T12:00:00.000000Z``). Amounts are strings with
    exactly the minor-unit digits; quantity, unit_price and tax_rate are the sent values
    normalised (``"2.50"`` -> ``"2.5"``).
``PUT /public/v1/invoices/{id}`` (our assumption: Agiled documents updates and their
    ``Idempotency-Key``, not the shape): the create's body and rules; replaces the invoice,
    its items too (new item ids), keeps ``id`` and ``created_at``, adds ``updated_at``; the
    number stays unique (another invoice's -> 422); a ``paid`` invoice -> 422 ``status``
    ``A paid invoice cannot be changed.`` -> 200 ``{"data": invoice}``; 404 for an unknown id.
``GET /public/v1/invoices?invoice_number=<n>&status=<s>`` (list; for reconciliation after a
    lost answer) and ``GET /public/v1/invoices/{id}`` -> 200 ``{"data": invoice}`` | 404.

Sandbox state (``GET /_sandbox/state``): ``{"target": "agiled", "contacts", "invoices",
"requests": {"total", "by_status", "throttled", "dropped", "lost", "slowed", "in_flight"},
"idempotency_keys", "faults"}``; contacts and invoices as answered, plus ``extra``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

from aiohttp import web

from bulk.sandbox._agiled_documents import invoice_document, list_page
from bulk.sandbox.agiled_rules import Errors, validate_contact, validate_invoice
from bulk.sandbox.config import SandboxConfig
from bulk.sandbox.core import Dialect, Problem, SandboxProblem

__all__ = ["AgiledSandbox", "create_app"]

ORG_ID = 1
PREFIX = "/public/v1"
_ME = {"data": {"id": 1, "name": "Sandbox Org", "organization_id": ORG_ID}}
_SCOPE = f"org:{ORG_ID}"


def create_app(config: SandboxConfig) -> web.Application:
    return AgiledSandbox(config).create_app()


class AgiledSandbox(Dialect):
    name = "agiled"
    problems: ClassVar[Mapping[Problem, tuple[int, Any]]] = {
        Problem.UNAUTHORIZED: (401, {"error": "Unauthorized."}),
        Problem.FORBIDDEN: (403, {"error": "Forbidden."}),
        Problem.NOT_FOUND: (404, {"error": "Not Found."}),
        Problem.METHOD_NOT_ALLOWED: (405, {"error": "Method Not Allowed."}),
        Problem.MALFORMED_JSON: (400, {"error": "Malformed JSON."}),
        Problem.THROTTLED: (429, {"error": "Too Many Attempts."}),
        Problem.SERVER_ERROR: (500, {"error": "Server Error."}),
        Problem.IDEMPOTENCY_MISMATCH: (
            409, {"error": "Idempotency key already used with a different request."}),
        Problem.IDEMPOTENCY_IN_FLIGHT: (
            409, {"error": "A request with this Idempotency-Key is already in progress."}),
        Problem.INVALID_IDEMPOTENCY_KEY: (400, {"error": "Invalid Idempotency-Key."}),
    }

    def __init__(self, config: SandboxConfig) -> None:
        super().__init__(config)
        self.clear()

    # --- framework hooks ---------------------------------------------------------------

    durable_values = ("item_ids", "deleted_contacts")

    def clear(self) -> None:
        table = self.durable.table
        self.contacts: dict[int, dict[str, Any]] = table("contacts")
        self.invoices: dict[int, dict[str, Any]] = table("invoices")
        self.extra: dict[tuple[str, int], dict[str, Any]] = table("extra")  # ("contact"|"invoice", id)
        self.emails: dict[str, list[int]] = table("emails")  # lower-cased email -> contact ids
        self.deleted_contacts = 0  # by POST /_sandbox/delete
        self.numbers: dict[str, int] = table("numbers")  # invoice_number -> invoice id
        self.item_ids = 0

    def delete_object(self, collection: str, ident: Any, *, recreate: bool) -> Any:
        if collection != "contacts" or recreate:
            return super().delete_object(collection, ident, recreate=recreate)
        contact = self.contacts.pop(int(ident))  # KeyError: no such contact
        self.emails[contact["email"].lower()].remove(int(ident))
        self.deleted_contacts += 1
        return None

    def snapshot(self) -> dict[str, Any]:
        return {
            "contacts": [{**c, "extra": self.extra.get(("contact", i), {})}
                         for i, c in self.contacts.items()],
            "invoices": [{**v, "extra": self.extra.get(("invoice", i), {})}
                         for i, v in self.invoices.items()],
        }

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get(f"{PREFIX}/me", self.me)
        router.add_get(f"{PREFIX}/contacts", self.list_contacts)
        router.add_post(f"{PREFIX}/contacts", self.create_contact)
        router.add_get(f"{PREFIX}/invoices", self.list_invoices)
        router.add_post(f"{PREFIX}/invoices", self.create_invoice)
        router.add_get(f"{PREFIX}/invoices/{{id}}", self.get_invoice)
        router.add_put(f"{PREFIX}/invoices/{{id}}", self.update_invoice)

    # --- handlers ----------------------------------------------------------------------

    async def me(self, request: web.Request) -> web.Response:
        return self.respond(_ME)

    async def list_contacts(self, request: web.Request) -> web.Response:
        email = request.query.get("email")
        if email is None:
            found = list(self.contacts.values())
        else:
            found = [self.contacts[i] for i in self.emails.get(email.lower(), ())]
        return self._page(request, found)

    async def list_invoices(self, request: web.Request) -> web.Response:
        number, status = request.query.get("invoice_number"), request.query.get("status")
        if number is not None:
            found_id = self.numbers.get(number)
            found = [] if found_id is None else [self.invoices[found_id]]
        else:
            found = list(self.invoices.values())
        if status is not None:
            found = [v for v in found if v["status"] == status]
        return self._page(request, found)

    async def get_invoice(self, request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        valid = raw.isascii() and raw.isdigit() and len(raw) < 19
        invoice = self.invoices.get(int(raw)) if valid else None
        if invoice is None:
            raise SandboxProblem(Problem.NOT_FOUND)
        return self.respond({"data": invoice})

    async def update_invoice(self, request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        valid = raw.isascii() and raw.isdigit() and len(raw) < 19
        invoice_id = int(raw) if valid else 0
        if invoice_id not in self.invoices:
            raise SandboxProblem(Problem.NOT_FOUND)
        body = await self.read_json(request)
        return await self.idempotent(request, _SCOPE, body, lambda: self._update_invoice(invoice_id, body))

    async def create_contact(self, request: web.Request) -> web.Response:
        body = await self.read_json(request, exact=False)
        return await self.idempotent(request, _SCOPE, body, lambda: self._create_contact(body))

    async def create_invoice(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)
        return await self.idempotent(request, _SCOPE, body, lambda: self._create_invoice(body))

    # --- commits (synchronous: validated and stored in one step) ------------------------

    def _create_contact(self, body: Any) -> web.Response:
        errors = Errors()
        contact, extra = validate_contact(body, errors)
        if errors:
            return self._invalid(errors)
        contact_id = len(self.contacts) + self.deleted_contacts + 1  # ids are never reused
        contact = {"id": contact_id, **contact}
        self.contacts[contact_id] = contact
        self.emails.setdefault(contact["email"].lower(), []).append(contact_id)
        if extra:
            self.extra[("contact", contact_id)] = extra
        return self.respond({"data": contact}, 201)

    def _update_invoice(self, invoice_id: int, body: Any) -> web.Response:
        """``PUT /invoices/{id}``: the create's body and rules, replacing the invoice (items too);
        the number stays unique; a paid invoice cannot be changed."""
        old = self.invoices[invoice_id]
        errors = Errors()
        fields, extra = validate_invoice(body, errors, self.contacts.__contains__)
        if not errors and self.numbers.get(fields["invoice_number"], invoice_id) != invoice_id:
            errors.add("invoice_number", "The invoice number has already been taken.")
        if old["status"] == "paid":
            errors.add("status", "A paid invoice cannot be changed.")
        if errors:
            return self._invalid(errors)
        invoice = self._invoice(invoice_id, fields, created_at=old["created_at"])
        invoice["updated_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if old["invoice_number"] != invoice["invoice_number"]:
            del self.numbers[old["invoice_number"]]
        self.invoices[invoice_id] = invoice
        self.numbers[invoice["invoice_number"]] = invoice_id
        self.extra[("invoice", invoice_id)] = extra
        return self.respond({"data": invoice}, 200)

    def _create_invoice(self, body: Any) -> web.Response:
        errors = Errors()
        fields, extra = validate_invoice(body, errors, self.contacts.__contains__)
        if not errors and fields["invoice_number"] in self.numbers:
            errors.add("invoice_number", "The invoice number has already been taken.")
        if errors:
            return self._invalid(errors)
        invoice_id = len(self.invoices) + 1
        invoice = self._invoice(invoice_id, fields, created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        self.invoices[invoice_id] = invoice
        self.numbers[invoice["invoice_number"]] = invoice_id
        if extra:
            self.extra[("invoice", invoice_id)] = extra
        return self.respond({"data": invoice}, 201)

    def _invoice(self, invoice_id: int, fields: dict[str, Any], *, created_at: str) -> dict[str, Any]:
        invoice = invoice_document(invoice_id, fields, created_at=created_at, first_item_id=self.item_ids + 1)
        self.item_ids += len(invoice["items"])  # item ids are never reused
        return invoice

    # --- answers -----------------------------------------------------------------------

    def _invalid(self, errors: Errors) -> web.Response:
        return self.respond({"error": "The given data was invalid.", "errors": errors.fields}, 422)

    def _page(self, request: web.Request, found: list[dict[str, Any]]) -> web.Response:
        errors = Errors()
        page = list_page(request, found, errors)
        return self._invalid(errors) if errors else self.respond(page)
