"""Coperniq's records, catalog and ``InvoiceCreate`` validation, for the sandbox in ``coperniq.py``.

Every rule cites the vendor's OpenAPI document (schemas ``InvoiceCreate``,
``InvoiceLineItemCreate``, ``InvoiceSection``) or the create-invoice page (seed 003). A 400
names one field, like Coperniq's ``{message, code, field}``; the first problem found wins. What
these rules let through is then checked against the document's own schema (``_coperniq_schema``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from bulk.sandbox.config import SandboxConfigError

__all__ = ["Invalid", "InvoiceChange", "NewInvoice", "Seed", "parse_seed", "validate_invoice", "validate_update"]

CREATE_STATUSES = frozenset({"DRAFT", "SENT", "PARTIALLY_PAID", "PAID"})
LIFECYCLE_STATUSES = frozenset({"DECLINED", "OVERDUE"})
INVOICE_KEYS = frozenset({"recordId", "calculationMethod", "lineItems", "sections", "percentage", "status",
                          "issueDate", "dueDate", "description"})
LINE_KEYS = frozenset({"id", "catalogItemId", "quantity", "unitCost", "unitPrice", "description"})
SECTION_KEYS = frozenset({"id", "name", "lineItems"})
_DATE_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?"
                        r"(Z|[+-][0-9]{2}:[0-9]{2})")
MAX_ID = 2**31 - 1


class Invalid(Exception):
    """A 400: ``field`` (a path such as ``lineItems[0].quantity``) and a message."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Seed:
    """What a fresh sandbox company holds (options ``accounts``, ``catalog_items``)."""

    accounts: int = 1000
    catalog_items: int = 50

    # Account k ("CUST-000123" for k=123) has id ACCOUNT_BASE + k and one project,
    # id PROJECT_BASE + k; catalog items SKU-001.. have ids CATALOG_BASE + 1.., DISCOUNT has CATALOG_BASE.
    ACCOUNT_BASE = 10_000
    PROJECT_BASE = 20_000
    CATALOG_BASE = 7_000

    def catalog(self, now: str) -> list[dict[str, Any]]:
        # ADJUSTMENT, not OTHER: OTHER is in both category enums, so the document's ``oneOf``
        # refuses it for every catalog item.
        items = [_catalog_item(self.CATALOG_BASE, "Discount", "DISCOUNT", "SERVICE", "ADJUSTMENT",
                               Decimal(0), Decimal(0), now)]
        for k in range(1, self.catalog_items + 1):
            service = k % 2 == 0
            items.append(_catalog_item(
                self.CATALOG_BASE + k, f"Catalog item {k:03d}", f"SKU-{k:03d}",
                "SERVICE" if service else "PRODUCT", "INSTALLATION" if service else "PV_MODULE",
                Decimal(k * 250).scaleb(-2), Decimal(k * 400).scaleb(-2), now))
        return items

    def records(self, now: str) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
        """(accounts, projects) by id, each as ``GET /accounts`` answers an account."""
        accounts, projects = {}, {}
        for k in range(self.accounts):
            title = f"CUST-{k:06d}"
            account_id, project_id = self.ACCOUNT_BASE + k, self.PROJECT_BASE + k
            accounts[account_id] = {
                "id": account_id, "createdAt": now, "updatedAt": now, "title": title, "description": None,
                "address": [], "isActive": True, "primaryEmail": None, "primaryPhone": None, "number": k + 1,
                "createdBy": None, "updatedBy": None, "custom": {}, "accountType": "COMMERCIAL",
            }
            projects[project_id] = {"id": project_id, "uid": k + 1, "title": f"{title} project",
                                    "accountId": account_id}
        return accounts, projects


def _catalog_item(item_id: int, name: str, sku: str, kind: str, category: str, cost: Decimal,
                  price: Decimal, now: str) -> dict[str, Any]:
    return {"id": item_id, "name": name, "catalog": "ENERGY", "type": kind, "category": category,
            "manufacturer": None, "sku": sku, "code": None, "cost": cost, "price": price,
            "description": None, "image": None, "isArchived": False, "createdById": 1,
            "createdAt": now, "updatedAt": now, "preferredVendorId": None}


def _count(options: Mapping[str, Any], name: str, default: int) -> int:
    raw = options.get(name, default)
    try:
        value = int(str(raw))
    except ValueError:
        raise SandboxConfigError(f"coperniq sandbox option {name} must be a whole number, got {raw!r}") from None
    if not 0 <= value <= 100_000:
        raise SandboxConfigError(f"coperniq sandbox option {name} must be between 0 and 100000, got {value}")
    return value


