"""The ledger API, simulated. Its whole wire contract:

``Authorization: Bearer <token>`` on every request (absent or wrong: 401).
``POST /v1/invoices`` with ``Idempotency-Key`` (optional) and a JSON body ``{"number": text
(1-100 characters, unique), "customer": text, "currency": 3 letters, "lines": [{"title": text,
"quantity": number > 0 and at most 1000, "unit_price": number, "tax_rate": number >= 0}] (at
least one)}`` -> 201 ``{"id": N, "number": ...}``. A body that breaks a rule -> 422
``{"message": ..., "field": ...}``. The same key again replays the first answer; with another
body -> 409; while the first is in flight -> 409.
State: ``{"invoices": [{id, number, customer, currency, lines}]}``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar

from aiohttp import web

from bulk.sandbox.config import SandboxConfig
from bulk.sandbox.core import Dialect, Problem


def create_app(config: SandboxConfig) -> web.Application:
    return LedgerSandbox(config).create_app()


class _Invalid(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class LedgerSandbox(Dialect):
    name = "ledger"
    durable_values = ("next_id",)
    problems: ClassVar[dict[Problem, tuple[int, Any]]] = {
        Problem.UNAUTHORIZED: (401, {"message": "Unauthenticated."}),
        Problem.FORBIDDEN: (403, {"message": "Forbidden."}),
        Problem.NOT_FOUND: (404, {"message": "Not found."}),
        Problem.METHOD_NOT_ALLOWED: (405, {"message": "Method not allowed."}),
        Problem.MALFORMED_JSON: (400, {"message": "Malformed JSON."}),
        Problem.THROTTLED: (429, {"message": "Too many requests."}),
        Problem.SERVER_ERROR: (500, {"message": "Server error."}),
        Problem.IDEMPOTENCY_MISMATCH: (409, {"message": "Idempotency key used with another request."}),
        Problem.IDEMPOTENCY_IN_FLIGHT: (409, {"message": "A request with this key is in progress."}),
        Problem.INVALID_IDEMPOTENCY_KEY: (400, {"message": "Invalid Idempotency-Key."}),
    }

    def __init__(self, config: SandboxConfig) -> None:
        super().__init__(config)
        self.clear()  # the framework restores durable_values over these when config.state has them

    def clear(self) -> None:
        self.invoices: dict[str, dict[str, Any]] = self.durable.table("invoices")
        self.next_id = 1

    def snapshot(self) -> dict[str, Any]:
        return {"invoices": list(self.invoices.values())}

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/invoices", self.create_invoice)

    async def create_invoice(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)

        def create() -> web.Response:
            try:
                invoice = self._validate(body)
            except _Invalid as exc:
                return self.respond({"message": str(exc), "field": exc.field}, 422)
            invoice["id"] = self.next_id
            self.next_id += 1
            self.invoices[str(invoice["id"])] = invoice
            return self.respond({"id": invoice["id"], "number": invoice["number"]}, 201)

        return await self.idempotent(request, "ledger", body, create)

    def _validate(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise _Invalid("", "The body must be an object.")
        number = body.get("number")
        if not isinstance(number, str) or not 0 < len(number) <= 100:
            raise _Invalid("number", "The number must be 1 to 100 characters.")
        if any(inv["number"] == number for inv in self.invoices.values()):
            raise _Invalid("number", "The number has already been taken.")
        lines = body.get("lines")
        if not isinstance(lines, list) or not lines:
            raise _Invalid("lines", "At least one line is required.")
        for i, line in enumerate(lines):
            qty = line.get("quantity") if isinstance(line, dict) else None
            if not isinstance(qty, int | Decimal) or not 0 < qty <= 1000:
                raise _Invalid(f"lines.{i}.quantity", "The quantity must be more than 0 and at most 1000.")
        return {"number": number, "customer": body.get("customer"), "currency": body.get("currency"),
                "lines": lines}
