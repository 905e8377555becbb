"""Agiled: an invoice that already holds the record's invoice number (``--on-existing``).

How it is found. Under ``skip`` (the default) nothing changes from before: the create goes
out with its ``Idempotency-Key``; the same body replays the stored answer (Agiled cannot tell
a replay from a create, so an identical invoice of an earlier job is reported ``created``),
and another body is refused with 409, after which the invoice is looked up by
``GET /invoices?invoice_number=`` and reported ``existing``. Under ``fail`` and ``update`` the
invoice is looked up first (one read per record: reads have their own limit), so an identical
one is found too.

The update (our assumption, like the create body: Agiled documents invoice updates and an
``Idempotency-Key`` on create/update/delete, not their shape): ``PUT /invoices/{id}`` with the
create body, which replaces the invoice (its items too) and answers 200 ``{"data": invoice}``.
Its ``Idempotency-Key`` is derived from the external id AND the body, so a lost answer replays
while a later, different correction is a new request. It is then read back and compared. A
paid invoice is refused (422): the record fails with Agiled's field and message.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from ..existing import settle
from ..transport import Request
from .base import Job

__all__ = ["find_invoice", "same_invoice", "settle_invoice"]

_AMOUNTS = ("quantity", "unit_price", "tax_rate")
_FIELDS = ("invoice_number", "contact_id", "currency", "issue_date", "due_date", "status", "tax_inclusive",
           "notes")
_ITEM_FIELDS = ("name", "description", "sku")


def _dec(value: Any) -> Decimal | None:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def same_invoice(stored: Any, body: dict[str, Any]) -> bool:
    """Does the stored invoice already hold what ``body`` would send (mapped fields and items)?"""
    if not isinstance(stored, dict):
        return False
    if any(str(stored.get(k)) != str(body.get(k)) for k in _FIELDS):
        return False
    have, want = stored.get("items") or [], body["items"]
    if len(have) != len(want):
        return False
    for h, w in zip(have, want, strict=True):  # lengths compared above
        if any(h.get(k) != w.get(k) for k in _ITEM_FIELDS):
            return False
        if any(_dec(h.get(k)) is None or _dec(h.get(k)) != _dec(w.get(k)) for k in _AMOUNTS):
            return False
    return True


async def find_invoice(job: Job, number: str) -> dict[str, Any] | None:
    found = await job.send(Request("GET", "/public/v1/invoices", params={"invoice_number": number}, kind="read"),
                           stage="existing")
    rows = found.json().get("data") or []
    return rows[0] if rows else None


def _update_key(external_id: str, body: dict[str, Any]) -> str:
    digest = hashlib.sha256(external_id.encode() + b"\0" + orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
    return f"invoice-update-{digest.hexdigest()[:40]}"


async def settle_invoice(target: Any, job: Job, stored: dict[str, Any], body: dict[str, Any],
                         *, ours: bool) -> tuple[str, dict[str, Any]]:
    """The ID map action for the existing invoice ``stored``, and the invoice as it now is."""
    invoice_id = str(stored["id"])
    now = stored

    async def update() -> bool:
        nonlocal now
        uri = f"/public/v1/invoices/{invoice_id}"
        await job.send(Request("PUT", uri, json=body, headers={"Idempotency-Key": _update_key(
            body["invoice_number"], body)}), stage="update")
        now = (await job.send(Request("GET", uri, kind="read"), stage="update")).json()["data"]
        return same_invoice(now, body)

    action = await settle(job, target.on_existing, target="Agiled", invoice_id=invoice_id,
                          how=f'invoice number "{body["invoice_number"]}"', same=same_invoice(stored, body),
                          ours=ours, update=update, field="invoice_number")
    return action, now
