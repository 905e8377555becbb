"""Validation of Agiled request bodies: the 422 answers of the contract in ``agiled.py``.

Messages follow Laravel's wording (Agiled is a Laravel application): top-level fields are
named with spaces (``The invoice number field is required.``), nested ones by path
(``The items.0.quantity must be greater than 0.``). Every problem is reported, not the first.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any

from bulk.sandbox.wire import parse_decimal

__all__ = ["Errors", "validate_contact", "validate_invoice"]

CONTACT_STRINGS = ("first_name", "last_name", "company", "locale", "external_id")
ADDRESS_KEYS = ("line1", "line2", "city", "state", "postal_code", "country")
INVOICE_KEYS = frozenset({"invoice_number", "contact_id", "currency", "status", "issue_date",
                          "due_date", "tax_inclusive", "notes", "items"})
ITEM_KEYS = frozenset({"name", "description", "quantity", "unit_price", "tax_rate", "sku"})
STATUSES = frozenset({"draft", "sent", "paid"})
MAX_INTEGER_DIGITS, MAX_FRACTION_DIGITS = 12, 10

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_CURRENCY = re.compile(r"[A-Z]{3}")


class Errors:
    """The ``errors`` object of a 422: field path -> messages."""

    __slots__ = ("fields",)

    def __init__(self) -> None:
        self.fields: dict[str, list[str]] = {}

    def add(self, path: str, message: str) -> None:
        self.fields.setdefault(path, []).append(message)

    def __bool__(self) -> bool:
        return bool(self.fields)


def _label(path: str) -> str:
    return path if "." in path else path.replace("_", " ")


def _string(obj: dict[str, Any], key: str, errors: Errors, prefix: str = "", *,
            required: bool = False, max_len: int = 255) -> str | None:
    path = prefix + key
    value = obj.get(key)
    if value is None or (required and value == ""):
        if required:
            errors.add(path, f"The {_label(path)} field is required.")
        return None
    if not isinstance(value, str):
        errors.add(path, f"The {_label(path)} must be a string.")
        return None
    if len(value) > max_len:
        errors.add(path, f"The {_label(path)} must not be greater than {max_len} characters.")
    return value


def _date(obj: dict[str, Any], key: str, errors: Errors, *, required: str = "") -> str | None:
    """A ``YYYY-MM-DD`` date; ``required`` is the reason it is required ('' = optional)."""
    value = obj.get(key)
    if value is None:
        if required:
            errors.add(key, f"The {_label(key)} field is required{required}.")
        return None
    try:
        if isinstance(value, str) and _DATE.fullmatch(value):
            return date.fromisoformat(value).isoformat()
    except ValueError:
        pass
    errors.add(key, f"The {_label(key)} must be a valid date in the format YYYY-MM-DD.")
    return None


def _decimal(obj: dict[str, Any], key: str, errors: Errors, prefix: str, *,
             positive: bool = False, non_negative: bool = False) -> Decimal | None:
    path = prefix + key
    value = obj.get(key)
    if value is None:
        errors.add(path, f"The {path} field is required.")
        return None
    number = parse_decimal(value)
    if number is None:
        errors.add(path, f"The {path} must be a decimal number (a string such as \"12.50\").")
        return None
    if isinstance(value, str):  # as text: cheaper than Decimal.as_tuple() on the hot path
        point = value.find(".")
        fraction_digits = 0 if point < 0 else len(value) - point - 1
    else:
        exponent = number.as_tuple().exponent
        fraction_digits = -exponent if isinstance(exponent, int) else 0
    if number.adjusted() >= MAX_INTEGER_DIGITS or fraction_digits > MAX_FRACTION_DIGITS:
        errors.add(path, f"The {path} must have at most {MAX_INTEGER_DIGITS} digits before "
                         f"and {MAX_FRACTION_DIGITS} after the decimal point.")
        return None
    if positive and number <= 0:
        errors.add(path, f"The {path} must be greater than 0.")
    elif non_negative and number < 0:
        errors.add(path, f"The {path} must be at least 0.")
    return number


def _not_object(errors: Errors) -> tuple[dict[str, Any], dict[str, Any]]:
    errors.add("body", "The request body must be a JSON object.")
    return {}, {}


def validate_contact(body: Any, errors: Errors) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(contact fields, extra keys)`` of a contact create; problems go to ``errors``."""
    if not isinstance(body, dict):
        return _not_object(errors)
    email = _string(body, "email", errors, required=True)
    if email is not None and not _EMAIL.fullmatch(email):
        errors.add("email", "The email must be a valid email address.")
    fields: dict[str, Any] = {"email": email}
    for key in CONTACT_STRINGS:
        fields[key] = _string(body, key, errors)
    fields["address"] = address = body.get("address")
    if address is not None:
        if not isinstance(address, dict):
            errors.add("address", "The address must be an object or null.")
        else:
            for key in sorted(address.keys() - set(ADDRESS_KEYS)):
                errors.add(f"address.{key}", f"The address.{key} field is not supported.")
            fields["address"] = {k: _string(address, k, errors, "address.") for k in ADDRESS_KEYS}
    known = {"email", "address", *CONTACT_STRINGS}
    return fields, {k: v for k, v in body.items() if k not in known}


