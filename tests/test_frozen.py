"""bulk._frozen: the parser's fast constructors build the very objects the dataclass would."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from bulk._frozen import constructor
from bulk.money import Totals
from bulk.records import Line, parse_record


def test_same_object_as_the_dataclass_and_still_frozen() -> None:
    make = constructor(Line)
    args = ("Title", None, Decimal("2"), Decimal("-1.50"), Decimal("19"), "SKU-1")
    fast, slow = make(*args), Line(*args)
    assert type(fast) is Line and fast == slow and repr(fast) == repr(slow)
    assert dataclasses.astuple(fast) == args
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.title = "x"  # type: ignore[misc]
    assert constructor(Totals)(Decimal(1), Decimal(0), Decimal(1)) == Totals(Decimal(1), Decimal(0), Decimal(1))


def test_parsed_records_are_ordinary_frozen_records() -> None:
    rec = parse_record(b'{"external_id":"A","customer":{"external_id":"C","email":"c@example.com"},'
                       b'"currency":"EUR","lines":[{"title":"t","quantity":1,"unit_price":"2","tax_rate":"0"}]}', 1)
    assert rec == dataclasses.replace(rec)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.currency = "USD"  # type: ignore[misc]


def test_refuses_classes_it_would_build_wrongly() -> None:
    @dataclasses.dataclass(slots=True)
    class Mutable:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            pass

    for cls in (Mutable, Checked):
        with pytest.raises(TypeError):
            constructor(cls)
