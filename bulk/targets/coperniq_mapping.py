"""How one record becomes Coperniq's ``InvoiceCreate`` (pure functions; the client is
``bulk.targets.coperniq``). Rules come from the vendor's OpenAPI document
(``fixtures/coperniq/coperniq-openapi.yml``: ``InvoiceCreate``, ``InvoiceLineItemCreate``).

Mapping (one ``POST /invoices`` per record, ``calculationMethod`` ``LINE_ITEMS``)
    recordId: ``extra.recordId`` (a positive integer), else the row of ``--option
    record_map=FILE.csv`` (header ``customer_external_id,record_id[,record_type]``, type
    ``project`` | ``account``), else -- only when no map is given, or with ``--option
    record_lookup=title`` -- the account whose title equals the customer's external id
    (``GET /accounts?title=``, exact match, one request per customer, cached in the resume file).
    ``record_lookup=off`` turns that off: a record with no recordId is then rejected offline.
    lineItems: ``catalogItemId`` is the catalog item whose ``sku`` equals ``item_ref``
    (``GET /catalog-items`` once per run, each SKU cached in the resume file); a line without
    ``item_ref`` (a discount) uses ``--option default_catalog_item=SKU`` (default ``DISCOUNT``).
    ``quantity`` must be whole (Coperniq's is an integer): fractions are rejected offline.
    ``unitPrice`` is the record's unit price as given; ``unitCost`` is the catalog item's cost
    (0 when it has none). ``description`` is the line title, then its description on the next line.
    One catalog item per invoice: Coperniq allows a ``catalogItemId`` at most once across
    ``lineItems`` and ``sections`` (sections do not help), so lines sharing one are MERGED into
    one line with the summed quantity when their unit prices agree (the cost is the item's, so
    it agrees too; the total is unchanged, exactly), and the record is rejected, naming both
    lines, when they do not.
    status: draft/sent/paid -> ``DRAFT``/``SENT``/``PAID``; ``issueDate`` (midnight UTC) is sent
    for SENT and PAID, where Coperniq requires it (it ignores it for drafts); ``dueDate`` (also
    midnight UTC) whenever the record has one.
    description: the external id on the first line (how a lost invoice is found again), then
    a blank line and the notes. Other ``extra`` keys are not sent (Coperniq has no custom fields
    on invoices). Coperniq invoices carry no currency: amounts go as they are.
Tax and totals
    Coperniq has no tax fields and its ``amount`` is sum(unitPrice x quantity), unrounded. We do
    not fold tax into prices (that would need per-unit rounding the money rule does not do), so
    a net-price record is uploaded at net and a gross-price one at gross. ``reported_gross`` is
    the API's ``amount`` only where it is comparable with the money rule's gross: every line's
    quantity x price is exact at the currency's minor unit (so no rounding differs) and the
    prices are gross or every tax rate is 0; otherwise None.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from decimal import Context, Decimal
from typing import Any

from ..errors import ConfigError, InvalidRecord
from ..money import minor_units
from ..records import Record
from ..transport import Reply

__all__ = [
    "MAX_QUANTITY", "comparable", "exact", "external_id_of", "invoice_body", "load_record_map", "merge_lines",
]

STATUS = {"draft": "DRAFT", "sent": "SENT", "paid": "PAID"}
MAX_QUANTITY = 2**31 - 1
_EXACT = Context(prec=60)  # |quantity| < 2^31 times a validated price: exact


def exact(reply: Reply) -> Any:
    """The body with every JSON number that has a fraction as a Decimal (money stays exact)."""
    return json.loads(reply.content, parse_float=Decimal)


def external_id_of(description: Any) -> str | None:
    """The external id a description made by :func:`invoice_body` starts with."""
    return description.split("\n", 1)[0] if isinstance(description, str) and description else None


def _timestamp(day: dt.date | None) -> str | None:
    return None if day is None else f"{day.isoformat()}T00:00:00Z"


def merge_lines(record: Record, keys: list[Any], names: list[str]) -> list[list[int]]:
    """Group line indexes by ``keys[i]`` (a SKU or catalog id; ``names[i]`` says it to a human),
    keeping the source order. InvalidRecord when two lines share a key but not the unit price.
    """
    groups: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        group = groups.setdefault(key, [])
        if group and record.lines[group[0]].unit_price != record.lines[i].unit_price:
            first = group[0]
            raise InvalidRecord(
                record.line_no, f"lines[{i}].item_ref",
                f"Coperniq takes each catalog item once per invoice; lines[{first}] and lines[{i}] "
                f"both use {names[i]} at different unit "
                f"prices ({record.lines[first].unit_price} and {record.lines[i].unit_price})",
                "give one of them another item_ref, or merge them into one line yourself")
        group.append(i)
    return list(groups.values())


def invoice_body(record: Record, record_id: int, items: list[tuple[int, Decimal, list[int]]]) -> dict[str, Any]:
    """The ``InvoiceCreate`` body; ``items`` are (catalogItemId, unitCost, line indexes) per merged line."""
    line_items = []
    for catalog_id, cost, group in items:
        lines = [record.lines[i] for i in group]
        text = "\n".join(ln.title if ln.description is None else f"{ln.title}\n{ln.description}" for ln in lines)
        line_items.append({
            "catalogItemId": catalog_id, "quantity": sum(int(ln.quantity) for ln in lines),
            "unitCost": cost, "unitPrice": lines[0].unit_price, "description": text,
        })
    body: dict[str, Any] = {
        "recordId": record_id, "calculationMethod": "LINE_ITEMS", "lineItems": line_items,
        "status": STATUS[record.status],
        "description": record.external_id + (f"\n\n{record.notes}" if record.notes else ""),
    }
    if record.status != "draft":
        body["issueDate"] = _timestamp(record.issue_date)
    if record.due_date is not None:
        body["dueDate"] = _timestamp(record.due_date)
    return body


def comparable(record: Record) -> bool:
    """Is Coperniq's amount (sum of price x quantity, no tax) the money rule's gross for this record?"""
    if record.prices == "net" and any(ln.tax_rate for ln in record.lines):
        return False
    quantum = Decimal(1).scaleb(-minor_units(record.currency))
    for ln in record.lines:
        product = _EXACT.multiply(ln.quantity, ln.unit_price)
        if product != product.quantize(quantum):
            return False
    return True


def load_record_map(path: str) -> dict[str, tuple[int, str | None]]:
    """``customer_external_id -> (record_id, "projects" | "accounts" | None)`` from a CSV file."""
    out: dict[str, tuple[int, str | None]] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = csv.DictReader(f)
            if not rows.fieldnames or not {"customer_external_id", "record_id"} <= set(rows.fieldnames):
                raise ConfigError(f"record_map {path}: the header must be customer_external_id,record_id"
                                  "[,record_type]")
            for n, row in enumerate(rows, 2):
                customer, raw_id = (row["customer_external_id"] or "").strip(), (row["record_id"] or "").strip()
                kind = (row.get("record_type") or "").strip().lower()
                if not customer or not raw_id.isdigit() or int(raw_id) < 1 or kind not in ("", "project", "account"):
                    raise ConfigError(f"record_map {path} line {n}: want a customer id, a positive integer "
                                      "record_id and a record_type of project, account or empty")
                if customer in out:
                    raise ConfigError(f"record_map {path} line {n}: customer {customer!r} is mapped twice")
                out[customer] = (int(raw_id), f"{kind}s" if kind else None)
    except OSError as exc:
        raise ConfigError(f"record_map {path}: {exc.strerror or exc}") from None
    return out
