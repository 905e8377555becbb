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
Money rule (anny documents none; the sandbox's own, see ``_anny_money.item_totals``): per item,
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

Code: this module holds the options, the framework hooks, the routes and the request wrapper
every API route goes through; the handlers are in ``_anny_customers`` and ``_anny_invoices``,
the JSON:API answers in ``_anny_resources``, the rules behind them in the modules that
``anny_rules`` names, the crash points in ``_anny_hold``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from aiohttp import web

from bulk.sandbox import _anny_customers, _anny_invoices
from bulk.sandbox._anny_guard import IdenticalGuard
from bulk.sandbox._anny_hold import HOLD_ME, CrashPoints, drop
from bulk.sandbox._anny_jsonapi import ApiError, error_body
from bulk.sandbox._anny_money import ROUNDINGS
from bulk.sandbox._anny_org import Handler, Org
from bulk.sandbox.config import SandboxConfig, SandboxConfigError
from bulk.sandbox.control import control_route
from bulk.sandbox.core import WRITE_METHODS, Dialect, Problem, SandboxProblem
from bulk.sandbox.idempotency import fingerprint
from bulk.sandbox.wire import MalformedJSON, json_response, loads_exact

__all__ = ["AnnySandbox", "create_app"]

API = "/api/v1"
_KIND_NO = {"invoices": 1, "items": 2, "addresses": 0xA, "customers": 0xC}
_INTERNAL = ("item_ids", "breakdown")  # invoice keys the state does not show


def create_app(config: SandboxConfig) -> web.Application:
    return AnnySandbox(config).create_app()


def _error(kind: str, status: int, detail: str) -> tuple[int, Any]:
    return status, {"errors": [{"status": str(status), "code": kind, "title": kind.replace("_", " ")
                                .capitalize(), "detail": detail}]}


class AnnySandbox(Dialect):
    """The anny dialect; handlers see it as an ``_anny_org.Api``."""

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
        self.last_id = 0  # of the ids new_id made
        self.crash = CrashPoints()  # see _anny_hold
        self.clear()
        self.crash.set(opts.get("hold") or {})

    # --- framework hooks ---------------------------------------------------------------

    durable_values = ("last_id",)

    def clear(self) -> None:
        self.known_orgs = self.durable.table("orgs")  # id -> True, in order of first request
        self.orgs: dict[str, Org] = {org_id: Org(self.durable, org_id) for org_id in self.known_orgs}
        self.guard.clear()
        self.crash.set(self.crash.rule)  # re-armed: the count starts again, waiting requests drop

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
                "hold": self.crash.state()}

    def add_routes(self, router: web.UrlDispatcher) -> None:
        api = self._api
        router.add_get(f"{API}/customers", api(_anny_customers.list_customers))
        router.add_post(f"{API}/customers", api(_anny_customers.create_customer))
        router.add_get(f"{API}/customers/{{id}}", api(_anny_customers.get_customer))
        router.add_post(f"{API}/addresses", api(_anny_customers.create_address))
        router.add_get(f"{API}/invoices", api(_anny_invoices.list_invoices))
        router.add_post(f"{API}/invoices", api(_anny_invoices.create_invoice))
        router.add_get(f"{API}/invoices/{{id}}", api(_anny_invoices.get_invoice))
        router.add_post(f"{API}/invoices/{{id}}/send", api(_anny_invoices.send))
        router.add_put(f"{API}/invoices/{{id}}/set-paid", api(_anny_invoices.set_paid))
        router.add_post(f"{API}/invoices/{{id}}/set-paid", api(_anny_invoices.set_paid))
        router.add_post(f"{API}/items", api(_anny_invoices.create_item))
        router.add_patch(f"{API}/invoices/{{id}}", api(_anny_invoices.update_invoice))
        router.add_delete(f"{API}/items/{{id}}", api(_anny_invoices.delete_item))

        @control_route
        async def hold(request: web.Request) -> web.StreamResponse:
            if request.method == "POST":
                try:
                    self.crash.set(await request.json())
                except (ValueError, SandboxConfigError) as exc:
                    return json_response({"error": str(exc)}, status=400)
            return json_response(self.crash.state())

        router.add_get("/_sandbox/hold", hold)
        router.add_post("/_sandbox/hold", hold)

    # --- the request wrapper: org, identical guard, media type, body, errors ----------

    def _api(self, handler: Handler) -> Callable[[web.Request], Any]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            if self.crash.stopped is not None:  # checked after the last await before the handler
                await self.crash.stopped.wait()
                return drop(request)
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
                response = handler(self, request, self._org(org_id), body)
            except ApiError as exc:
                return self.respond(error_body(exc.status, exc.errors), exc.status)
            if request.get(HOLD_ME) and self.crash.stopped is not None:
                await self.crash.stopped.wait()
                return drop(request)
            return response

        return wrapped

    def _org(self, org_id: str) -> Org:
        org = self.orgs.get(org_id)
        if org is None:
            org = self.orgs[org_id] = Org(self.durable, org_id)
            self.known_orgs[org_id] = True
        return org

    def new_id(self, kind: str) -> str:
        """A UUID-shaped id: the kind's number, then a counter kept with the tables."""
        self.last_id += 1
        return f"{_KIND_NO[kind]:08x}-0000-4000-8000-{self.last_id:012x}"
