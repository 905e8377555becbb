"""The envelope every ChargeOver answer is wrapped in, and the validation of request bodies and
queries: the 400 answers of the contract in ``chargeover.py``.

ChargeOver answers one message per error (``{"code": 400, "status": "Error", "message": ...}``),
so these functions raise :class:`Invalid` for the FIRST problem found, in field order. The
wording is ours (ChargeOver's exact messages are not public); each message names the field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import date
from decimal import Decimal
from typing import Any

from bulk.sandbox.wire import parse_decimal

__all__ = ["CUSTOMER_KEYS", "FILTERS", "INVOICE_KEYS", "LINE_KEYS", "Answer", "Invalid", "envelope", "error",
           "matches", "parse_where", "validate_customer", "validate_invoice", "validate_item", "words"]

_ADDRESS = ("addr1", "addr2", "addr3", "city", "state", "postcode", "country")
_CUSTOM = tuple(f"custom_{n}" for n in range(1, 21))
CUSTOMER_STRINGS = frozenset({
    "external_key", "company", "campaign_details", "superuser_username", "superuser_email",
    "superuser_name", "superuser_first_name", "superuser_last_name", "superuser_phone",
    *(f"bill_{a}" for a in _ADDRESS), *(f"ship_{a}" for a in _ADDRESS), *_CUSTOM,
})
CUSTOMER_IDS = frozenset({"parent_customer_id", "language_id", "currency_id", "class_id",
                          "admin_id", "campaign_id"})
CUSTOMER_KEYS = CUSTOMER_STRINGS | CUSTOMER_IDS
INVOICE_STRINGS = frozenset({"refnumber", "external_key", "memo", *_CUSTOM,
                             *(f"bill_{a}" for a in _ADDRESS), *(f"ship_{a}" for a in _ADDRESS)})
INVOICE_IDS = frozenset({"class_id", "terms_id", "admin_id"})
# The seed lists dunning/late-fee/processing-fee exemption flags but not their names: not simulated.
INVOICE_KEYS = INVOICE_STRINGS | INVOICE_IDS | {
    "customer_id", "customer_token", "customer_external_key", "date", "currency_id", "paycycle",
    "line_items"}
LINE_KEYS = frozenset({"item_id", "paycycle", "descrip", "line_rate", "line_quantity", "tags",
                       *(f"custom_{n}" for n in range(1, 11))})
PAYCYCLES = frozenset({
    "evy", "dly", "1wk", "2wk", "116", "4wk", "8wk", "30d", "mon", "2mn", "12w",
    "fst", "lst", "qtr", "six", "yrl", "2yr", "3yr", "4yr", "5yr", "10y", "one",
})  # seed 002
MAX_STRING, MAX_TEXT = 255, 65_535  # ours: ChargeOver publishes no field lengths
MAX_INTEGER_DIGITS, MAX_FRACTION_DIGITS = 12, 10
OPERATORS = frozenset({"EQUALS", "NOTEQUALS", "CONTAINS"})

FILTERS = {
    "customer": frozenset({"customer_id", "external_key", "company", "superuser_email"}),
    "item": frozenset({"item_id", "external_key", "name"}),
    "currency": frozenset({"currency_id", "currency_iso4217"}),
    "invoice": frozenset({"invoice_id", "refnumber", "customer_id", "date"}),  # O-query
}
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_WHERE_SPLIT = re.compile(r"(?<!\\),")


Answer = tuple[int, dict[str, Any], str | None]  # status, envelope, Location path


def envelope(code: int, response: Any, message: str = "") -> dict[str, Any]:
    """``{code, status, message, details, response}`` (seed 002, O-http)."""
    return {"code": code, "status": "OK" if code < 400 else "Error", "message": message,
            "details": {}, "response": response}


def error(code: int, message: str) -> Answer:
    return code, envelope(code, False, message), None


def words(raw: Any, default: tuple[str, ...]) -> list[str]:
    """A list option given as a list or a comma-separated string."""
    if raw is None:
        return list(default)
    parts = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
    return [p.strip() for p in parts if p.strip()]


class Invalid(Exception):
    """A 400 answer: ``message`` names the field and what is wrong."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def parse_where(raw: str | None, fields: frozenset[str]) -> list[tuple[str, str, str]]:
    """``field:OP:value[,field:OP:value...]`` (a ``\\,`` is a literal comma) -> triples.

    O-rest documents more operators (GT, LT, IS:NULL...); the sandbox knows EQUALS, NOTEQUALS
    and CONTAINS, on the fields it lists per resource, and refuses the rest with a 400.
    """
    if not raw:
        return []
    out = []
    for part in _WHERE_SPLIT.split(raw):
        name, _, rest = part.partition(":")
        op, sep, value = rest.partition(":")
        if not sep:
            raise Invalid(f"where: {part!r} is not field:OPERATOR:value")
        if name not in fields:
            raise Invalid(f"where: cannot filter on {name!r} (known: {', '.join(sorted(fields))})")
        if op not in OPERATORS:
            raise Invalid(f"where: operator {op!r} is not supported (use EQUALS, NOTEQUALS or CONTAINS)")
        out.append((name, op, value.replace("\\,", ",")))
    return out


