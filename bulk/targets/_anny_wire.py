"""anny's JSON:API documents (seed 001, API-NOTES §2): what bulk sends and how it reads answers.

Sent: the resource documents of an invoice and of its items (``_resource`` wraps attributes
and relationships; the customer's and address's are in ``bulk.targets._anny_customer``).
Read: an invoice as anny answers it (:class:`Invoice`, amounts parsed as Decimals), its
items keyed by (title, subtitle, quantity, tax rate, unit amount), and the matching of items
to the record's lines with multiplicity (:func:`match_items`), on which every recovery of the
item steps rests.
"""

from __future__ import annotations

import json
from collections import defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as _field
from decimal import Decimal
from typing import Any

from ..records import Line, Record
from ..transport import Reply

__all__ = ["API", "JSONAPI", "Invoice", "ItemKey", "exact", "invoice_attributes", "item_attributes", "item_key",
           "line_key", "match_items", "resource"]

API = "/api/v1"
JSONAPI = "application/vnd.api+json"
ItemKey = tuple[str, str | None, int, Decimal, Decimal]


def line_key(line: Line) -> ItemKey:
    return (line.title, line.description, int(line.quantity), line.tax_rate, line.unit_price)


def item_key(attrs: Mapping[str, Any], from_net: bool) -> ItemKey:
    """The key of an item as anny answers it (amounts parsed exactly)."""
    amount = attrs.get("single_net_amount" if from_net else "single_gross_amount")
    return (attrs.get("title") or "", attrs.get("subtitle") or None, int(attrs.get("quantity") or 0),
            _decimal(attrs.get("tax_rate")), _decimal(amount))


def match_items(lines: list[ItemKey], items: list[tuple[str, ItemKey]]) -> tuple[dict[int, str], list[str]]:
    """Assign items to lines with multiplicity, in order: ``({line index: item id}, unmatched ids)``."""
    pool: dict[ItemKey, deque[str]] = defaultdict(deque)
    for item_id, key in items:
        pool[key].append(item_id)
    done = {i: pool[key].popleft() for i, key in enumerate(lines) if pool.get(key)}
    return done, [item_id for ids in pool.values() for item_id in ids]


def _decimal(value: Any) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value if value is not None else "NaN"))


def exact(reply: Reply) -> Any:
    """The answer with every fractional number as a Decimal (orjson would give floats)."""
    return json.loads(reply.content, parse_float=Decimal)


@dataclass(slots=True)
class Invoice:
    id: str
    number: str
    status: str
    currency: str
    from_net: bool
    customer_id: str | None
    total: Decimal | None
    items: list[tuple[str, ItemKey]]  # the items the answer included, with their keys
    item_ids: frozenset[str] | None  # every item the invoice has (its relationship); None: not said
    attributes: Mapping[str, Any] = _field(default_factory=dict)  # as answered (bulk.targets.anny_existing)

    def known_ids(self) -> frozenset[str]:
        """The invoice's item ids: its relationship, else the items the answer included."""
        return self.item_ids if self.item_ids is not None else frozenset(i for i, _ in self.items)

    @classmethod
    def parse(cls, data: Mapping[str, Any], included: list[Any] | None = None) -> Invoice:
        a, rels = data.get("attributes") or {}, data.get("relationships") or {}
        from_net = bool(a.get("calculate_from_net"))
        refs = (rels.get("items") or {}).get("data")
        ids = [ref.get("id") for ref in refs or []]
        by_id = {r.get("id"): r for r in included or [] if r.get("type") == "items"}
        customer = (rels.get("customer") or {}).get("data") or {}
        total = a.get("total")
        return cls(str(data["id"]), str(a.get("number")), str(a.get("status", "")).lower(),
                   str(a.get("currency")), from_net, customer.get("id"),
                   None if total is None else _decimal(total),
                   [(i, item_key(by_id[i].get("attributes") or {}, from_net)) for i in ids if i in by_id],
                   None if refs is None else frozenset(str(i) for i in ids), a)


def _recipient(record: Record) -> str | None:
    """The free-text address block anny prints (it fills a blank one from the customer on send)."""
    c, a = record.customer, record.customer.address
    parts = [c.company, c.name]
    if a is not None:
        city = " ".join(p for p in (a.postal_code, a.city) if p)
        parts += [a.line1, a.line2, city, a.region, a.country]
    return "\n".join(p for p in parts if p) or None


def invoice_attributes(record: Record) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "number": record.external_id, "currency": record.currency, "recipient": _recipient(record),
        "calculate_from_net": record.prices == "net", "notes": record.notes,
        "issued_at": record.issue_date.isoformat() if record.issue_date else None,
        "due_date": record.due_date.isoformat() if record.due_date else None,
    }
    for key in ("vat_number", "invoicing_party"):  # the extras anny has a field for
        if isinstance(record.extra.get(key), str):
            attrs[key] = record.extra[key]
    return attrs


def item_attributes(line: Line, from_net: bool) -> dict[str, Any]:
    attrs: dict[str, Any] = {"title": line.title, "quantity": int(line.quantity), "tax_rate": line.tax_rate,
                             "single_net_amount" if from_net else "single_gross_amount": line.unit_price}
    if line.description:
        attrs["subtitle"] = line.description
    return attrs


def resource(kind: str, attributes: dict[str, Any], **relations: tuple[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {"type": kind, "attributes": attributes}
    if relations:
        data["relationships"] = {name: {"data": {"type": t, "id": i}} for name, (t, i) in relations.items()}
    return {"data": data}
