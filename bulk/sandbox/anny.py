"""anny Admin API sandbox dialect, and the wire contract ``bulk`` assumes (API-NOTES.md §2,
seed 001). The client in ``bulk.targets.anny`` is written against this text.

General
    Paths under ``{base_url}/api/v1``. Every request: ``Authorization: Bearer <token>`` and
    ``?o=<organization id>`` (absent -> 400; not the token's organization -> 403). Answers are
    JSON:API v1.1 documents (``application/vnd.api+json``). A write with a body must send
    ``Content-Type: application/vnd.api+json`` (else 415). Creates take ``{"data": {"type",
    "attributes", "relationships"}}``: another ``type`` -> 409; an ``id``, an unknown attribute
    or relationship -> 422. Amounts are JSON numbers read exactly (a string is not a number)
    and answered as JSON numbers, totals with the currency's minor digits. Ids: UUID strings.
Errors ``{"errors": [{"status": "422", "title", "detail", "source": {"pointer": "/data/attributes/x"}
    | {"parameter": "x"}}]}``, every problem listed: 400 malformed JSON, no ``o``, bad query
    parameter; 401; 403; 404; 405; 409; 415; 422 validation; 429 ``Retry-After: <s>`` (no
    X-RateLimit-* headers); 500.
Rate limits (A-rate: per organization 100 writes + 400 reads per 60 s, adjustable): the
    framework's token buckets per token, i.e. per organization (``--rate-limit 1.667
    --read-rate-limit 6.667``; none by default). Identical-request guard: at most
    ``identical_per_second`` (option, default 4; 0 = off) requests with the same method, path,
    query and JSON body per organization in any second; the next -> 429, ``Retry-After: 1``.
Lists: ``page[number]`` >= 1, ``page[size]`` 1..30 (default 30; clamped) -> ``{"data", "included"
    (when ``include`` is given), "meta": {"page": {"currentPage", "lastPage", "perPage",
    "total"}}}``, in creation order. Unknown ``include`` -> 400.
``GET /customers?filter[email]=`` (exact, case-insensitive) ``&filter[search]=`` (substring of
    names, email, company) ``&include=address``; ``GET /customers/{id}``.
``POST /customers``: ``email`` (required; RFC 5322, so no doubled dot in the local part),
    ``locale`` (required, a language tag), ``given_name``, ``family_name``, ``company``,
    ``mobile`` (str <= 255 | null) -> 201. Duplicate emails are not refused: look up first.
``POST /addresses``: ``name``, ``street_address``, ``address_line_2``, ``zip_code``, ``city``,
    ``area`` (str | null), ``country_code`` (ISO alpha-2 | null); ``relationships.addressable``
    -> ``customers`` (required). Becomes the customer's ``address`` -> 201.
``POST /invoices`` (a draft): ``currency`` (required, 3 upper-case letters), ``number`` (str
    <= 255, unique per organization: taken -> 422 at ``/data/attributes/number``; absent ->
    numbered by the sandbox), ``recipient``, ``invoicing_party``, ``notes``, ``vat_number``
    (str | null), ``calculate_from_net``, ``is_quote`` (bool, default false), ``issued_at``,
    ``due_date`` (YYYY-MM-DD | null); ``status`` cannot be set; ``relationships.customer``
    (optional) -> 201 invoice: those + ``formatted_number``, ``status`` (``draft`` | ``sent`` |
    ``paid``), ``locked``, ``net_amount``, ``tax_amount``, ``total``, ``vat_breakdown``
    [{tax_rate, item_count, net_amount, tax_amount, gross_amount}], ``buyer_data``,
    ``created_at``; relationships ``customer``, ``items``.
``GET /invoices?filter[number]=&filter[status]=&include=items``, ``GET /invoices/{id}?include=items``
    (``filter[number]`` is our assumption: anny does not document it).
``POST /items?calculate_from_net=true|false`` (default false; must equal the invoice's):
    ``title`` (required, <= 185), ``subtitle`` (<= 185 | null), ``quantity`` (a JSON integer,
    required), ``tax_rate`` (number >= 0, required), ``single_net_amount`` (from net) or
    ``single_gross_amount`` (from gross), required, the other one absent;
    ``relationships.document`` -> a *draft* ``invoices`` (required) -> 201 item: those + the
    derived single amount, ``net_amount``, ``tax_amount``, ``gross_amount``, ``currency``. No
    position: an invoice lists its items in creation order. Totals recalculate after each item.
    No item update (anny documents none; a non-draft invoice is ``locked``).
``PATCH /invoices/{id}`` ``{"data": {"type": "invoices", "id", "attributes"}}`` (our
    assumption: anny mentions linking "later via PATCH" and ``invoices.updated`` events, not the
    fields): ``recipient``, ``invoicing_party``, ``notes``, ``vat_number``, ``issued_at``,
    ``due_date`` (only those given change; others -> 422) -> 200 invoice; only a draft (else
    422 ``Only a draft invoice can be changed``). ``DELETE /items/{id}`` (our assumption, the
    JSON:API convention) -> 204; only on a draft (else 422); unknown -> 404.
Money rule (anny documents none; the sandbox's own, see ``anny_rules.item_totals``): per item,
    half up to the currency's ISO 4217 minor unit; the invoice sums its items. Option
    ``rounding: "half_even"`` makes the sandbox disagree with the client on purpose.
``POST /invoices/{id}/send`` -> 200 invoice ``sent``; only from draft, with ``issued_at`` and
    at least one item (else 422); fills a blank recipient and ``buyer_data`` from the customer.
Set paid, both forms of the seed: ``PUT /invoices/{id}/set-paid`` ``{"send_notification":
    bool}`` (body optional) or ``POST /invoices/{id}/set-paid?sendNotification=true|false`` ->
    200 invoice ``paid``; only from ``sent`` (else 422 ``invoice not in SENT status``).

Options: ``organization`` (the token's; absent: any, data kept per organization),
``identical_per_second``, ``rounding``, ``hold``. Crash points for tests (``hold`` or ``POST
/_sandbox/hold {"after": step, "count": n, "answer": bool}``, step in customer address invoice
item send set-paid): after the n-th commit of that step the server stops answering; every later
API request waits, and so does the n-th unless ``answer``. ``POST /_sandbox/hold {}`` releases:
the waiting requests are dropped unhandled (nothing commits late). ``GET /_sandbox/hold``.
State (``GET /_sandbox/state``): ``customers``, ``addresses``, ``invoices`` (each with
``organization``; invoices with their ``items`` in creation order), ``hold``, and the
framework's ``requests``, ``faults``.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

from aiohttp import web

from bulk.sandbox.anny_rules import (
    ROUNDINGS,
    ApiError,
    IdenticalGuard,
    address_fields,
    customer_fields,
    error_body,
    exact,
    invoice_fields,
    invoice_update_fields,
    item_fields,
    item_totals,
    money,
)
from bulk.sandbox.config import SandboxConfig, SandboxConfigError
from bulk.sandbox.control import control_route
from bulk.sandbox.core import WRITE_METHODS, Dialect, Problem, SandboxProblem
from bulk.sandbox.durable import DurableStore
from bulk.sandbox.idempotency import fingerprint
from bulk.sandbox.wire import MalformedJSON, json_response, loads_exact

__all__ = ["AnnySandbox", "create_app"]

API = "/api/v1"
STEPS = ("customer", "address", "invoice", "item", "send", "set-paid")
_KIND_NO = {"invoices": 1, "items": 2, "addresses": 0xA, "customers": 0xC}
_HOLD_ME = web.RequestKey("anny.hold", bool)
_INTERNAL = ("item_ids", "breakdown")  # invoice keys the state does not show
ZERO = Decimal(0)
Handler = Callable[[web.Request, "Org", Any], web.Response]


def create_app(config: SandboxConfig) -> web.Application:
    return AnnySandbox(config).create_app()


def _error(kind: str, status: int, detail: str) -> tuple[int, Any]:
    return status, {"errors": [{"status": str(status), "code": kind, "title": kind.replace("_", " ")
                                .capitalize(), "detail": detail}]}


def _ref(kind: str, ident: str | None) -> dict[str, Any]:
    return {"data": None if ident is None else {"type": kind, "id": ident}}


def _flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise ApiError.one(400, f"{name} must be true or false.", parameter=name)
    return raw in ("true", "1")


def _drop(request: web.Request) -> web.Response:
    """Close the connection unanswered (see ``core._drop``)."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=204)


