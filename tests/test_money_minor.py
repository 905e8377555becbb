"""The worker's money path in minor units (bulk._money_minor, Tally.add_minor, Recorder.created)
against the Decimal one it replaced: the same digits, the same sums, the same ID map bytes.

The reference is what the recorder did before: ``lines_totals``' Decimals, their ``str()`` in
the row (through the csv path, :meth:`Outputs.created`), ``Tally.add_totals`` and a mismatch
compared and reported as Decimals.
"""

from __future__ import annotations

import contextlib
import random
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal
from pathlib import Path
from typing import NamedTuple

import pytest

from bulk._money_minor import lines_minor
from bulk._recorder import Recorder
from bulk.errors import InvalidRecord
from bulk.money import CurrencyTotals, Totals, lines_totals, minor_units
from bulk.outputs import Outputs
from bulk.records import Record, parse_record
from bulk.tally import Tally
from bulk.targets.base import Created

_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)  # the reference's text, never rounded
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


class L(NamedTuple):
    quantity: object
    unit_price: object
    tax_rate: object


def _outcome(lines: list[L], prices: str, currency: str) -> tuple[str, ...]:
    """(net, tax, gross) as text both ways, or the error both raise."""
    try:
        ref = lines_totals(lines, prices, currency)
    except Exception as exc:
        with pytest.raises(type(exc)):
            lines_minor(lines, prices, currency)
        return (type(exc).__name__,)
    e = minor_units(currency)
    got = tuple(str(Decimal(n).scaleb(-e, _EXACT)) for n in lines_minor(lines, prices, currency))
    assert got == (str(ref.net), str(ref.tax), str(ref.gross)), (lines, prices, currency)
    return got


@pytest.mark.parametrize("currency", ["JPY", "EUR", "KWD", "CLF"])
@pytest.mark.parametrize("prices", ["net", "gross"])
def test_random_lines_in_minor_units_are_lines_totals(currency: str, prices: str) -> None:
    rng = random.Random(f"minor-{currency}-{prices}")
    for _ in range(800):
        lines = []
        for _ in range(rng.choice((1, 2, 3, 7))):
            places = rng.choice((0, 2, 3, 6, 12))
            quantity = Decimal(rng.randint(1, 10**4)).scaleb(-rng.choice((0, 0, 3)))
            price = Decimal(rng.randint(-(10**9), 10**11)).scaleb(-places)
            rate = Decimal(rng.choice((0, 7, 19, 2050, 333333))).scaleb(-rng.choice((0, 2, 4)))
            lines.append(L(quantity, price, rate))
        _outcome(lines, prices, currency)


def test_what_the_integer_path_refuses_takes_the_decimal_path_or_its_error() -> None:
    d = Decimal
    # Outside the parser's limits (the Decimal reference computes them), not Decimals, bad input.
    assert _outcome([L(d(1), d("1E+13"), d(19))], "net", "EUR") == ("10000000000000.00", "1900000000000.00",
                                                                  "11900000000000.00")
    assert _outcome([L(d("0.0000000000001"), d(1), d(0))], "net", "EUR") == ("0.00", "0.00", "0.00")
    assert _outcome([L(d(2), d("1.005"), d(-5))], "gross", "KWD")[0] != "ValueError"
    _outcome([L(d(1), d("1E+60"), d(0))], "net", "EUR")  # an error in the reference: the same here
    _outcome([L(1.5, d(1), d(0))], "net", "EUR")
    _outcome([L(d(1), d(1), d(0))], "other", "EUR")
    _outcome([L(d(1), d(1), d(0))], "net", "XXX")


def _exact(totals: CurrencyTotals) -> dict[str, tuple[int, str, str, str]]:
    return {code: (n, str(t.net), str(t.tax), str(t.gross)) for code, (n, t) in totals._by_code.items()}


def _totals(net: int, tax: int, e: int) -> Totals:
    n, t = Decimal(net).scaleb(-e), Decimal(tax).scaleb(-e)
    return Totals(n, t, n + t)