def validate_invoice(body: Any, errors: Errors, contact_exists: Callable[[int], bool]
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(invoice fields with items, extra keys)`` of an invoice create (uniqueness of the
    number is the caller's check); amounts come back as Decimals."""
    if not isinstance(body, dict):
        return _not_object(errors)
    fields: dict[str, Any] = {
        "invoice_number": _string(body, "invoice_number", errors, required=True, max_len=100)
    }
    contact_id = body.get("contact_id")
    if contact_id is None:
        errors.add("contact_id", "The contact id field is required.")
    elif type(contact_id) is not int:
        errors.add("contact_id", "The contact id must be an integer.")
    elif not contact_exists(contact_id):
        errors.add("contact_id", "The selected contact id is invalid.")
    fields["contact_id"] = contact_id
    currency = body.get("currency")
    if currency is None:
        errors.add("currency", "The currency field is required.")
    elif not (isinstance(currency, str) and _CURRENCY.fullmatch(currency)):
        errors.add("currency", "The currency must be a 3-letter upper-case ISO 4217 code.")
    fields["currency"] = currency
    status = body.get("status")
    if status is None:
        status = "draft"
    elif status not in STATUSES:
        errors.add("status", "The selected status is invalid (draft, sent or paid).")
    fields["status"] = status
    issue = _date(body, "issue_date", errors,
                  required="" if status == "draft" else " unless status is draft")
    due = _date(body, "due_date", errors)
    if issue and due and due < issue:
        errors.add("due_date", "The due date must be a date after or equal to issue date.")
    fields["issue_date"], fields["due_date"] = issue, due
    inclusive = body.get("tax_inclusive", False)
    if not isinstance(inclusive, bool):
        errors.add("tax_inclusive", "The tax inclusive field must be true or false.")
    fields["tax_inclusive"] = inclusive
    fields["notes"] = _string(body, "notes", errors, max_len=65_535)
    fields["items"] = _items(body.get("items"), errors)
    return fields, {k: v for k, v in body.items() if k not in INVOICE_KEYS}


def _items(raw: Any, errors: Errors) -> list[dict[str, Any]]:
    if raw is None:
        errors.add("items", "The items field is required.")
        return []
    if not isinstance(raw, list):
        errors.add("items", "The items must be an array.")
        return []
    if not raw:
        errors.add("items", "The items must have at least 1 items.")
    items = []
    for n, item in enumerate(raw):
        prefix = f"items.{n}."
        if not isinstance(item, dict):
            errors.add(f"items.{n}", f"The items.{n} must be an object.")
            continue
        for key in sorted(item.keys() - ITEM_KEYS):
            errors.add(prefix + key, f"The {prefix}{key} field is not supported.")
        items.append({
            "name": _string(item, "name", errors, prefix, required=True, max_len=185),
            "description": _string(item, "description", errors, prefix, max_len=65_535),
            "quantity": _decimal(item, "quantity", errors, prefix, positive=True),
            "unit_price": _decimal(item, "unit_price", errors, prefix),
            "tax_rate": _decimal(item, "tax_rate", errors, prefix, non_negative=True),
            "sku": _string(item, "sku", errors, prefix),
        })
    return items