def matches(obj: Mapping[str, Any], where: list[tuple[str, str, str]]) -> bool:
    for name, op, value in where:
        have = obj.get(name)
        text = "" if have is None else str(have)
        if ((op == "EQUALS" and text != value) or (op == "NOTEQUALS" and text == value)
                or (op == "CONTAINS" and value.lower() not in text.lower())):
            return False
    return True


# --- fields ----------------------------------------------------------------------------


def _object(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Invalid(f"the {what} must be a JSON object")
    return body


def _unknown(body: Mapping[str, Any], known: frozenset[str], prefix: str = "") -> None:
    # Whether ChargeOver ignores or refuses unknown fields is not public: the sandbox refuses
    # them, so a misspelt field name in the client is caught instead of silently dropped.
    for key in body:
        if key not in known:
            raise Invalid(f"{prefix}{key}: unknown field")


def _string(body: Mapping[str, Any], key: str, prefix: str = "", *, max_len: int = MAX_STRING,
            required: bool = False) -> str | None:
    value = body.get(key)
    if value is None or (required and value == ""):
        if required:
            raise Invalid(f"{prefix}{key}: is required")
        return None
    if not isinstance(value, str):
        raise Invalid(f"{prefix}{key}: must be a string")
    if len(value) > max_len:
        raise Invalid(f"{prefix}{key}: longer than {max_len} characters")
    return value


def _id(body: Mapping[str, Any], key: str, prefix: str = "", *, required: bool = False) -> int | None:
    value = body.get(key)
    if value is None:
        if required:
            raise Invalid(f"{prefix}{key}: is required")
        return None
    if type(value) is not int or value < 1:
        raise Invalid(f"{prefix}{key}: must be a positive integer id")
    return value


def _decimal(body: Mapping[str, Any], key: str, prefix: str, *, required: bool) -> Decimal | None:
    value = body.get(key)
    if value is None:
        if required:
            raise Invalid(f"{prefix}{key}: is required")
        return None
    number = parse_decimal(value)
    if number is None:
        raise Invalid(f"{prefix}{key}: must be a number")
    exponent = number.as_tuple().exponent
    fraction = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    if number.adjusted() >= MAX_INTEGER_DIGITS or fraction > MAX_FRACTION_DIGITS:
        raise Invalid(f"{prefix}{key}: at most {MAX_INTEGER_DIGITS} digits before and "
                      f"{MAX_FRACTION_DIGITS} after the decimal point")
    return number


# --- bodies ----------------------------------------------------------------------------


def validate_customer(body: Any) -> dict[str, Any]:
    """The stored fields of a customer create (uniqueness of the external key is the caller's)."""
    body = _object(body, "customer")
    _unknown(body, CUSTOMER_KEYS)
    fields: dict[str, Any] = {"company": _string(body, "company", required=True)}
    for key in sorted(CUSTOMER_STRINGS - {"company"}):
        fields[key] = _string(body, key)
    for key in sorted(CUSTOMER_IDS):
        fields[key] = _id(body, key)
    email = fields["superuser_email"]
    if email is not None and not _EMAIL.fullmatch(email):
        raise Invalid("superuser_email: is not a valid e-mail address")
    return fields


#: ChargeOver item types (the item list's ``type`` values; assumed complete for a simulator)
ITEM_TYPES = ("service", "product")
ITEM_KEYS = frozenset({"name", "external_key", "type", "description", "accounting_sku", "units"})


def validate_item(body: Any) -> dict[str, Any]:
    """The stored fields of an item create (``POST /api/v3/item``): ``name`` required,
    ``external_key`` (unique: the caller's check), ``type`` service | product (default
    service), ``description``, ``accounting_sku``, ``units``; any other field is refused.
    ChargeOver's item pricing (``pricemodel``) is not modelled: an invoice line's
    ``line_rate`` always gives the price."""
    body = _object(body, "item")
    _unknown(body, ITEM_KEYS)
    fields: dict[str, Any] = {"name": _string(body, "name", required=True)}
    fields["external_key"] = _string(body, "external_key")
    kind = _string(body, "type") or "service"
    if kind not in ITEM_TYPES:
        raise Invalid(f"type: must be one of {', '.join(ITEM_TYPES)}")
    fields["type"] = kind
    for key in ("description", "accounting_sku", "units"):
        fields[key] = _string(body, key, max_len=MAX_TEXT if key == "description" else MAX_STRING)
    return fields


def validate_invoice(body: Any, *, customer: Callable[[str, Any], int | None],
                     currency_exists: Callable[[int], bool],
                     item: Callable[[int], Mapping[str, Any] | None]) -> dict[str, Any]:
    """The fields of an invoice create, line amounts as Decimals, the customer resolved to its
    id (``customer(field, value)`` -> id or None); uniqueness of the external key is the
    caller's check."""
    body = _object(body, "invoice")
    _unknown(body, INVOICE_KEYS)
    refs = [k for k in ("customer_id", "customer_token", "customer_external_key") if k in body]
    if len(refs) != 1:
        raise Invalid("customer: give exactly one of customer_id, customer_token, customer_external_key")
    customer_id = customer(refs[0], body[refs[0]])
    if customer_id is None:
        raise Invalid(f"{refs[0]}: no customer {body[refs[0]]!r} (the customer must exist)")
    fields: dict[str, Any] = {"customer_id": customer_id}
    for key in sorted(INVOICE_STRINGS):
        fields[key] = _string(body, key, max_len=MAX_TEXT if key == "memo" else MAX_STRING)
    for key in sorted(INVOICE_IDS):
        fields[key] = _id(body, key)
    raw_date = body.get("date")
    fields["date"] = None
    if raw_date is not None:
        try:
            if not (isinstance(raw_date, str) and _DATE.fullmatch(raw_date)):
                raise ValueError
            fields["date"] = date.fromisoformat(raw_date).isoformat()
        except ValueError:
            raise Invalid("date: must be a date YYYY-MM-DD") from None
    currency_id = _id(body, "currency_id")
    if currency_id is not None and not currency_exists(currency_id):
        raise Invalid(f"currency_id: no currency {currency_id} in this account")
    fields["currency_id"] = currency_id
    paycycle = body.get("paycycle")
    if paycycle is not None and paycycle not in PAYCYCLES:
        raise Invalid("paycycle: is not a valid payment cycle")
    fields["line_items"] = _lines(body.get("line_items"), item)
    return fields


def _lines(raw: Any, item: Callable[[int], Mapping[str, Any] | None]) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise Invalid("line_items: at least one line item is required")
    lines = []
    for n, line in enumerate(raw):
        prefix = f"line_items[{n}]."
        if not isinstance(line, dict):
            raise Invalid(f"line_items[{n}]: must be an object")
        _unknown(line, LINE_KEYS, prefix)
        item_id = _id(line, "item_id", prefix, required=True)
        assert item_id is not None
        found = item(item_id)
        if found is None:
            raise Invalid(f"{prefix}item_id: no item {item_id} (each line must refer to an existing item)")
        quantity = _decimal(line, "line_quantity", prefix, required=False)
        if quantity is None:
            quantity = Decimal(1)
        if quantity <= 0:
            raise Invalid(f"{prefix}line_quantity: must be greater than 0")
        rate = _decimal(line, "line_rate", prefix, required=True)
        descrip = _string(line, "descrip", prefix, max_len=MAX_TEXT)
        if line.get("paycycle") is not None and line["paycycle"] not in PAYCYCLES:
            raise Invalid(f"{prefix}paycycle: is not a valid payment cycle")
        tags = line.get("tags")
        if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
            raise Invalid(f"{prefix}tags: must be a list of strings")
        lines.append({"item_id": item_id, "item_name": found["name"],
                      "item_external_key": found["external_key"],
                      "descrip": found["name"] if descrip is None else descrip,
                      "line_rate": rate, "line_quantity": quantity, "tags": tags or [],
                      **{f"custom_{k}": _string(line, f"custom_{k}", prefix) for k in range(1, 11)}})
    return lines
