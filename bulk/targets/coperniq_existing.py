"""Coperniq: an invoice of the record whose description starts with the external id
(``--on-existing``; Coperniq has no key, see ``bulk.targets.coperniq``).

Found by the listing of the record's invoices that every run takes once per project or account
before its first create (so an export re-run in a new run directory meets the invoices of the
earlier job instead of duplicating them; the cost is one listing per record per run, out of
the daily quota). Compared with the create body: description, status, due date (when the
record has one: ``dueDate`` cannot be cleared) and the line items as a multiset of catalog
item, quantity, unit price, unit cost and text. The update is ONE ``PATCH /invoices/{id}``
(OpenAPI ``update-invoice``, ``InvoiceUpdate``): ``lineItems`` (replacing them all),
``description``, ``dueDate``, and ``status`` when it differs; then the invoice is read
(``GET /invoices/{id}``) and compared again (its 200 answer would not show a killed run's
older PATCH landing after it). A repeated PATCH sets the same content, so a lost answer is simply sent again
and a killed run's resumed run finds the invoice equal or not yet updated. Where Coperniq
refuses (400, e.g. a paid invoice's lines), the record fails with its field and message.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..existing import settle
from ..transport import Reply, Request
from .base import Job

if TYPE_CHECKING:
    from .coperniq import CoperniqTarget

__all__ = ["line_items", "same_invoice", "settle_invoice", "update_body"]


def _number(value: Any) -> Decimal | None:
    """A JSON number as an exact Decimal (1.50 == 1.5), None when absent or not a number."""
    try:
        return None if value is None or isinstance(value, bool) else Decimal(str(value))
    except (ArithmeticError, ValueError):
        return None


def line_items(lines: Any) -> list[tuple[Any, ...]]:
    """An invoice's ``lineItems`` (or a body's) as a comparable multiset: (catalog item, quantity,
    unit price, unit cost, text) per line, amounts exact, in a fixed order. Two invoices hold
    the same lines exactly when these are equal (also the sweep's test for a copy)."""
    return sorted(((li.get("catalogItemId"), li.get("quantity"), _number(li.get("unitPrice")),
                    _number(li.get("unitCost")), li.get("description")) for li in lines or []), key=repr)


def same_invoice(invoice: Any, body: dict[str, Any]) -> bool:
    if not isinstance(invoice, dict):
        return False
    if invoice.get("description") != body.get("description") or invoice.get("status") != body.get("status"):
        return False
    if body.get("dueDate") is not None and not _same_time(invoice.get("dueDate"), body["dueDate"]):
        return False
    return line_items(invoice.get("lineItems")) == line_items(body["lineItems"])


def _same_time(have: Any, want: str) -> bool:
    return isinstance(have, str) and have.replace(".000Z", "Z") == want.replace(".000Z", "Z")


def update_body(invoice: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """The ``InvoiceUpdate`` that makes ``invoice`` hold ``body``'s content."""
    patch: dict[str, Any] = {"lineItems": body["lineItems"], "description": body.get("description")}
    if body.get("dueDate") is not None:
        patch["dueDate"] = body["dueDate"]
    if invoice.get("status") != body.get("status"):
        patch["status"] = body["status"]
    return patch


async def settle_invoice(target: CoperniqTarget, job: Job, invoice: dict[str, Any], body: dict[str, Any],
                         *, ours: bool, parse: Callable[[Reply], Any]) -> tuple[str, dict[str, Any]]:
    """The ID map action for the existing ``invoice``, and the invoice as it now is (``parse``
    reads an answer with exact numbers)."""
    now = invoice

    async def update() -> bool:
        nonlocal now
        uri = f"/invoices/{invoice['id']}"
        await target.send(job, Request("PATCH", uri, json=update_body(invoice, body)), stage="update")
        # Read back, not the PATCH's answer: a killed run's older PATCH may land after ours,
        # before our answer comes; the read then shows it and the record fails, to go again.
        now = parse(await target.send(job, Request("GET", uri, kind="read"), stage="update"))
        return same_invoice(now, body)

    action = await settle(job, target.on_existing, target="Coperniq", invoice_id=str(invoice["id"]),
                          how=f"description starting with {body['description'].split(chr(10), 1)[0]!r}",
                          same=same_invoice(invoice, body), ours=ours, update=update, field="description")
    return action, now