def parse_seed(options: Mapping[str, Any]) -> Seed:
    return Seed(accounts=_count(options, "accounts", 1000), catalog_items=_count(options, "catalog_items", 50))


@dataclass(frozen=True, slots=True)
class NewInvoice:
    """A valid ``InvoiceCreate``; lines (sections flattened) as (catalogItemId, quantity,
    unitCost, unitPrice, description). ``issue_date`` is None for a draft (Coperniq ignores it)."""

    record_id: int
    status: str
    issue_date: str | None
    due_date: str | None
    description: str | None
    lines: list[tuple[int, int, Decimal, Decimal, str | None]]


def _is_int(value: Any) -> bool:
    return type(value) is int


def _number(value: Any, field: str) -> Decimal:
    # ``type: number`` (double): a JSON number, never a string or a boolean.
    if type(value) is int:
        return Decimal(value)
    if type(value) is Decimal and value.is_finite():
        return value
    raise Invalid(field, f"{field} must be a number")


def _date_time(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, str) and _DATE_TIME.fullmatch(value):
        try:
            datetime.fromisoformat(value)
            return value
        except ValueError:
            pass
    raise Invalid(key, f"{key} must be an ISO 8601 date-time such as 2026-03-31T00:00:00Z")


def _line(raw: Any, path: str, catalog_exists: Callable[[int], bool]) -> tuple[int, int, Decimal, Decimal, str | None]:
    if not isinstance(raw, dict):
        raise Invalid(path, f"{path} must be an object")
    for key in sorted(raw.keys() - LINE_KEYS):
        raise Invalid(f"{path}.{key}", f"{path}.{key} is not a line item field")
    if "id" in raw and not (_is_int(raw["id"]) and raw["id"] == 0):
        raise Invalid(f"{path}.id", f"{path}.id must be 0 for a new line item")
    for key in ("catalogItemId", "quantity", "unitCost", "unitPrice"):
        if raw.get(key) is None:
            raise Invalid(f"{path}.{key}", f"{path}.{key} is required")
    item = raw["catalogItemId"]
    if not _is_int(item) or not 1 <= item <= MAX_ID:
        raise Invalid(f"{path}.catalogItemId", f"{path}.catalogItemId must be a positive integer")
    if not catalog_exists(item):
        raise Invalid(f"{path}.catalogItemId", f"Catalog item {item} not found")
    quantity = raw["quantity"]
    if not _is_int(quantity):
        raise Invalid(f"{path}.quantity", f"{path}.quantity must be an integer")
    if not 1 <= quantity <= MAX_ID:
        raise Invalid(f"{path}.quantity", f"{path}.quantity must be at least 1")
    cost = _number(raw["unitCost"], f"{path}.unitCost")
    price = _number(raw["unitPrice"], f"{path}.unitPrice")  # may be negative (discounts)
    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        raise Invalid(f"{path}.description", f"{path}.description must be a string or null")
    return item, quantity, cost, price, description


def validate_invoice(body: Any, record_exists: Callable[[int], bool],
                     catalog_exists: Callable[[int], bool]) -> NewInvoice:
    """The invoice a ``POST /invoices`` body asks for; raises :class:`Invalid`."""
    if not isinstance(body, dict):
        raise Invalid("body", "The request body must be a JSON object")
    for key in sorted(body.keys() - INVOICE_KEYS):
        raise Invalid(key, f"{key} is not an invoice field")
    record_id = body.get("recordId")
    if record_id is None:
        raise Invalid("recordId", "recordId is required")
    if not _is_int(record_id) or not 1 <= record_id <= MAX_ID:
        raise Invalid("recordId", "recordId must be an integer >= 1")
    if not record_exists(record_id):
        raise Invalid("recordId", f"Record {record_id} not found (create the project or account first)")
    method = body.get("calculationMethod")
    if method is None:
        raise Invalid("calculationMethod", "calculationMethod is required")
    if method not in ("LINE_ITEMS", "PERCENTAGE"):
        raise Invalid("calculationMethod", "calculationMethod must be LINE_ITEMS or PERCENTAGE")
    if method == "PERCENTAGE":
        # Coperniq does not document what a PERCENTAGE invoice's base is (API-NOTES §4).
        raise Invalid("calculationMethod", "PERCENTAGE invoices are not simulated by this sandbox")
    status = body.get("status", "DRAFT")
    if status in LIFECYCLE_STATUSES:
        raise Invalid("status", f"status {status} cannot be set at creation")
    if status not in CREATE_STATUSES:
        raise Invalid("status", "status must be DRAFT, SENT, PARTIALLY_PAID or PAID")
    issue, due = _date_time(body, "issueDate"), _date_time(body, "dueDate")
    if status != "DRAFT" and issue is None:
        raise Invalid("issueDate", f"issueDate is required when status is {status}")
    description = body.get("description")
    if description is not None and not isinstance(description, str):
        raise Invalid("description", "description must be a string or null")
    lines = _all_lines(body, catalog_exists)
    return NewInvoice(record_id, status, issue if status != "DRAFT" else None, due, description, lines)


