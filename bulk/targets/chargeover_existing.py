"""ChargeOver: an invoice that already holds the record's external key (``--on-existing``).

Found by the create's 400 (the key is taken) and the look-up by key that follows it; see
``bulk.existing`` for the policy. Compared field by field with the create body: every field
the body sends (dates, memo, currency, address) and the line items in order (``item_id``,
``descrip``, ``line_rate``, ``line_quantity``, amounts as Decimals). An update is one
``PUT /api/v3/invoice/{id}`` carrying the whole body: ChargeOver answers 202, the fields sent
replace the stored ones and ``line_items`` replaces the invoice's lines (O-http). One request,
idempotent: a lost answer is simply sent again, and a killed run's resumed run finds the
invoice equal (or not yet) and reports it; the update is then re-read and compared. A closed
(paid or void) invoice is refused by ChargeOver: the record fails with its status and message.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from ..existing import settle
from .base import Job
from .chargeover_mapping import API

if TYPE_CHECKING:
    from .chargeover import ChargeOverTarget

__all__ = ["same_invoice", "settle_invoice"]

_NUMBERS = frozenset({"line_rate", "line_quantity"})


def _dec(value: Any) -> Decimal | None:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def _same(key: str, want: Any, have: Any) -> bool:
    if key in _NUMBERS:
        return _dec(want) is not None and _dec(want) == _dec(have)
    if isinstance(want, int) and not isinstance(want, bool):
        return str(want) == str(have)
    return bool(want == have)  # the values are JSON data: == answers a bool


def same_invoice(obj: Any, body: dict[str, Any]) -> bool:
    """Does the stored invoice ``obj`` already hold what ``body`` would send?"""
    if not isinstance(obj, dict):
        return False
    for key, want in body.items():
        if key == "customer_external_key":
            continue  # the customer is checked by id (it cannot be another one: the caller refuses that)
        if key == "line_items":
            have = obj.get("line_items")
            if not isinstance(have, list) or len(have) != len(want):
                return False
            for w, h in zip(want, have, strict=True):  # lengths compared above
                if not isinstance(h, dict) or not all(_same(k, v, h.get(k)) for k, v in w.items()):
                    return False
        elif not _same(key, want, obj.get(key)):
            return False
    return True


async def settle_invoice(target: ChargeOverTarget, job: Job, invoice_id: str, obj: Any, body: dict[str, Any],
                         *, ours: bool) -> str:
    """The ID map action for the existing invoice ``invoice_id`` (stored as ``obj``)."""

    async def update() -> bool:
        uri = f"{API}/invoice/{invoice_id}"
        sub = await target.calls.direct(job, "PUT", uri, body, None, stage="update")
        if not 200 <= sub.code < 300:
            raise target.calls.refused(sub, "update")
        return same_invoice(await target.calls.get(job, uri, stage="update"), body)

    return await settle(job, target.on_existing, target="ChargeOver", invoice_id=invoice_id,
                        how=f'external key "{body["external_key"]}"', same=same_invoice(obj, body), ours=ours,
                        update=update, field="external_key")