class Org:
    """One organization's data (durable tables named after it). Invoices keep their item ids
    in creation order."""

    def __init__(self, durable: DurableStore, org_id: str) -> None:
        def table(kind: str) -> Any:
            return durable.table(f"{org_id}:{kind}")

        self.customers: dict[str, dict[str, Any]] = table("customers")
        self.addresses: dict[str, dict[str, Any]] = table("addresses")
        self.invoices: dict[str, dict[str, Any]] = table("invoices")
        self.items: dict[str, dict[str, Any]] = table("items")
        self.numbers: dict[str, str] = table("numbers")  # invoice number -> id


class AnnySandbox(Dialect):
    name = "anny"
    content_type = "application/vnd.api+json"
    problems: ClassVar[Mapping[Problem, tuple[int, Any]]] = {
        Problem.UNAUTHORIZED: _error("unauthenticated", 401, "A valid Bearer token is required."),
        Problem.FORBIDDEN: _error("unauthorized", 403, "This action is unauthorized."),
        Problem.NOT_FOUND: _error("not_found", 404, "The resource does not exist."),
        Problem.METHOD_NOT_ALLOWED: _error("method_not_allowed", 405, "Method not allowed."),
        Problem.MALFORMED_JSON: _error("bad_request", 400, "The request body is not valid JSON."),
        Problem.THROTTLED: _error("too_many_requests", 429,
                                  "Too Many Requests: retry after Retry-After seconds."),
        Problem.SERVER_ERROR: _error("server_error", 500, "Server Error."),
        # anny has no idempotency keys; the framework needs an answer for each kind anyway.
        Problem.IDEMPOTENCY_MISMATCH: _error("conflict", 409, "Conflict."),
        Problem.IDEMPOTENCY_IN_FLIGHT: _error("conflict", 409, "Conflict."),
        Problem.INVALID_IDEMPOTENCY_KEY: _error("bad_request", 400, "Bad request."),
    }

    def __init__(self, config: SandboxConfig) -> None:
        super().__init__(config)
        opts = config.options
        org, identical = opts.get("organization"), opts.get("identical_per_second", 4)
        if isinstance(identical, str) and identical.isdigit():  # from ``--option KEY=VALUE``
            identical = int(identical)
        problems = []
        if org is not None and not (isinstance(org, (str, int)) and str(org)):
            problems.append("organization must be a non-empty string")
        if isinstance(identical, bool) or not isinstance(identical, int) or identical < 0:
            problems.append("identical_per_second must be an integer >= 0")
        if opts.get("rounding", "half_up") not in ROUNDINGS:
            problems.append(f"rounding must be one of {', '.join(ROUNDINGS)}")
        if problems:
            raise SandboxConfigError("invalid anny sandbox options: " + "; ".join(problems))
        self.organization = None if org is None else str(org)
        self.rounding = ROUNDINGS[opts.get("rounding", "half_up")]
        self.guard = IdenticalGuard(int(identical))
        self.last_id = 0  # of the ids _new_id made
        self._stopped: asyncio.Event | None = None
        self.clear()
        self.set_hold(opts.get("hold") or {})

    # --- framework hooks ---------------------------------------------------------------

    durable_values = ("last_id",)

    def clear(self) -> None:
        self.known_orgs = self.durable.table("orgs")  # id -> True, in order of first request
        self.orgs: dict[str, Org] = {org_id: Org(self.durable, org_id) for org_id in self.known_orgs}
        self.guard.clear()
        if hasattr(self, "_hold"):
            self.set_hold(self._hold)

    def delete_object(self, collection: str, ident: Any, *, recreate: bool) -> Any:
        if collection != "customers" or recreate:
            return super().delete_object(collection, ident, recreate=recreate)
        for org in self.orgs.values():
            if str(ident) in org.customers:
                del org.customers[str(ident)]  # its address stays, orphaned, as anny keeps it
                return None
        raise KeyError(ident)

    def snapshot(self) -> dict[str, Any]:
        customers, addresses, invoices = [], [], []
        for org_id, org in self.orgs.items():
            customers += [{"organization": org_id, **c} for c in org.customers.values()]
            addresses += [{"organization": org_id, **a} for a in org.addresses.values()]
            invoices += [{"organization": org_id, **{k: v for k, v in inv.items() if k not in _INTERNAL},
                          "items": [org.items[i] for i in inv["item_ids"]]} for inv in org.invoices.values()]
        return {"customers": customers, "addresses": addresses, "invoices": invoices,
                "hold": self.hold_state()}

    def add_routes(self, router: web.UrlDispatcher) -> None:
        api = self._api
        router.add_get(f"{API}/customers", api(self.list_customers))
        router.add_post(f"{API}/customers", api(self.create_customer))
        router.add_get(f"{API}/customers/{{id}}", api(self.get_customer))
        router.add_post(f"{API}/addresses", api(self.create_address))
        router.add_get(f"{API}/invoices", api(self.list_invoices))
        router.add_post(f"{API}/invoices", api(self.create_invoice))
        router.add_get(f"{API}/invoices/{{id}}", api(self.get_invoice))
        router.add_post(f"{API}/invoices/{{id}}/send", api(self.send))
        router.add_put(f"{API}/invoices/{{id}}/set-paid", api(self.set_paid))
        router.add_post(f"{API}/invoices/{{id}}/set-paid", api(self.set_paid))
        router.add_post(f"{API}/items", api(self.create_item))
        router.add_patch(f"{API}/invoices/{{id}}", api(self.update_invoice))
        router.add_delete(f"{API}/items/{{id}}", api(self.delete_item))

        @control_route
        async def hold(request: web.Request) -> web.StreamResponse:
            if request.method == "POST":
                try:
                    self.set_hold(await request.json())
                except (ValueError, SandboxConfigError) as exc:
                    return json_response({"error": str(exc)}, status=400)
            return json_response(self.hold_state())

        router.add_get("/_sandbox/hold", hold)
        router.add_post("/_sandbox/hold", hold)

    # --- crash points ------------------------------------------------------------------

    def set_hold(self, rule: Any) -> None:
        """Set (or with ``{}`` clear) the crash-point rule; releases whatever waits."""
        if not isinstance(rule, dict) or (rule and (
                rule.get("after") not in STEPS or isinstance(rule.get("count"), bool)
                or not isinstance(rule.get("count"), int) or rule["count"] < 1)):
            raise SandboxConfigError(f"hold must be {{}} or {{'after': one of {', '.join(STEPS)}, "
                                     "'count': n >= 1, 'answer': bool}}")
        if self._stopped is not None:
            self._stopped.set()  # the waiting requests are dropped, unhandled
        self._stopped, self._hold, self._hold_seen = None, dict(rule), 0

    def hold_state(self) -> dict[str, Any]:
        return {"rule": self._hold, "seen": self._hold_seen, "stopped": self._stopped is not None}

    def _committed(self, request: web.Request, step: str) -> None:
        rule = self._hold
        if not rule or self._stopped is not None or rule["after"] != step:
            return
        self._hold_seen += 1
        if self._hold_seen >= rule["count"]:
            self._stopped = asyncio.Event()
            if not rule.get("answer"):
                request[_HOLD_ME] = True

    # --- the request wrapper: org, identical guard, media type, body, errors ----------

    def _api(self, handler: Handler) -> Callable[[web.Request], Any]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            if self._stopped is not None:  # checked after the last await before the handler
                await self._stopped.wait()
                return _drop(request)
            org_id = request.query.get("o", "")
            try:
                if not org_id:
                    raise ApiError.one(400, "The o parameter (organization id) is required.",
                                       parameter="o")
                if self.organization is not None and org_id != self.organization:
                    raise SandboxProblem(Problem.FORBIDDEN)
                try:
                    body = loads_exact(raw) if raw.strip() else None
                except MalformedJSON:
                    body, bad_json = raw, True
                else:
                    bad_json = False
                query = tuple(sorted(request.query.items()))
                identity = (org_id, request.method, request.path, query,
                            raw if bad_json else fingerprint(body))
                wait = self.guard.admit(identity)
                if wait:
                    response = self.problem(Problem.THROTTLED, request)
                    response.headers["Retry-After"] = str(wait)
                    return response
                media = request.content_type
                if raw.strip() and request.method in WRITE_METHODS and media != self.content_type:
                    raise ApiError.one(415, f"Send writes as {self.content_type}.")
                if bad_json:
                    raise SandboxProblem(Problem.MALFORMED_JSON)
                response = handler(request, self._org(org_id), body)
            except ApiError as exc:
                return self.respond(error_body(exc.status, exc.errors), exc.status)
            if request.get(_HOLD_ME) and self._stopped is not None:
                await self._stopped.wait()
                return _drop(request)
            return response

        return wrapped

    def _org(self, org_id: str) -> Org:
        org = self.orgs.get(org_id)
        if org is None:
            org = self.orgs[org_id] = Org(self.durable, org_id)
            self.known_orgs[org_id] = True
        return org

    def _new_id(self, kind: str) -> str:
        self.last_id += 1
        return f"{_KIND_NO[kind]:08x}-0000-4000-8000-{self.last_id:012x}"

    # --- customers and addresses -------------------------------------------------------

    def list_customers(self, request: web.Request, org: Org, body: Any) -> web.Response:
        found = list(org.customers.values())
        email, search = request.query.get("filter[email]"), request.query.get("filter[search]")
        if email is not None:
            found = [c for c in found if c["email"].lower() == email.lower()]
        if search:
            needle = search.lower()
            found = [c for c in found if any(needle in (c[k] or "").lower() for k in
                                             ("given_name", "family_name", "email", "company"))]
        include = _includes(request, {"address"})
        rows, meta = _page(request, found)
        included = [self._address_res(org.addresses[c["address_id"]]) for c in rows
                    if "address" in include and c["address_id"]]
        return self._list([self._customer_res(c) for c in rows], meta, included, include)

    def get_customer(self, request: web.Request, org: Org, body: Any) -> web.Response:
        customer = org.customers.get(request.match_info["id"])
        if customer is None:
            raise SandboxProblem(Problem.NOT_FOUND)
        return self.respond({"data": self._customer_res(customer)})

    def create_customer(self, request: web.Request, org: Org, body: Any) -> web.Response:
        customer = {"id": self._new_id("customers"), **customer_fields(body), "address_id": None,
                    "created_at": _now()}
        org.customers[customer["id"]] = customer
        self._committed(request, "customer")
        return self.respond({"data": self._customer_res(customer)}, 201)

    def create_address(self, request: web.Request, org: Org, body: Any) -> web.Response:
        address = {"id": self._new_id("addresses"), **address_fields(body, org.customers.__contains__)}
        org.addresses[address["id"]] = address
        org.customers[address["customer_id"]]["address_id"] = address["id"]
        self._committed(request, "address")
        return self.respond({"data": self._address_res(address)}, 201)

    # --- invoices and items ------------------------------------------------------------

    def list_invoices(self, request: web.Request, org: Org, body: Any) -> web.Response:
        found = list(org.invoices.values())
        number, status = request.query.get("filter[number]"), request.query.get("filter[status]")
        if number is not None:
            found = [org.invoices[org.numbers[number]]] if number in org.numbers else []
        if status is not None:
            found = [inv for inv in found if inv["status"] == status]
        include = _includes(request, {"items"})
        rows, meta = _page(request, found)
        included = [self._item_res(org.items[i]) for inv in rows if "items" in include
                    for i in inv["item_ids"]]
        return self._list([self._invoice_res(inv) for inv in rows], meta, included, include)

    def get_invoice(self, request: web.Request, org: Org, body: Any) -> web.Response:
        invoice = _invoice(org, request)
        doc: dict[str, Any] = {"data": self._invoice_res(invoice)}
        if "items" in _includes(request, {"items"}):
            doc["included"] = [self._item_res(org.items[i]) for i in invoice["item_ids"]]
        return self.respond(doc)

    def create_invoice(self, request: web.Request, org: Org, body: Any) -> web.Response:
        fields = invoice_fields(body, org.customers.__contains__, org.numbers.__contains__)
        if fields["number"] is None:
            fields["number"] = next(f"RE-{n:05d}" for n in itertools.count(len(org.numbers) + 1)
                                    if f"RE-{n:05d}" not in org.numbers)
        invoice = {"id": self._new_id("invoices"), **fields, "status": "draft", "net_amount": ZERO,
                   "tax_amount": ZERO, "total": ZERO, "buyer_data": None, "paid_notification": None,
                   "created_at": _now(), "item_ids": []}
        _recalculate(org, invoice)
        org.invoices[invoice["id"]] = invoice
        org.numbers[invoice["number"]] = invoice["id"]
        self._committed(request, "invoice")
        return self.respond({"data": self._invoice_res(invoice)}, 201)

    def create_item(self, request: web.Request, org: Org, body: Any) -> web.Response:
        from_net = _flag(request, "calculate_from_net")
        fields = item_fields(body, from_net, org.invoices.get)
        invoice = fields.pop("invoice")
        single = fields.pop("single")
        currency = invoice["currency"]
        t = item_totals(fields["quantity"], single, fields["tax_rate"], from_net=from_net,
                        currency=currency, rounding=self.rounding)
        item = {"id": self._new_id("items"), **fields, "invoice_id": invoice["id"],
                "single_net_amount": single if from_net else t.derived_single,
                "single_gross_amount": t.derived_single if from_net else single,
                "net_amount": t.net, "tax_amount": t.tax, "gross_amount": t.gross,
                "currency": currency}
        org.items[item["id"]] = item
        invoice["item_ids"].append(item["id"])
        _recalculate(org, invoice)
        self._committed(request, "item")
        return self.respond({"data": self._item_res(item)}, 201)

    def update_invoice(self, request: web.Request, org: Org, body: Any) -> web.Response:
        invoice = _invoice(org, request)
        fields = invoice_update_fields(body, invoice["id"])
        if invoice["status"] != "draft":
            raise ApiError.one(422, f"Only a draft invoice can be changed (this one is {invoice['status']}).")
        invoice.update(fields)
        org.invoices[invoice["id"]] = invoice
        self._committed(request, "update")
        return self.respond({"data": self._invoice_res(invoice)})

    def delete_item(self, request: web.Request, org: Org, body: Any) -> web.Response:
        item = org.items.get(request.match_info["id"])
        if item is None:
            raise SandboxProblem(Problem.NOT_FOUND)
        invoice = org.invoices[item["invoice_id"]]
        if invoice["status"] != "draft":
            raise ApiError.one(422, f"Only a draft invoice's items can be deleted (this one is {invoice['status']}).")
        invoice["item_ids"] = [i for i in invoice["item_ids"] if i != item["id"]]
        del org.items[item["id"]]
        _recalculate(org, invoice)
        org.invoices[invoice["id"]] = invoice
        self._committed(request, "delete-item")
        return web.Response(status=204)

    def send(self, request: web.Request, org: Org, body: Any) -> web.Response:
        invoice = _invoice(org, request)
        if invoice["status"] != "draft":
            raise ApiError.one(422, "Only a draft invoice can be sent.")
        if invoice["issued_at"] is None:
            raise ApiError.one(422, "The issued_at is required to send an invoice.",
                               pointer="/data/attributes/issued_at")
        if not invoice["item_ids"]:
            raise ApiError.one(422, "An invoice without items cannot be sent.")
        customer = org.customers.get(invoice["customer_id"] or "")
        if customer is not None:
            address = org.addresses.get(customer["address_id"] or "") or {}
            name = " ".join(p for p in (customer["given_name"], customer["family_name"]) if p)
            invoice["buyer_data"] = {"company_name": customer["company"], "contact_name": name or None,
                                     "address_line": address.get("street_address"),
                                     "postal_code": address.get("zip_code"),
                                     "city": address.get("city"),
                                     "country_code": address.get("country_code")}
            if not invoice["recipient"]:
                invoice["recipient"] = "\n".join(p for p in (customer["company"], name) if p) or None
        invoice["status"] = "sent"
        self._committed(request, "send")
        return self.respond({"data": self._invoice_res(invoice)})

    def set_paid(self, request: web.Request, org: Org, body: Any) -> web.Response:
        invoice = _invoice(org, request)
        if request.method == "PUT":
            notify = body.get("send_notification", False) if isinstance(body, dict) else body
            if notify is None:
                notify = False
            if not isinstance(notify, bool):
                raise ApiError.one(422, "send_notification must be true or false.",
                                   pointer="/send_notification")
        else:
            notify = _flag(request, "sendNotification")
        if invoice["status"] != "sent":
            raise ApiError.one(422, "invoice not in SENT status")
        invoice["status"], invoice["paid_notification"] = "paid", notify
        self._committed(request, "set-paid")
        return self.respond({"data": self._invoice_res(invoice)})

    # --- JSON:API resources ------------------------------------------------------------

    def _list(self, data: list[Any], meta: dict[str, Any], included: list[Any],
              include: set[str]) -> web.Response:
        doc: dict[str, Any] = {"data": data, "meta": meta}
        if include:
            doc["included"] = included
        return self.respond(doc)

    @staticmethod
    def _customer_res(c: dict[str, Any]) -> dict[str, Any]:
        names = " ".join(p for p in (c["given_name"], c["family_name"]) if p)
        attrs = {k: c[k] for k in ("email", "locale", "given_name", "family_name", "company",
                                   "mobile", "created_at")}
        return {"type": "customers", "id": c["id"],
                "attributes": {**attrs, "full_name": names or c["company"] or c["email"]},
                "relationships": {"address": _ref("addresses", c["address_id"])}}

    @staticmethod
    def _address_res(a: dict[str, Any]) -> dict[str, Any]:
        return {"type": "addresses", "id": a["id"],
                "attributes": {k: v for k, v in a.items() if k not in ("id", "customer_id")},
                "relationships": {"addressable": _ref("customers", a["customer_id"])}}

    @staticmethod
    def _invoice_res(inv: dict[str, Any]) -> dict[str, Any]:
        cur = inv["currency"]
        skip = ("id", "customer_id", "item_ids", "net_amount", "tax_amount", "total", "breakdown",
                "paid_notification")
        attrs = {k: v for k, v in inv.items() if k not in skip}
        attrs.update(formatted_number=inv["number"], locked=inv["status"] != "draft",
                     net_amount=money(inv["net_amount"], cur),
                     tax_amount=money(inv["tax_amount"], cur), total=money(inv["total"], cur),
                     vat_breakdown=[{"tax_rate": exact(rate), "item_count": n,
                                     "net_amount": money(net, cur), "tax_amount": money(tax, cur),
                                     "gross_amount": money(gross, cur)}
                                    for rate, (n, net, tax, gross) in inv["breakdown"].items()])
        return {"type": "invoices", "id": inv["id"], "attributes": attrs,
                "relationships": {"customer": _ref("customers", inv["customer_id"]),
                                  "items": {"data": [{"type": "items", "id": i}
                                                     for i in inv["item_ids"]]}}}

    @staticmethod
    def _item_res(it: dict[str, Any]) -> dict[str, Any]:
        cur = it["currency"]
        attrs = {k: it[k] for k in ("title", "subtitle", "quantity", "currency")}
        attrs.update(tax_rate=exact(it["tax_rate"]),
                     single_net_amount=exact(it["single_net_amount"]),
                     single_gross_amount=exact(it["single_gross_amount"]),
                     **{k: money(it[k], cur) for k in ("net_amount", "tax_amount", "gross_amount")})
        return {"type": "items", "id": it["id"], "attributes": attrs,
                "relationships": {"document": _ref("invoices", it["invoice_id"])}}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _invoice(org: Org, request: web.Request) -> dict[str, Any]:
    invoice = org.invoices.get(request.match_info["id"])
    if invoice is None:
        raise SandboxProblem(Problem.NOT_FOUND)
    return invoice