UPDATE_KEYS = frozenset({"status", "lineItems", "sections", "dueDate", "description"})
UPDATE_STATUSES = CREATE_STATUSES | LIFECYCLE_STATUSES
#: statuses after which an invoice's lines are money owed or received: not changed (our
#: assumption; the document does not say which changes Coperniq refuses)
SETTLED_STATUSES = frozenset({"PAID", "PARTIALLY_PAID"})


@dataclass(frozen=True, slots=True)
class InvoiceChange:
    """A valid ``InvoiceUpdate``: only the fields given (``lines`` None: not given)."""

    status: str | None
    due_date: str | None
    description: str | None
    has_description: bool
    lines: list[tuple[int, int, Decimal, Decimal, str | None]] | None


def validate_update(body: Any, current_status: str, catalog_exists: Callable[[int], bool]) -> InvoiceChange:
    """The change a ``PATCH /invoices/{id}`` body asks for (OpenAPI ``InvoiceUpdate``); raises :class:`Invalid`."""
    if not isinstance(body, dict):
        raise Invalid("body", "The request body must be a JSON object")
    if "calculationMethod" in body:
        raise Invalid("calculationMethod", "calculationMethod cannot be changed after creation")
    for key in sorted(body.keys() - UPDATE_KEYS):
        raise Invalid(key, f"{key} is not an invoice update field")
    status = body.get("status")
    if status is not None and status not in UPDATE_STATUSES:
        raise Invalid("status", "status must be one of " + ", ".join(sorted(UPDATE_STATUSES)))
    due = _date_time(body, "dueDate")
    description = body.get("description")
    if description is not None and not isinstance(description, str):
        raise Invalid("description", "description must be a string or null")
    lines = None
    if body.get("lineItems") is not None or body.get("sections") is not None:
        if current_status in SETTLED_STATUSES:
            raise Invalid("lineItems", f"the line items of a {current_status} invoice cannot be changed")
        lines = _all_lines(body, catalog_exists)
    return InvoiceChange(status, due, description, "description" in body, lines)


def _all_lines(body: Mapping[str, Any], catalog_exists: Callable[[int], bool]
               ) -> list[tuple[int, int, Decimal, Decimal, str | None]]:
    raw_items, raw_sections = body.get("lineItems"), body.get("sections")
    if raw_items is None and raw_sections is None:
        raise Invalid("lineItems", "lineItems or sections is required when calculationMethod is LINE_ITEMS")
    paths: list[tuple[str, Any]] = []
    if raw_items is not None:
        if not isinstance(raw_items, list):
            raise Invalid("lineItems", "lineItems must be an array")
        paths += [(f"lineItems[{i}]", item) for i, item in enumerate(raw_items)]
    if raw_sections is not None:
        if not isinstance(raw_sections, list):
            raise Invalid("sections", "sections must be an array")
        for s, section in enumerate(raw_sections):
            where = f"sections[{s}]"
            if not isinstance(section, dict):
                raise Invalid(where, f"{where} must be an object")
            for key in sorted(section.keys() - SECTION_KEYS):
                raise Invalid(f"{where}.{key}", f"{where}.{key} is not a section field")
            name = section.get("name")
            if name is not None and not (isinstance(name, str) and 1 <= len(name) <= 500):
                raise Invalid(f"{where}.name", f"{where}.name must be 1-500 characters or null")
            items = section.get("lineItems")
            if not isinstance(items, list) or not items:
                raise Invalid(f"{where}.lineItems", f"{where}.lineItems must have at least one line item")
            paths += [(f"{where}.lineItems[{i}]", item) for i, item in enumerate(items)]
    if not paths:
        raise Invalid("lineItems", "lineItems must have at least one line item")
    lines, seen = [], set()
    for path, raw in paths:
        line = _line(raw, path, catalog_exists)
        if line[0] in seen:  # InvoiceCreate: "A catalogItemId may appear at most once across the flattened set."
            raise Invalid(f"{path}.catalogItemId", f"Catalog item {line[0]} appears more than once in the invoice")
        seen.add(line[0])
        lines.append(line)
    return lines
