"""The shape of a common, valid invoice line, for `bulk.records`' fast path: one msgspec pass in C.

Contract of `decode`: it returns an `Invoice` for a line whose every typed field already passes the
checks of `bulk.records.parse_record` that can be said as a type, a length, a literal or a regular
expression, or raises a `msgspec.MsgspecError` (or `RecursionError`). The schema is deliberately
*narrower* than the parser: whatever it refuses (an unknown key, a float amount, a blank optional
string, a BOM, anything unusual) goes to the parser's general path, whose verdict and message
stand. So the one rule for this module: never accept a value the general path would refuse or
would turn into something else (lengths count code points in both).

What stays for `bulk.records` to check: currency and country codes against their tables, the
amounts (kept as the JSON int or string they were: never a float), quantity > 0, the tax rate's
range, issue_date when status is not draft, and ``extra``'s values (kept raw for orjson).
"""

from __future__ import annotations

import datetime
from typing import Annotated, Literal

import msgspec

__all__ = ["Invoice", "decode"]

# Characters the parser refuses in one-line strings (control characters, lone surrogates) and in
# free text (which may keep tab, newline and carriage return): its _BAD_ONELINE / _BAD_TEXT.
_BAD_ONELINE = r"\x00-\x1f\x7f\ud800-\udfff"
_BAD_TEXT = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff"
# Not blank (the parser turns blank optional strings into None: that case takes its path) and no
# refused character. Python's \s is str.strip()'s whitespace (both Py_UNICODE_ISSPACE).
_ONELINE = rf"\A(?!\s*\Z)[^{_BAD_ONELINE}]*\Z"
_TEXT = rf"\A(?!\s*\Z)[^{_BAD_TEXT}]*\Z"
# Identifiers: also no leading or trailing whitespace.
_EXACT = rf"\A[^\s{_BAD_ONELINE}](?:[^{_BAD_ONELINE}]*[^\s{_BAD_ONELINE}])?\Z"
# The parser's _EMAIL, its classes also refusing surrogates (which it refuses before matching).
_E = rf"[^@\s{_BAD_ONELINE}"
_EMAIL = rf"\A{_E}]{{1,64}}@{_E}.]+(?:\.{_E}.]+)+\Z"
_LOCALE = r"\A[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*\Z"

Short = Annotated[str, msgspec.Meta(max_length=255, pattern=_ONELINE)]
Long = Annotated[str, msgspec.Meta(max_length=65_535, pattern=_TEXT)]
Ident = Annotated[str, msgspec.Meta(max_length=100, pattern=_EXACT)]
# The JSON int or string as written; bulk.records turns it into a Decimal exactly as its general
# path does. A JSON number with a fraction or an exponent (a float here) is refused: general path.
Amount = int | str


class Address(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    line1: Short | None = None
    line2: Short | None = None
    city: Short | None = None
    region: Short | None = None
    postal_code: Short | None = None
    country: Annotated[str, msgspec.Meta(pattern=r"\A[A-Z]{2}\Z")] | None = None


class Customer(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, gc=False):
    external_id: Ident
    email: Annotated[str, msgspec.Meta(max_length=254, pattern=_EMAIL)]
    name: Short | None = None
    company: Short | None = None
    locale: Annotated[str, msgspec.Meta(max_length=35, pattern=_LOCALE)] | None = None
    address: Address | None = None


class Line(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, gc=False):
    title: Annotated[str, msgspec.Meta(max_length=185, pattern=_ONELINE)]
    description: Long | None = None
    quantity: Amount
    unit_price: Amount
    tax_rate: Amount
    item_ref: Ident | None = None


class Invoice(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, gc=False):
    external_id: Ident
    customer: Customer
    currency: str
    issue_date: datetime.date | None = None  # msgspec takes exactly YYYY-MM-DD, a real date
    due_date: datetime.date | None = None
    status: Literal["draft", "sent", "paid"] | None = None
    prices: Literal["net", "gross"] | None = None
    notes: Long | None = None
    lines: Annotated[list[Line], msgspec.Meta(min_length=1)]
    # Raw values: orjson reads them as the general path's orjson.loads of the line would.
    extra: dict[str, msgspec.Raw] | None = None


decode = msgspec.json.Decoder(Invoice).decode