def _recalculate(org: Org, invoice: dict[str, Any]) -> None:
    """The invoice's totals and VAT breakdown: sums over its items (after every item)."""
    net = tax = gross = ZERO
    breakdown: dict[Decimal, tuple[int, Decimal, Decimal, Decimal]] = {}
    for item_id in invoice["item_ids"]:
        item = org.items[item_id]
        net, tax, gross = net + item["net_amount"], tax + item["tax_amount"], gross + item["gross_amount"]
        n, b_net, b_tax, b_gross = breakdown.get(item["tax_rate"], (0, ZERO, ZERO, ZERO))
        breakdown[item["tax_rate"]] = (n + 1, b_net + item["net_amount"], b_tax + item["tax_amount"],
                                       b_gross + item["gross_amount"])
    invoice.update(net_amount=net, tax_amount=tax, total=gross, breakdown=breakdown)


def _includes(request: web.Request, allowed: set[str]) -> set[str]:
    raw = request.query.get("include", "")
    wanted = {part for part in raw.split(",") if part}
    if wanted - allowed:
        raise ApiError.one(400, f"Include path(s) not supported: {', '.join(sorted(wanted - allowed))}.",
                           parameter="include")
    return wanted


def _page(request: web.Request, rows: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    values = []
    for name, default in (("page[number]", 1), ("page[size]", 30)):
        raw = request.query.get(name)
        try:
            values.append(default if raw is None else int(raw))
        except ValueError:
            raise ApiError.one(400, f"{name} must be an integer.", parameter=name) from None
    number, size = max(1, values[0]), min(30, max(1, values[1]))
    last = max(1, math.ceil(len(rows) / size))
    page = {"currentPage": number, "lastPage": last, "perPage": size, "total": len(rows)}
    return rows[(number - 1) * size: number * size], {"page": page}
