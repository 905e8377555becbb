"""The shape of a common, valid invoice line, for `bulk.records`' fast path: one msgspec pass in C.

Contract of `decode`: it returns an `Invoice` for a line whose every typed field already passes the
checks of `bulk.records.parse_record` that can be said as a type, a length, a literal or a regular
expression that is cheap in C, or raises a `msgspec.MsgspecError` (or `RecursionError`). The schema is deliberately
*narrower* than the parser: whatever it refuses (an unknown key, a float amount, a blank optional
string, a BOM, anything unusual) goes to the parser's general path, whose verdict and message
stand. So the one rule for this module: never accept a value the general path would refuse or
would turn into something else (lengths count code points in both).

What stays for `bulk.records` to check: the strings' characters, blankness and surrounding
whitespace, the locale's pattern, country codes against their table, the amounts (kept as the JSON int or
string they were: never a float), quantity > 0, the tax rate's range, issue_date when status is
not draft, and ``extra``'s values (kept raw for orjson).
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec

from .money import _MINOR_UNITS

__all__ = ["Customer", "Invoice", "decode", "decode_customer"]

# Regular expressions run from msgspec cost ~3,000 instructions a field (measured: patterns on
# every string doubled the decode's cost; the e-mail's alone was ~half of a customer's decode),
# so no field has one: bulk._record_fast checks the e-mail's shape (the parser's _EMAIL) with str
# methods, and matches a locale against the parser's _LOCALE once per distinct tag. The other
# strings' rules (no control character, not blank, no surrounding whitespace for identifiers)
# are checked by bulk.records with str methods.

# min_length=1: the parser turns empty optional strings into None; that case takes its path.
Short = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
Long = Annotated[str, msgspec.Meta(min_length=1, max_length=65_535)]
Ident = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
# The JSON int or string as written; bulk.records turns it into a Decimal exactly as its general
# path does. A JSON number with a fraction or an exponent (a float here) is refused: general path.
Amount = int | str
# A currency code of bulk.money's table: a Literal checks it in C and decodes it to the one str
# object of its code (no new str a record, its hash kept), so bulk._record_fast needs no lookup.
# Any other value (lower case, unknown) is refused here: the general path reports it.
if TYPE_CHECKING:
    Currency = str
else:
    Currency = Literal[tuple(_MINOR_UNITS)]


class Address(msgspec.Struct, forbid_unknown_fields=True, frozen=True, gc=False):
    line1: Short | None = None
    line2: Short | None = None
    city: Short | None = None
    region: Short | None = None
    postal_code: Short | None = None
    country: str | None = None  # bulk.records looks it up in its table


class Customer(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True, gc=False):
    external_id: Ident
    email: Annotated[str, msgspec.Meta(max_length=254)]  # its shape: bulk._record_fast._customer
    name: Short | None = None
    company: Short | None = None
    locale: Annotated[str, msgspec.Meta(max_length=35)] | None = None  # bulk._record_fast matches _LOCALE
    address: Address | None = None


class Line(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, gc=False):
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=185)]
    description: Long | None = None
    quantity: Amount
    unit_price: Amount
    tax_rate: Amount
    item_ref: Ident | None = None


class Invoice(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, gc=False):
    external_id: Ident
    # Kept as its JSON text: `bulk._record_fast` looks a customer met before up by it, and
    # decodes it (decode_customer) only when it is new.
    customer: msgspec.Raw
    currency: Currency
    issue_date: datetime.date | None = None  # msgspec takes exactly YYYY-MM-DD, a real date
    due_date: datetime.date | None = None
    status: Literal["draft", "sent", "paid"] | None = None
    prices: Literal["net", "gross"] | None = None
    notes: Long | None = None
    lines: Annotated[list[Line], msgspec.Meta(min_length=1)]
    # Raw values: orjson reads them as the general path's orjson.loads of the line would.
    extra: dict[str, msgspec.Raw] | None = None


decode = msgspec.json.Decoder(Invoice).decode
decode_customer = msgspec.json.Decoder(Customer).decode
