"""The parser's fast path: nearly every line is a valid record of the common shape.

`bulk._record_schema` decodes and checks most of it in one msgspec pass (C), and `_fast_record`
does the few checks left, building the very `Record` the general path (`bulk._record_general`)
would. Whatever it is unsure of it leaves to the general path by returning None, so every error
and every unusual input takes exactly the path it always took (tests/test_records_fastpath.py).

Customers repeat from invoice to invoice (one customer, many invoices): a customer's checked,
built `Customer` (and its `Address`) is kept, keyed by the customer's JSON text as written, and
reused for the next invoice whose customer is written byte for byte the same: that invoice's
customer is neither decoded nor checked again (the same bytes always decode to the same
customer; one written otherwise is simply decoded and judged anew). Both are immutable, so
sharing one object between records is safe. Bounded: when full, the customer kept longest is
dropped (first in, first out), not every one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from decimal import Decimal
from typing import cast

import msgspec
import orjson

from . import _record_schema as _schema
from ._record_fields import (
    _AMOUNT_CACHE,
    _BAD_TEXT,
    _COUNTRIES,
    _LOCALE,
    _THOUSAND,
    _ZERO,
    _amount,
    _remember,
)
from ._record_types import Customer, Line, Record, _LineDraft, _new_address, _new_customer, _RecordDraft
from .errors import InvalidRecord


# The string rules of `_string` for values the schema let through (non-empty, within length): True
# only when `_string` would return the value unchanged. isprintable() is False for every control
# character and lone surrogate (and for a few characters `_string` allows, such as U+0085 or a
# no-break space: those take the general path).
def _fast_short(value: str | None) -> bool:
    return value is None or (value.isprintable() and not value.isspace())


def _fast_id(value: str | None) -> bool:
    return value is None or (value.isprintable() and value.strip() == value)


def _fast_text(value: str | None) -> bool:
    return value is None or (not value.isspace() and (value.isprintable() or not _BAD_TEXT.search(value)))


# a customer's JSON text -> the Customer the general path builds for it (only customers that passed)
_CUSTOMERS: OrderedDict[bytes, Customer] = OrderedDict()  # a hit is dict.get: no reordering
# ~1,160 bytes a customer (its JSON text and the checked objects; tracemalloc over generated
# customers, ~1,000 keyed by the decoded struct before): 1,024 of them ~1.2 MB of the 64 MB a
# 1,000,000-record run may use. An export's invoices of one customer tend to come
# together; a cache of every customer would grow with the input. First in, first out rather
# than emptied when full: with more customers than room (the 20,000-invoice benchmark input:
# 2,000 customers in random order), emptying kept ~512 on average and 72% of the invoices
# decoded their customer anew; dropping the oldest one keeps 1,024.
_CUSTOMERS_KEPT = 1024


# Language tags met that passed _LOCALE (the general path's pattern): a few tags ("en", "de-DE")
# serve every customer, so each is matched once, not by the schema at every customer (a pattern
# run from msgspec costs ~3,000 instructions). Bounded like the amount caches.
_LOCALES: set[str] = set()
_LOCALES_KEPT = 256


def _customer(text: bytes) -> Customer | None:
    """The `Customer` of a customer's JSON text not seen yet, or None when the general path must judge it
    (`msgspec.MsgspecError` when its schema refuses it)."""
    customer = _schema.decode_customer(text)
    where, address, locale, email = customer.address, None, customer.locale, customer.email
    if not _fast_id(customer.external_id):
        return None
    # The parser's _EMAIL without a regex (bulk._record_schema: run from msgspec it was about half
    # of the customer's decode): for a printable address without a space its classes are "not
    # @" and "not @ or .", so it says one @, 1 to 64 characters before it, and after it dot-
    # separated non-empty labels, at least two. Any other address is the general path's to judge.
    local, _, domain = email.partition("@")
    if not (0 < len(local) <= 64 and "." in domain and domain[0] != "." and domain[-1] != "."
            and ".." not in domain and "@" not in domain and " " not in email and email.isprintable()):
        return None
    # _fast_short of each short string, in this frame (eight calls a new customer saved)
    for value in ((customer.name, customer.company) if where is None else
                  (customer.name, customer.company, where.line1, where.line2, where.city, where.region,
                   where.postal_code)):
        if value is not None and (value.isspace() or not value.isprintable()):
            return None
    if locale is not None and locale not in _LOCALES:
        if not _LOCALE.fullmatch(locale):
            return None  # "" too: the general path makes it "en"
        if len(_LOCALES) >= _LOCALES_KEPT:
            _LOCALES.clear()
        _LOCALES.add(locale)
    if where is not None:
        if where.country is not None and where.country not in _COUNTRIES:
            return None
        address = _new_address(where.line1, where.line2, where.city, where.region, where.postal_code, where.country)
    if len(_CUSTOMERS) >= _CUSTOMERS_KEPT:
        _CUSTOMERS.popitem(last=False)
    built = _CUSTOMERS[text] = _new_customer(
        customer.external_id, customer.email, customer.name, customer.company, locale or "en", address)
    return built


# Strings met that passed their field's check, per rule (the schema has bounded their length
# for the field): titles (_fast_short), descriptions and notes (_fast_text, both Long), item refs
# (_fast_id). Titles and item refs repeat from line to line (a catalogue's), descriptions and
# notes too (boilerplate): one `in` a string, not two or three str method calls (the checks of
# the first meeting are the ones written out before; only passing strings are kept). None (an
# absent optional value) is always in the optional ones. Bounded: emptied when full (a hit
# costs nothing to keep order); a description or notes longer than _TEXT_KEPT_LEN is checked
# each time, so the three hold at most ~1,000 strings of <= 255 characters each.
_TITLES: set[str] = set()
_TEXTS: set[str | None] = {None}
_REFS: set[str | None] = {None}
_STRINGS_KEPT = 1024
_TEXT_KEPT_LEN = 255


def _new_title(value: str) -> bool:
    if not value.isprintable() or value.isspace():
        return False
    if len(_TITLES) >= _STRINGS_KEPT:
        _TITLES.clear()
    _TITLES.add(value)
    return True


def _new_text(value: str | None) -> bool:
    if value is None:
        return True
    if value.isspace() or not (value.isprintable() or not _BAD_TEXT.search(value)):
        return False
    if len(value) <= _TEXT_KEPT_LEN:
        if len(_TEXTS) >= _STRINGS_KEPT:
            _TEXTS.clear()
            _TEXTS.add(None)
        _TEXTS.add(value)
    return True


def _new_ref(value: str | None) -> bool:
    if value is None:
        return True
    if not value.isprintable() or value.strip() != value:
        return False
    if len(_REFS) >= _STRINGS_KEPT:
        _REFS.clear()
        _REFS.add(None)
    _REFS.add(value)
    return True


# Per amount field: the JSON int or string as written -> its Decimal (`_amount`), kept only once
# it passed that field's checks (quantity > 0, 0 <= tax rate <= 1000). Bounded like the others.
_QUANTITIES: dict[int | str, Decimal] = {}
_RATES: dict[int | str, Decimal] = {}
_POSITIVE = (False, None)  # (zero allowed, upper bound)
_RATE_RANGE = (True, _THOUSAND)


def _field_amount(cache: dict[int | str, Decimal], raw: int | str, rule: tuple[bool, Decimal | None]) -> Decimal | None:
    """The Decimal of an amount not in ``cache`` yet, kept there if within ``rule``; None when it is not
    (the general path reports it). `InvalidRecord` from `_amount` for an amount that is none."""
    amount = _amount(0, "", raw)
    zero_ok, high = rule
    if amount < _ZERO or (not zero_ok and amount == _ZERO) or (high is not None and amount > high):
        return None
    kept: Decimal = _remember(cache, raw, amount)
    return kept


# _amount's cache of amount strings (only ever emptied in place, never replaced): a JSON int
# unit price just misses it (an int never equals a str) and goes through _amount.
_PRICE_OF = cast("Callable[[int | str], Decimal | None]", _AMOUNT_CACHE.get)


def _fast_record(raw: bytes, ln: int) -> Record | None:
    try:
        inv = _schema.decode(raw)
        external_id, notes = inv.external_id, inv.notes
        texts = _TEXTS
        # _fast_id written out (a call a record saved); notes as a description (_TEXTS)
        if not (external_id.isprintable() and external_id.strip() == external_id
                and (notes in texts or _new_text(notes))):
            return None
        text = bytes(inv.customer)
        customer = _CUSTOMERS.get(text) or _customer(text)
        if customer is None:
            return None
        status = inv.status or "draft"
        if inv.issue_date is None and status != "draft":  # the schema checked the currency
            return None
        lines = []
        # Per invoice line, each string is one lookup of a value already checked for its field
        # (_TITLES, _TEXTS, _REFS; one not met yet is checked by _new_title/_new_text/_new_ref),
        # and each amount is one lookup of a value already checked for its field; one not met
        # yet goes through _amount and the field's range (_field_amount). A unit price met
        # before (as a string, the usual JSON) is one lookup in _amount's own cache, without
        # the call; anything else goes through _amount.
        quantities, rates, price_of = _QUANTITIES, _RATES, _PRICE_OF
        titles, refs = _TITLES, _REFS
        for item in inv.lines:
            title, description, item_ref = item.title, item.description, item.item_ref
            if not ((title in titles or _new_title(title))
                    and (description in texts or _new_text(description))
                    and (item_ref in refs or _new_ref(item_ref))):
                return None
            quantity = quantities.get(item.quantity)
            if quantity is None and (quantity := _field_amount(quantities, item.quantity, _POSITIVE)) is None:
                return None
            unit_price = price_of(item.unit_price)
            if unit_price is None:
                unit_price = _amount(ln, "", item.unit_price)
            tax_rate = rates.get(item.tax_rate)
            if tax_rate is None and (tax_rate := _field_amount(rates, item.tax_rate, _RATE_RANGE)) is None:
                return None
            # _new_line(...) written out (bulk._frozen.constructor's steps): a call a line saved
            line = _LineDraft()  # a call of the class: ~300 instructions less than object.__new__(cls)
            line.title, line.description, line.quantity = title, description, quantity
            line.unit_price, line.tax_rate, line.item_ref = unit_price, tax_rate, item_ref
            line.__class__ = Line
            lines.append(line)
        extra = inv.extra
        if extra:
            extra = {key: orjson.loads(memoryview(value)) for key, value in extra.items()}
        elif extra is None:
            extra = {}
        # else: the empty dict msgspec made for this line's "extra":{}, the record's own
    except (msgspec.MsgspecError, InvalidRecord, orjson.JSONDecodeError, RecursionError):
        return None
    # _new_record(...) written out, as the lines
    record = _RecordDraft()
    record.line_no, record.external_id, record.customer, record.currency = ln, external_id, customer, inv.currency
    record.issue_date, record.due_date, record.status = inv.issue_date, inv.due_date, status
    record.prices, record.notes, record.lines, record.extra = inv.prices or "net", notes, tuple(lines), extra
    record.__class__ = Record
    return record  # type: ignore[no-any-return]
