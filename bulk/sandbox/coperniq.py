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

This module owns the dialect (hooks, routes, handlers); beside it: ``_coperniq_store`` (stored objects,
a mixin), ``_coperniq_wire`` (JSON answers, timestamps, ids, paging), ``_coperniq_quota`` (quota, headers,
recorder); request validation: ``coperniq_rules``, ``coperniq_refs`` first, then ``_coperniq_schema``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from bulk.sandbox._coperniq_quota import quota_middleware, quota_options
from bulk.sandbox._coperniq_schema import request_schemas
from bulk.sandbox._coperniq_store import CoperniqStore
from bulk.sandbox._coperniq_wire import json_response, paginate, path_id, utc_now
from bulk.sandbox.config import SandboxConfig
from bulk.sandbox.control import control_route
from bulk.sandbox.coperniq_refs import match_query, validate_account, validate_catalog_item
from bulk.sandbox.coperniq_rules import Invalid, parse_seed, validate_invoice, validate_update
from bulk.sandbox.core import Dialect, Problem
from bulk.sandbox.durable import Table

__all__ = ["CoperniqSandbox", "create_app"]


def create_app(config: SandboxConfig) -> web.Application:
    sandbox = CoperniqSandbox(config)
    app = sandbox.create_app()
    app.middlewares.insert(0, sandbox.quota_middleware())  # outermost: sees every API answer
    return app


class CoperniqSandbox(CoperniqStore, Dialect):
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
        self.quota, self.quota_window = quota_options(options)
        self.recording = str(options.get("record_exchanges", "")).lower() in ("1", "true", "yes")
        self.schemas = request_schemas()  # the document's request-body schemas: checked after the hand rules
        self.clear()

    # --- framework hooks ---------------------------------------------------------------
    durable_values = ("line_ids", "deleted")

    def credential(self, request: web.Request) -> str | None:
        return request.headers.get("x-api-key", "").strip() or None

    def clear(self) -> None:
        now = utc_now()
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
        return json_response([item for item in self.catalog.values() if not item["isArchived"]])

    async def list_accounts(self, request: web.Request) -> web.Response:
        found = list(self.accounts.values())
        for name in ("title", "q"):
            needle = request.query.get(name)
            if needle:
                found = [a for a in found if needle.lower() in a["title"].lower()]
        # 400 is not documented for this operation: bad paging values fall back to the defaults.
        try:
            return json_response(paginate(request, found)[0])
        except Invalid:
            return json_response(found[:20])

    async def account_invoices(self, request: web.Request) -> web.Response:
        account = path_id(request, self.accounts)
        return self._list(request, [v for v in self.invoices.values() if v["account"]["id"] == account])

    async def project_invoices(self, request: web.Request) -> web.Response:
        project = path_id(request, self.projects)
        return self._list(request, [v for v in self.invoices.values() if v["record"]["id"] == project])

    async def list_invoices(self, request: web.Request) -> web.Response:
        return self._list(request, list(self.invoices.values()))

    async def get_invoice(self, request: web.Request) -> web.Response:
        return json_response(self.invoices[path_id(request, self.invoices)])

    async def delete_invoice(self, request: web.Request) -> web.Response:
        invoice_id = path_id(request, self.invoices)
        del self.invoices[invoice_id]
        del self.issue_dates[invoice_id]
        self.deleted += 1
        return web.Response(status=200)  # the document's 200 has no content

    async def create_invoice(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)
        try:
            new = validate_invoice(body, lambda i: i in self.accounts or i in self.projects,
                                   lambda i: i in self.catalog and not self.catalog[i]["isArchived"])
            self.schemas.check("create-invoice", body)
        except Invalid as exc:
            return json_response({"message": exc.message, "field": exc.field}, 400)
        return json_response(self._commit(new), 201)

    async def update_invoice(self, request: web.Request) -> web.Response:
        """``PATCH /invoices/{id}`` (``update-invoice``): a partial update; ``lineItems`` /
        ``sections`` replace every line (the amount follows); 200 with the invoice."""
        invoice_id = path_id(request, self.invoices)
        body = await self.read_json(request)
        old = self.invoices[invoice_id]
        try:
            change = validate_update(body, old["status"],
                                     lambda i: i in self.catalog and not self.catalog[i]["isArchived"])
            self.schemas.check("update-invoice", body)
        except Invalid as exc:
            return json_response({"message": exc.message, "field": exc.field}, 400)
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
        invoice["updatedAt"] = utc_now()
        self.invoices[invoice_id] = invoice  # a new value: the durable table saves it
        return json_response(invoice)

    async def create_catalog_item(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)
        try:
            fields = validate_catalog_item(body)
            sku = fields["sku"]
            if sku is not None and any(i["sku"] == sku and not i["isArchived"] for i in self.catalog.values()):
                raise Invalid("sku", f"an active catalog item already has the SKU {sku!r}")
            self.schemas.check("create-catalog-item", body)
        except Invalid as exc:
            return json_response({"message": exc.message, "field": exc.field}, 400)
        return json_response(self._add_item(fields, utc_now()), 201)

    async def create_account(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)
        try:
            match_by, strategy = match_query(request.query)
            fields = validate_account(body)
            self.schemas.check("create-account", body)
        except Invalid as exc:
            return json_response({"message": exc.message, "field": exc.field}, 400)
        found = next((a for a in self.accounts.values() if fields[match_by] is not None
                      and a.get(match_by) == fields[match_by]), None)
        if found is None:
            return json_response(self._add_account(fields, utc_now()))
        if strategy != "skip":
            changes = {k: v for k, v in fields.items() if strategy == "replace" or found.get(k) in (None, "", [], {})}
            found = {**found, **changes, "updatedAt": utc_now()}
            self.accounts[found["id"]] = found
        return json_response(found)

    def _list(self, request: web.Request, found: list[dict[str, Any]]) -> web.Response:
        try:
            items, page, size, more = paginate(request, found)
        except Invalid as exc:
            return json_response({"message": exc.message, "field": exc.field}, 400)
        return json_response({"items": items, "page": page, "page_size": size, "has_more": more})

    def quota_middleware(self) -> Middleware:
        """The daily quota, rate-limit headers and exchange recorder (``_coperniq_quota``)."""
        return quota_middleware(self)