def test_add_minor_is_add_totals_digit_for_digit_mixed_and_however_often_read() -> None:
    rng = random.Random("add-minor")
    tally, reference = Tally(), Tally()
    for i in range(4000):
        currency = rng.choice(("EUR", "EUR", "JPY", "KWD", "CLF"))
        e = minor_units(currency)
        net, tax = rng.randint(-(10**9), 10**14), rng.randint(-5, 10**12)
        if rng.random() < 0.3:  # a Decimal invoice among the integer ones (another caller of add_totals)
            tally.add_totals(currency, _totals(net, tax, e))
        else:
            tally.add_minor(currency, net, tax)
        reference.add_totals(currency, _totals(net, tax, e))
        if rng.random() < 0.003 or i == 3999:  # a checkpoint or a summary reads them
            assert _exact(tally.totals) == _exact(reference.totals)
            assert tally.to_json() == reference.to_json()
    assert Tally.from_json(tally.to_json()).to_json() == reference.to_json()
    merged = Tally()
    merged.add_minor("EUR", 5, 1)
    merged.merge(tally)
    reference.add_totals("EUR", _totals(5, 1, 2))
    assert _exact(merged.totals) == _exact(reference.totals)


def _fixture_records() -> list[Record]:
    records = []
    for name in ("invoices.ndjson", "hostile.ndjson"):
        for i, line in enumerate((FIXTURES / name).read_bytes().splitlines()):
            with contextlib.suppress(InvalidRecord):
                records.append(parse_record(line, i + 1))
    return records


def test_recorder_writes_the_rows_and_totals_the_decimal_path_wrote(tmp_path: Path) -> None:
    """Over the fixtures (every currency, both price modes, hostile text): ID map bytes, tally
    JSON and mismatches as the recorder made them from Decimals (lines_totals, csv path)."""
    records = _fixture_records()
    assert len(records) > 400
    rng = random.Random("recorder")
    (tmp_path / "new").mkdir()
    (tmp_path / "ref").mkdir()
    new_out, ref_out = Outputs(tmp_path / "new", None), Outputs(tmp_path / "ref", None)
    recorder = Recorder(new_out, Tally(), input_path="-", copyable=False)
    ref_tally = Tally()
    for i, record in enumerate(records):
        totals = record.totals()
        reported = rng.choice((None, totals.gross, totals.gross + Decimal("0.01"), Decimal(str(totals.gross)) * 1))
        action = rng.choice((None, None, "updated", "unchanged", "existing"))
        created = Created(invoice_id=f"{1000 + i}", customer_id=rng.choice(("7", None)),
                          status=rng.choice((None, "sent")), reported_gross=reported, existed=i % 5 == 0,
                          action=action)
        recorder.created(record, created)
        outcome = created.outcome
        ref_out.created([record.external_id, created.invoice_id, record.line_no, created.customer_id or "",
                         created.status or record.status, record.currency, totals.net, totals.tax, totals.gross,
                         outcome])
        ref_tally.read += 1
        if outcome == "updated":
            ref_tally.updated += 1
        elif outcome == "unchanged":
            ref_tally.unchanged += 1
        else:
            ref_tally.created += 1
            ref_tally.existing += outcome == "existing"
        ref_tally.add_totals(record.currency, totals)
        if reported is not None and reported != totals.gross:
            ref_tally.mismatch(record.external_id, record.currency, totals.gross, reported)
    for out in (new_out, ref_out):
        out.flush()
        out.close()
    assert (tmp_path / "new" / "id_map.csv").read_bytes() == (tmp_path / "ref" / "id_map.csv").read_bytes()
    assert recorder.tally.to_json() == ref_tally.to_json()
    assert _exact(recorder.tally.totals) == _exact(ref_tally.totals)
    assert recorder.tally.mismatch_count > 0


@pytest.mark.parametrize("prices", ["net", "gross"])
def test_the_parser_limits_never_leave_an_error_for_after_the_create(prices: str) -> None:
    """The recorder computes an invoice's minor units after its create: for every record the parser
    accepts (amounts below 10^12, at most 12 decimals, quantity > 0, tax rate 0..1000) they must
    come out, exactly as the Decimal reference (its quantize in 50 digits, and _whole's refusal of
    a fraction of a minor unit, cannot be reached from a valid record). The extremes, parsed, at
    every minor unit."""
    top, tiny = "999999999999.999999999999", "0.000000000001"
    for currency in ("JPY", "EUR", "KWD", "CLF"):
        for quantity in (top, tiny, "1"):
            for price in (top, "-" + top, tiny, "-" + tiny, "0"):
                for rate in ("1000", "999.999999999999", tiny, "0"):
                    item = (f'{{"title":"t","quantity":"{quantity}","unit_price":"{price}",'
                            f'"tax_rate":"{rate}"}}')
                    raw = (f'{{"external_id":"X","customer":{{"external_id":"C","email":"a@b.co"}},'
                           f'"currency":"{currency}","prices":"{prices}","lines":[{",".join([item] * 40)}]}}')
                    record = parse_record(raw.encode(), 1)
                    assert _outcome(list(record.lines), prices, currency)[0] not in ("ValueError", "InvalidOperation")
