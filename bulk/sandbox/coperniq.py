"""Coperniq sandbox dialect: the invoice part of Coperniq's public API, as its OpenAPI document
(``fixtures/coperniq/coperniq-openapi.yml``), seed 003 and API-NOTES §4 describe it.

The sandbox's root is the API's base (``https://api.coperniq.io/v1``): ``{base_url}/invoices``.

General
    Every request needs ``x-api-key: <key>``; JSON in and out. Numbers are JSON numbers, read
    exactly (never through float): ``amount`` is sum(unitPrice x quantity), unrounded (Coperniq
    documents no rounding and has no tax). Every authenticated answer carries
    ``X-RateLimit-Limit`` and ``X-RateLimit-Remaining`` (C-auth).
Errors ``{"message", "code"}`` (+ ``"field"`` on a validation 400)
    401 ``UNAUTHORIZED``; 404 ``NOT_FOUND``; 429 ``RATE_LIMIT_EXCEEDED``; 500
    ``INTERNAL_SERVER_ERROR``. A 400 has ``message`` and ``field`` but NO ``code``: the vendor's
    document allows only ``UNAUTHORIZED`` there (a Fern-export artefact, API-NOTES §4), and
    ``code`` is optional, so leaving it out is the one answer that is both honest and valid.
    403 (read-only key on a write) and 405 have no documented code either: ``message`` only.
Limits (options; every limit is per key)
    ``daily_quota`` (default 5000, ``off`` for none) requests per ``quota_window`` seconds
    (default 86400, rolling). Beyond it: 429 ``RATE_LIMIT_EXCEEDED`` with Remaining 0 and no
    Retry-After (none is documented); refused requests do not count. The per-second limit is
    the framework's ``rate_limit``/``read_rate_limit`` (Coperniq: 100/s, reads and writes alike).
Seed data (options ``accounts``, ``catalog_items``; see ``coperniq_rules.Seed``)
    accounts ``CUST-000000``.. (id 10000 + k), each with one project (id 20000 + k, title
    ``CUST-000000 project``); catalog items ``SKU-001``.. (id 7000 + k) and ``DISCOUNT`` (7000).
    ``seed_skus`` (a list) adds a catalog item per SKU, ``seed_accounts`` (a list of ``[title,
    id or null]``) an account per entry (with that id, or a new one, titled so): what
    ``--seed-from`` adds (``bulk.sandbox.seed_from``).
Routes
    ``GET /catalog-items`` -> 200 [CatalogItem] (active ones).
    ``GET /accounts?title=&q=&page=&page_size=&order_by=`` -> 200 [Account]; ``title`` and
    ``q`` match case-insensitive substrings of the title; ``page_size`` 1..100 (default 20).
    ``POST /invoices`` ``InvoiceCreate`` -> 201 Invoice | 400 (rules in ``coperniq_rules``).
    ``POST /catalog-items`` ``CatalogItemCreate`` -> 201 CatalogItem | 400; ``POST /accounts``
    ``AccountUpsert`` (``match_by``, ``match_found_strategy``) -> 200 Account | 400 (rules in
    ``coperniq_refs``). Made catalog items and accounts are durable like the invoices.
    ``GET /invoices/{id}`` -> 200 Invoice | 404.
    ``PATCH /invoices/{id}`` ``InvoiceUpdate`` (``update-invoice``) -> 200 Invoice | 400 | 404:
    only the fields given change; ``lineItems`` / ``sections`` replace every line (the amount
    follows); ``calculationMethod`` and any other field -> 400; the lines of a PAID or
    PARTIALLY_PAID invoice -> 400 ``field: lineItems`` (our assumption: the document does not
    say what Coperniq refuses).
    ``DELETE /invoices/{id}`` -> 200 with no body | 404 (``delete-invoice``: the document states
    no condition, so an invoice of any status can be deleted; its id is never reused).
    ``GET /invoices``, ``GET /projects/{id}/invoices``, ``GET /accounts/{id}/invoices`` (the
    account's own invoices and its projects') with ``page``, ``page_size`` (max 100),
    ``order_by`` asc|desc (by id), ``updated_after``/``updated_before`` -> 200 ``{items, page,
    page_size, has_more}`` | 400 (bad parameter) | 404 (no such project/account).
Sandbox only
    ``GET /_sandbox/state``: ``accounts``, ``catalog_items``, ``invoices`` (as answered, plus the
    ``issueDate`` Coperniq keeps but does not return), ``quota``, ``deleted`` (how many invoices
    were deleted), the framework's counters. With option ``record_exchanges`` true, ``GET
    /_sandbox/exchanges`` lists every API request and answer (``status`` null when the connection
    was closed without one), for contract tests.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Context, Decimal
from typing import Any, ClassVar

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from bulk.sandbox.config import SandboxConfig, SandboxConfigError
from bulk.sandbox.control import control_route
from bulk.sandbox.coperniq_refs import match_query, validate_account, validate_catalog_item
from bulk.sandbox.coperniq_rules import (
    Invalid,
    NewInvoice,
    parse_seed,
    validate_invoice,
    validate_update,
)
from bulk.sandbox.core import Dialect, Problem, SandboxProblem
from bulk.sandbox.durable import Table
from bulk.sandbox.wire import plain

__all__ = ["CoperniqSandbox", "create_app"]

_CTX = Context(prec=60)
_MAX_EXCHANGES = 50_000
_MADE_ACCOUNTS = 30_000_000  # accounts made through the API or --seed-from get ids above this


def create_app(config: SandboxConfig) -> web.Application:
    sandbox = CoperniqSandbox(config)
    app = sandbox.create_app()
    app.middlewares.insert(0, sandbox.quota_middleware())  # outermost: sees every API answer
    return app


def _number(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(plain(value))  # an exact JSON number, as Coperniq's doubles are
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, default=_number), status=status, content_type="application/json")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _quota_options(options: Mapping[str, Any]) -> tuple[int | None, float]:
    """``(daily_quota or None, quota_window seconds)``; SandboxConfigError for a bad value."""
    raw, window = options.get("daily_quota", 5000), options.get("quota_window", 86_400)
    try:
        quota = None if raw is None or str(raw).lower() in ("off", "none", "") else int(str(raw))
        seconds = float(str(window))
    except ValueError:
        quota, seconds = 0, 0.0
    if (quota is not None and quota < 1) or not 0 < seconds < 10**9:
        raise SandboxConfigError(f"coperniq sandbox options: daily_quota must be >= 1 or off (got {raw!r}) "
                                 f"and quota_window seconds > 0 (got {window!r})")
    return quota, seconds


class CoperniqSandbox(Dialect):
    name = "coperniq"
    problems: ClassVar[Mapping[Problem, tuple[int, Any]]] = {
        Problem.UNAUTHORIZED: (401, {"message": "Invalid or missing API key", "code": "UNAUTHORIZED"}),
        Problem.FORBIDDEN: (403, {"message": "API key valid but does not have access to this resource"}),
        Problem.NOT_FOUND: (404, {"message": "Resource not found", "code": "NOT_FOUND"}),
        Problem.METHOD_NOT_ALLOWED: (405, {"message": "Method not allowed"}),
        Problem.MALFORMED_JSON: (400, {"message": "Request body is not valid JSON", "field": "body"}),
        Problem.THROTTLED: (429, {"message": "Rate limit exceeded", "code": "RATE_LIMIT_EXCEEDED"}),
        Problem.SERVER_ERROR: (500, {"message": "Internal server error", "code": "INTERNAL_SERVER_ERROR"}),
        # Coperniq has no idempotency keys; the framework never raises these for this dialect.
        Problem.IDEMPOTENCY_MISMATCH: (400, {"message": "Idempotency keys are not supported"}),
        Problem.IDEMPOTENCY_IN_FLIGHT: (400, {"message": "Idempotency keys are not supported"}),
        Problem.INVALID_IDEMPOTENCY_KEY: (400, {"message": "Idempotency keys are not supported"}),
    }

    def __init__(self, config: SandboxConfig) -> None:
        super().__init__(config)
        options = config.options
        self.seed = parse_seed(options)
        self.seed_skus = [str(sku) for sku in options.get("seed_skus") or ()]
        self.seed_accounts = [(str(t), None if i is None else int(i)) for t, i in options.get("seed_accounts") or ()]
        self.quota, self.quota_window = _quota_options(options)
        self.recording = str(options.get("record_exchanges", "")).lower() in ("1", "true", "yes")
        self.clear()

    # --- framework hooks ---------------------------------------------------------------
    durable_values = ("line_ids", "deleted")

    def credential(self, request: web.Request) -> str | None:
        return request.headers.get("x-api-key", "").strip() or None

    def clear(self) -> None:
        now = _now()
        # Durable like the invoices: a catalog item or account made through the API (or a
        # deleted or re-made account) stays so across a restart.
        self.catalog: dict[int, dict[str, Any]] = self.durable.table("catalog")
        self.accounts: dict[int, dict[str, Any]] = self.durable.table("accounts")
        self.projects: Table[int, dict[str, Any]] = self.durable.table("projects")  # touch(): changed in place
        if not self.durable.restored:
            self.catalog.update({item["id"]: item for item in self.seed.catalog(now)})
            accounts, projects = self.seed.records(now)
            self.accounts.update(accounts)
            self.projects.update(projects)
            self._seed_more(now)
        self.invoices: dict[int, dict[str, Any]] = self.durable.table("invoices")
        self.issue_dates: dict[int, str | None] = self.durable.table("issue_dates")
        self.line_ids = 0
        self.deleted = 0  # ids are never reused: a new id counts the deleted ones too
        self.usage: dict[str, deque[float]] = {}
        self.exchanges: list[dict[str, Any]] = []

    def _seed_more(self, now: str) -> None:
        """``seed_skus`` and ``seed_accounts`` (``--seed-from``), over the built-in seed."""
        skus = {item["sku"] for item in self.catalog.values()}
        for sku in self.seed_skus:
            if sku not in skus:
                skus.add(sku)
                self._add_item({"name": f"Catalog item {sku}", "type": "SERVICE", "category": "INSTALLATION",
                                "catalog": "OTHER", "cost": Decimal(0), "price": Decimal(0), "manufacturer": None,
                                "sku": sku, "code": None, "description": None}, now)
        titles = {a["title"] for a in self.accounts.values()}
        for title, ident in self.seed_accounts:
            if ident is not None and (ident in self.accounts or ident in self.projects):
                continue
            if ident is None and title in titles:
                continue
            titles.add(title)
            self._add_account({"title": title, "description": None, "address": [""], "accountType": "COMMERCIAL",
                               "primaryEmail": None, "primaryPhone": None, "custom": {}}, now, ident)

    def _add_item(self, fields: dict[str, Any], now: str) -> dict[str, Any]:
        item_id = max(self.catalog, default=self.seed.CATALOG_BASE) + 1
        item = {"id": item_id, **fields, "image": None, "isArchived": False, "createdById": 1,
                "createdAt": now, "updatedAt": now, "preferredVendorId": None}
        self.catalog[item_id] = item
        return item

    def _add_account(self, fields: dict[str, Any], now: str, ident: int | None = None) -> dict[str, Any]:
        # New ids above every seeded account and project id, so an id never names both.
        new_id = ident if ident is not None else max(max(self.accounts, default=0), _MADE_ACCOUNTS) + 1
        account = {"id": new_id, "createdAt": now, "updatedAt": now, **fields, "isActive": True,
                   "number": len(self.accounts) + 1, "createdBy": None, "updatedBy": None}
        self.accounts[new_id] = account
        return account

    def delete_object(self, collection: str, ident: Any, *, recreate: bool) -> Any:
        if collection != "accounts":
            return super().delete_object(collection, ident, recreate=recreate)
        account = self.accounts.pop(int(ident))  # KeyError: no such account
        if not recreate:
            return None
        new_id = max(self.accounts, default=int(ident)) + 1
        self.accounts[new_id] = {**account, "id": new_id}
        for project_id, project in self.projects.items():
            if project["accountId"] == int(ident):
                project["accountId"] = new_id
                self.projects.touch(project_id)  # changed in place, reached by iterating
        return new_id

    def snapshot(self) -> dict[str, Any]:
        return {
            "invoices": [{**inv, "issueDate": self.issue_dates[i]} for i, inv in self.invoices.items()],
            "accounts": list(self.accounts.values()),
            "catalog_items": list(self.catalog.values()),
            "quota": {"limit": self.quota, "window_seconds": self.quota_window,
                      "used": sum(len(q) for q in self.usage.values())},
            "deleted": self.deleted,
            "seed": {"accounts": self.seed.accounts, "catalog_items": self.seed.catalog_items},
        }

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/catalog-items", self.list_catalog)
        router.add_get("/accounts", self.list_accounts)
        router.add_post("/accounts", self.create_account)
        router.add_post("/catalog-items", self.create_catalog_item)
        router.add_get("/accounts/{id}/invoices", self.account_invoices)
        router.add_get("/projects/{id}/invoices", self.project_invoices)
        router.add_get("/invoices", self.list_invoices)
        router.add_post("/invoices", self.create_invoice)
        router.add_get("/invoices/{id}", self.get_invoice)
        router.add_delete("/invoices/{id}", self.delete_invoice)
        router.add_patch("/invoices/{id}", self.update_invoice)

        async def exchanges(request: web.Request) -> web.StreamResponse:
            return web.Response(body=orjson.dumps(self.exchanges), content_type="application/json")

        router.add_get("/_sandbox/exchanges", control_route(exchanges))

    # --- handlers ----------------------------------------------------------------------
    async def list_catalog(self, request: web.Request) -> web.Response:
        return _json([item for item in self.catalog.values() if not item["isArchived"]])

    async def list_accounts(self, request: web.Request) -> web.Response:
        found = list(self.accounts.values())
        for name in ("title", "q"):
            needle = request.query.get(name)
            if needle:
                found = [a for a in found if needle.lower() in a["title"].lower()]
        # 400 is not documented for this operation: bad paging values fall back to the defaults.
        try:
            return _json(self._page(request, found)[0])
        except Invalid:
            return _json(found[:20])

    async def account_invoices(self, request: web.Request) -> web.Response:
        account = self._id(request, self.accounts)
        return self._list(request, [v for v in self.invoices.values() if v["account"]["id"] == account])

    async def project_invoices(self, request: web.Request) -> web.Response:
        project = self._id(request, self.projects)
        return self._list(request, [v for v in self.invoices.values() if v["record"]["id"] == project])

    async def list_invoices(self, request: web.Request) -> web.Response:
        return self._list(request, list(self.invoices.values()))

    async def get_invoice(self, request: web.Request) -> web.Response:
        return _json(self.invoices[self._id(request, self.invoices)])

    async def delete_invoice(self, request: web.Request) -> web.Response:
        invoice_id = self._id(request, self.invoices)
        del self.invoices[invoice_id]
        del self.issue_dates[invoice_id]
        self.deleted += 1
        return web.Response(status=200)  # the document's 200 has no content

    async def create_invoice(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)
        try:
            new = validate_invoice(body, lambda i: i in self.accounts or i in self.projects,
                                   lambda i: i in self.catalog and not self.catalog[i]["isArchived"])
        except Invalid as exc:
            return _json({"message": exc.message, "field": exc.field}, 400)
        return _json(self._commit(new), 201)

    async def update_invoice(self, request: web.Request) -> web.Response:
        """``PATCH /invoices/{id}`` (``update-invoice``): a partial update; ``lineItems`` /
        ``sections`` replace every line (the amount follows); 200 with the invoice."""
        invoice_id = self._id(request, self.invoices)
        body = await self.read_json(request)
        old = self.invoices[invoice_id]
        try:
            change = validate_update(body, old["status"],
                                     lambda i: i in self.catalog and not self.catalog[i]["isArchived"])
        except Invalid as exc:
            return _json({"message": exc.message, "field": exc.field}, 400)
        invoice = dict(old)
        if change.lines is not None:
            invoice["amount"], invoice["lineItems"] = self._lines(change.lines)
        if change.status is not None:
            invoice["status"] = change.status
        if change.status is not None or change.lines is not None:
            invoice["amountPaid"] = invoice["amount"] if invoice["status"] == "PAID" else old["amountPaid"]
        if change.due_date is not None:
            invoice["dueDate"] = change.due_date
        if change.has_description:
            invoice["description"] = change.description
        invoice["updatedAt"] = _now()
        self.invoices[invoice_id] = invoice  # a new value: the durable table saves it
        return _json(invoice)

    async def create_catalog_item(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)
        try:
            fields = validate_catalog_item(body)
            sku = fields["sku"]
            if sku is not None and any(i["sku"] == sku and not i["isArchived"] for i in self.catalog.values()):
                raise Invalid("sku", f"an active catalog item already has the SKU {sku!r}")
        except Invalid as exc:
            return _json({"message": exc.message, "field": exc.field}, 400)
        return _json(self._add_item(fields, _now()), 201)

    async def create_account(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)
        try:
            match_by, strategy = match_query(request.query)
            fields = validate_account(body)
        except Invalid as exc:
            return _json({"message": exc.message, "field": exc.field}, 400)
        found = next((a for a in self.accounts.values() if fields[match_by] is not None
                      and a.get(match_by) == fields[match_by]), None)
        if found is None:
            return _json(self._add_account(fields, _now()))
        if strategy != "skip":
            changes = {k: v for k, v in fields.items() if strategy == "replace" or found.get(k) in (None, "", [], {})}
            found = {**found, **changes, "updatedAt": _now()}
            self.accounts[found["id"]] = found
        return _json(found)

    # --- helpers -------------------------------------------------------------------------
    def _lines(self, new_lines: list[tuple[int, int, Decimal, Decimal, str | None]]
               ) -> tuple[Decimal, list[dict[str, Any]]]:
        amount, lines = Decimal(0), []
        for item_id, quantity, cost, price, description in new_lines:
            amount = _CTX.add(amount, _CTX.multiply(price, quantity))
            self.line_ids += 1
            item = self.catalog[item_id]
            lines.append({"id": self.line_ids, "catalogItemId": item_id, "quantity": quantity, "unitCost": cost,
                          "unitPrice": price, "description": description,
                          "catalogItem": {k: item[k] for k in ("id", "name", "manufacturer", "sku", "type")}})
        return amount, lines

    def _commit(self, new: NewInvoice) -> dict[str, Any]:
        now = _now()
        if new.record_id in self.projects:
            project = self.projects[new.record_id]
            account = self.accounts[project["accountId"]]
            record = {"id": project["id"], "uid": project["uid"], "title": project["title"]}
        else:
            account = self.accounts[new.record_id]
            record = {"id": account["id"], "uid": account["number"], "title": account["title"]}
        amount, lines = self._lines(new.lines)
        invoice_id = 900_000 + len(self.invoices) + self.deleted + 1
        invoice: dict[str, Any] = {
            "id": invoice_id, "uid": invoice_id - 899_000, "description": new.description, "type": "INVOICE",
            "status": new.status, "basedOnId": None, "basedOnUid": None,
            "amount": amount, "amountPaid": amount if new.status == "PAID" else Decimal(0),
            "isArchived": False, "sharedWithPortal": False, "calculationMethod": "LINE_ITEMS",
            "percentage": None, "baseAmount": None, "createdAt": now, "updatedAt": now,
            "account": {"id": account["id"], "title": account["title"]}, "record": record, "lineItems": lines,
        }
        if new.due_date is not None:
            invoice["dueDate"] = new.due_date  # ``type: string``, not nullable: absent when unset
        self.invoices[invoice_id] = invoice
        self.issue_dates[invoice_id] = new.issue_date
        return invoice

    @staticmethod
    def _id(request: web.Request, table: Mapping[int, Any]) -> int:
        raw = request.match_info["id"]
        if raw.isascii() and raw.isdigit() and len(raw) < 12 and int(raw) in table:
            return int(raw)
        raise SandboxProblem(Problem.NOT_FOUND)

    def _page(self, request: web.Request, found: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int, int, bool]:
        q = request.query
        values = {}
        for name, default in (("page", 1), ("page_size", 20)):
            raw = q.get(name)
            if raw is not None and not (raw.isascii() and raw.isdigit() and len(raw) < 10 and int(raw) >= 1):
                raise Invalid(name, f"{name} must be a positive integer")
            values[name] = default if raw is None else int(raw)
        order = q.get("order_by", "asc")
        if order not in ("asc", "desc"):
            raise Invalid("order_by", "order_by must be asc or desc")
        for name in ("updated_after", "updated_before"):
            if q.get(name) is not None:
                try:
                    bound = datetime.fromisoformat(q[name].replace("Z", "+00:00"))
                    bound = bound if bound.tzinfo else bound.replace(tzinfo=UTC)
                except ValueError:
                    raise Invalid(name, f"{name} must be an ISO 8601 date-time") from None
                after = name == "updated_after"
                found = [v for v in found
                         if (datetime.fromisoformat(v["updatedAt"].replace("Z", "+00:00")) > bound) == after]
        page, size = values["page"], min(100, values["page_size"])
        found = sorted(found, key=lambda v: v["id"], reverse=order == "desc")
        start = (page - 1) * size
        return found[start:start + size], page, size, len(found) > start + size

    def _list(self, request: web.Request, found: list[dict[str, Any]]) -> web.Response:
        try:
            items, page, size, more = self._page(request, found)
        except Invalid as exc:
            return _json({"message": exc.message, "field": exc.field}, 400)
        return _json({"items": items, "page": page, "page_size": size, "has_more": more})

    # --- the daily quota, rate-limit headers and the exchange recorder ------------------------
    def quota_middleware(self) -> Middleware:
        token, readonly = self.config.token, self.config.readonly_token
        counters = self.counters

        @web.middleware
        async def quota(request: web.Request, handler: Handler) -> web.StreamResponse:
            if getattr(request.match_info.handler, "sandbox_control", False):
                return await handler(request)
            # Read the body before the framework's latency/slow delay: a create whose client gave
            # up during the delay must still commit afterwards, as a real server does.
            body = await request.read()
            key = self.credential(request)
            known = key is not None and (token is None or key in (token, readonly))
            if not known or self.quota is None or key is None:
                response = await handler(request)
            else:
                now = time.monotonic()
                used = self.usage.setdefault(key, deque())
                while used and used[0] <= now - self.quota_window:
                    used.popleft()
                if len(used) >= self.quota:
                    counters.total += 1
                    counters.by_status[429] = counters.by_status.get(429, 0) + 1
                    response = self.problem(Problem.THROTTLED, request)
                else:
                    used.append(now)
                    response = await handler(request)
                    if response.status == 429:  # the per-second limit: not counted
                        used.remove(now)
                response.headers["X-RateLimit-Limit"] = str(self.quota)
                response.headers["X-RateLimit-Remaining"] = str(max(0, self.quota - len(used)))
            if self.recording and len(self.exchanges) < _MAX_EXCHANGES:
                self._record(request, body, response)
            return response

        return quota

    def _record(self, request: web.Request, body: bytes, response: web.StreamResponse) -> None:
        transport = request.transport
        answered = transport is not None and not transport.is_closing()
        content = response.body if isinstance(response, web.Response) else None
        self.exchanges.append({
            "method": request.method, "path": request.path, "query": list(request.query.items()),
            "headers": {str(k): v for k, v in request.headers.items()},
            "body": body.decode("utf-8", "replace") if body else None,
            "status": response.status if answered else None,
            "response_headers": {str(k): v for k, v in response.headers.items()} if answered else {},
            "response_body": content.decode("utf-8", "replace") if answered and isinstance(content, bytes) else None,
        })
