"""The invoice record's types: frozen `Record`, `Customer`, `Address` and `Line`, and their fast constructors.

The parser (`bulk.records`) builds one of each per record (one `Line` per invoice line) with the
``_new_*`` constructors (`bulk._frozen.constructor`): the very objects ``Record(...)`` would make, without the
frozen ``__init__``'s per-field cost.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ._frozen import constructor
from .money import Totals
from .money import line_totals as _line_totals
from .money import lines_totals as _lines_totals

__all__ = ["Address", "Customer", "Line", "Record"]

@dataclass(frozen=True, slots=True)
class Address:
    line1: str | None
    line2: str | None
    city: str | None
    region: str | None
    postal_code: str | None
    country: str | None  # ISO 3166-1 alpha-2, upper case


@dataclass(frozen=True, slots=True)
class Customer:
    external_id: str
    email: str
    name: str | None
    company: str | None
    locale: str  # "en" when absent
    address: Address | None


@dataclass(frozen=True, slots=True)
class Line:
    """One invoice line. Amounts equal their source text; print them with ``format(x, "f")``."""

    title: str
    description: str | None
    quantity: Decimal  # > 0
    unit_price: Decimal  # negative for a discount; may carry more decimals than the currency
    tax_rate: Decimal  # percent, 0..1000
    item_ref: str | None


@dataclass(frozen=True, slots=True)
class Record:
    """A valid invoice. Optional strings that were empty in the input are None."""

    line_no: int
    external_id: str
    customer: Customer
    currency: str
    issue_date: datetime.date | None  # None only when status == "draft"
    due_date: datetime.date | None
    status: str  # draft | sent | paid
    prices: str  # net | gross: whether unit_price includes tax
    notes: str | None
    lines: tuple[Line, ...]
    extra: dict[str, Any]

    def line_totals(self) -> list[Totals]:
        """Each line's totals by the money rule (`bulk.money`)."""
        return [_line_totals(ln.quantity, ln.unit_price, ln.tax_rate, self.prices, self.currency) for ln in self.lines]

    def totals(self) -> Totals:
        """The invoice's totals: the sums of its lines' rounded totals."""
        return _lines_totals(self.lines, self.prices, self.currency)


# The parser builds these per record, without the frozen __init__'s per-field object.__setattr__.
_new_address = constructor(Address)
_new_customer = constructor(Customer)
_new_line = constructor(Line)
_new_record = constructor(Record)

# Plain classes of Line's and Record's very slots, for a caller that builds one in its own frame
# (bulk._record_fast: a `_new_line` call per invoice line saved) as `bulk._frozen.constructor`
# does, but with ``obj = _LineDraft()`` (cheaper than object.__new__), one attribute store a field, then
# ``obj.__class__ = Line`` (allowed between classes of one layout).
_LineDraft: type[Any] = type("_LineDraft", (), {"__slots__": Line.__slots__})
_RecordDraft: type[Any] = type("_RecordDraft", (), {"__slots__": Record.__slots__})
