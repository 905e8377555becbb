"""The money rule and currency facts (bulk.money): table-driven, hand-computed expectations."""

from __future__ import annotations

import random
from decimal import Decimal
from fractions import Fraction

import pytest

from bulk.money import CurrencyTotals, Totals, is_currency, line_totals, minor_units, quantize

D = Decimal


@pytest.mark.parametrize(
    ("code", "exponent"),
    [("EUR", 2), ("USD", 2), ("GBP", 2), ("CHF", 2), ("JPY", 0), ("KRW", 0), ("KWD", 3), ("BHD", 3),
     ("JOD", 3), ("OMR", 3), ("TND", 3), ("IQD", 3), ("LYD", 3), ("CLP", 0), ("ISK", 0), ("VND", 0),
     ("UGX", 0), ("XAF", 0), ("XOF", 0), ("PYG", 0), ("KMF", 0), ("GNF", 0), ("RWF", 0), ("VUV", 0),
     ("XPF", 0), ("DJF", 0), ("BIF", 0), ("UYI", 0), ("CLF", 4), ("UYW", 4), ("XCG", 2), ("ZWG", 2)],
)
def test_minor_units_follow_iso_4217(code: str, exponent: int) -> None:
    assert is_currency(code)
    assert minor_units(code) == exponent


@pytest.mark.parametrize("code", ["XYZ", "eur", "Eur", "", "EURO", "DEM1", "ZZZ", "XAU", "XXX", "XTS"])
def test_not_currencies(code: str) -> None:
    # Unknown, wrong case, malformed and codes without a minor unit (metals, test, none).
    assert not is_currency(code)
    with pytest.raises(KeyError):
        minor_units(code)


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        ("0.005", "EUR", "0.01"),  # half-up, not banker's rounding
        ("0.015", "EUR", "0.02"),
        ("0.025", "EUR", "0.03"),  # ROUND_HALF_EVEN would give 0.02
        ("2.675", "EUR", "2.68"),  # exact as Decimal; round(2.675, 2) on a float gives 2.67
        ("0.0049999", "EUR", "0.00"),
        ("-0.005", "EUR", "-0.01"),  # half away from zero
        ("-2.675", "EUR", "-2.68"),
        ("-0.004", "EUR", "0.00"),  # no negative zero
        ("2.5", "JPY", "3"),
        ("-2.5", "JPY", "-3"),
        ("1234.4999", "JPY", "1234"),
        ("1.0005", "KWD", "1.001"),
        ("1.00049", "KWD", "1.000"),
        ("12", "EUR", "12.00"),
        ("1E+3", "JPY", "1000"),
    ],
)
def test_quantize_half_up(amount: str, currency: str, expected: str) -> None:
    result = quantize(D(amount), currency)
    assert str(result) == expected


# (quantity, unit_price, tax_rate, prices, currency) -> (net, tax, gross), each computed by hand.
LINE_CASES = [
    ("10", "150.00", "19", "net", "EUR", "1500.00", "285.00", "1785.00"),
    ("3", "0.335", "19", "net", "EUR", "1.01", "0.19", "1.20"),  # 1.005 -> 1.01; 0.1919 -> 0.19
    ("1", "0.50", "1", "net", "EUR", "0.50", "0.01", "0.51"),  # tax 0.005 rounds up
    ("7", "0.145", "0", "net", "EUR", "1.02", "0.00", "1.02"),  # 1.015 -> 1.02
    ("1", "100", "7.7", "net", "CHF", "100.00", "7.70", "107.70"),
    ("1", "119.00", "19", "gross", "EUR", "100.00", "19.00", "119.00"),
    ("1", "10.00", "19", "gross", "EUR", "8.40", "1.60", "10.00"),  # 1000/119 = 8.4033...
    ("1", "10.00", "7", "gross", "EUR", "9.35", "0.65", "10.00"),  # 1000/107 = 9.3457...
    ("3", "1234.5", "10", "net", "JPY", "3704", "370", "4074"),  # 3703.5 -> 3704; 370.4 -> 370
    ("1", "1000", "10", "gross", "JPY", "909", "91", "1000"),  # 909.09 -> 909
    ("2", "10.0005", "7", "net", "KWD", "20.001", "1.400", "21.401"),  # tax 1.40007 -> 1.400
    ("2", "10.0005", "7", "gross", "KWD", "18.693", "1.308", "20.001"),  # 2000.1/107 = 18.69252...
    ("1", "-2.005", "19", "net", "EUR", "-2.01", "-0.38", "-2.39"),  # discount, half away from zero
    ("1", "-2.000", "7", "gross", "KWD", "-1.869", "-0.131", "-2.000"),  # -200/107 = -1.86915...
    ("1.5", "99", "0", "net", "CHF", "148.50", "0.00", "148.50"),
    ("0.1", "0.1", "19", "net", "EUR", "0.01", "0.00", "0.01"),  # 0.01 exactly, never 0.010000000000000002
]


@pytest.mark.parametrize(("qty", "price", "rate", "prices", "cur", "net", "tax", "gross"), LINE_CASES)
def test_line_totals_hand_computed(qty: str, price: str, rate: str, prices: str, cur: str,
                                   net: str, tax: str, gross: str) -> None:
    t = line_totals(D(qty), D(price), D(rate), prices, cur)
    assert (str(t.net), str(t.tax), str(t.gross)) == (net, tax, gross)


def _half_up(value: Fraction, places: int) -> Fraction:
    scaled = value * 10**places
    n = (abs(scaled.numerator) * 2 + scaled.denominator) // (2 * scaled.denominator)  # floor(|x| + 1/2)
    return Fraction(n if scaled >= 0 else -n, 10**places)


def test_line_totals_match_exact_rational_arithmetic() -> None:
    # Many digits on both sides (23 significant each): a float or a 28-digit context would round early.
    rng = random.Random(7)
    for _ in range(2000):
        qty = D(rng.randrange(1, 10**23)).scaleb(-12)
        price = D(rng.randrange(-10**23, 10**23)).scaleb(-12)
        rate = D(rng.randrange(0, 10**15)).scaleb(-12)
        cur = rng.choice(["EUR", "JPY", "KWD"])
        places = minor_units(cur)
        for prices in ("net", "gross"):
            t = line_totals(qty, price, rate, prices, cur)
            amount = _half_up(Fraction(qty) * Fraction(price), places)
            if prices == "net":
                net, tax = amount, _half_up(amount * Fraction(rate) / 100, places)
            else:
                net = _half_up(amount * 100 / (100 + Fraction(rate)), places)
                tax = amount - net
            assert (Fraction(t.net), Fraction(t.tax)) == (net, tax)
            assert t.gross == t.net + t.tax
            assert t.net.as_tuple().exponent == -places


def test_line_totals_rejects_unknown_price_mode() -> None:
    with pytest.raises(ValueError, match="net"):
        line_totals(D(1), D(1), D(0), "brutto", "EUR")


def test_totals_zero_and_add_keep_the_minor_unit() -> None:
    assert str(Totals.zero("EUR").gross) == "0.00"
    assert str(Totals.zero("JPY").net) == "0"
    assert str(Totals.zero("KWD").tax) == "0.000"
    total = Totals.zero("EUR") + Totals(D("1.10"), D("0.21"), D("1.31")) + Totals(D("-0.10"), D("-0.02"), D("-0.12"))
    assert total == Totals(D("1.00"), D("0.19"), D("1.19"))
    assert str(total.net) == "1.00"


def test_currency_totals_to_json_sorted_and_formatted() -> None:
    ct = CurrencyTotals()
    ct.add("USD", Totals(D("5.00"), D("0.35"), D("5.35")))
    ct.add("EUR", Totals(D("10.00"), D("1.90"), D("11.90")))
    ct.add("JPY", Totals(D("909"), D("91"), D("1000")))
    ct.add("EUR", Totals(D("0.00"), D("0.00"), D("0.00")))
    ct.add("KWD", Totals(D("18.693"), D("1.308"), D("20.001")))
    data = ct.to_json()
    assert list(data) == ["EUR", "JPY", "KWD", "USD"]
    assert data["EUR"] == {"invoices": 2, "net": "10.00", "tax": "1.90", "gross": "11.90"}
    assert data["JPY"] == {"invoices": 1, "net": "909", "tax": "91", "gross": "1000"}
    assert data["KWD"]["gross"] == "20.001"


def test_currency_totals_merge_and_round_trip() -> None:
    a, b = CurrencyTotals(), CurrencyTotals()
    a.add("EUR", Totals(D("1.00"), D("0.19"), D("1.19")))
    b.add("EUR", Totals(D("2.00"), D("0.38"), D("2.38")))
    b.add("GBP", Totals(D("3.00"), D("0.60"), D("3.60")))
    a.merge(b)
    assert a.to_json() == {"EUR": {"invoices": 2, "net": "3.00", "tax": "0.57", "gross": "3.57"},
                           "GBP": {"invoices": 1, "net": "3.00", "tax": "0.60", "gross": "3.60"}}
    assert b.to_json()["EUR"]["invoices"] == 1  # merge leaves its argument alone
    again = CurrencyTotals.from_json(a.to_json())
    assert again == a
    assert again.to_json() == a.to_json()
    assert CurrencyTotals.from_json({}) == CurrencyTotals()


@pytest.mark.parametrize(
    "data",
    [
        {"EUR": {"invoices": 1, "net": "1.00", "tax": "0.19"}},  # a key missing
        {"EUR": {"invoices": "1", "net": "1.00", "tax": "0.19", "gross": "1.19"}},  # count not an int
        {"EUR": {"invoices": 1, "net": 1.0, "tax": "0.19", "gross": "1.19"}},  # amount as float
        {"EUR": {"invoices": 1, "net": "NaN", "tax": "0.19", "gross": "1.19"}},
        {"EUR": {"invoices": 1, "net": "abc", "tax": "0.19", "gross": "1.19"}},
        {"XYZ": {"invoices": 1, "net": "1.00", "tax": "0.19", "gross": "1.19"}},
        {"EUR": []},
    ],
)
def test_currency_totals_from_json_rejects_malformed(data: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError):
        CurrencyTotals.from_json(data)


def test_recently_withdrawn_currencies_are_valid_history_for_backfills() -> None:
    from bulk.money import is_currency, minor_units

    for code in ("HRK", "BGN", "LTL", "ANG"):
        assert is_currency(code) and minor_units(code) == 2
    assert is_currency("BYR") and minor_units("BYR") == 0
    assert not is_currency("XAU") and not is_currency("XYZ")


def test_invoice_totals_memo_gives_the_computed_digits() -> None:
    """invoice_totals remembers each distinct line's rounded amounts; a line met again, or met
    in another spelling of the same values (1.0 and 1.00, -0 and 0), must give exactly the
    digits line_totals computes for it, in every currency exponent and both price modes."""
    from bulk.money import invoice_totals

    rng = random.Random(11)
    spellings = [["1", "1.0", "1.00"], ["0", "-0", "0.000"], ["19", "19.0"], ["7", "7.000"], ["2.5", "2.50"],
                 ["0.333", "0.3330"], ["-12.345", "-12.3450"], ["99.995", "99.9950"], ["1000", "1E+3"]]
    for _ in range(400):
        currency = rng.choice(["EUR", "JPY", "KWD", "CLF"])
        prices = rng.choice(["net", "gross"])
        lines = []
        for _ in range(rng.randint(1, 4)):
            qty, price, rate = (Decimal(rng.choice(rng.choice(spellings))) for _ in range(3))
            lines.append((abs(qty) or Decimal(1), price, abs(rate)))
        expected = Totals.zero(currency)
        for qty, price, rate in lines:
            expected = expected + line_totals(qty, price, rate, prices, currency)
        for _ in range(2):  # the second time every line comes from the memo
            got = invoice_totals(lines, prices, currency)
            assert (str(got.net), str(got.tax), str(got.gross)) == (str(expected.net), str(expected.tax),
                                                                     str(expected.gross)), (lines, prices, currency)


def test_record_totals_equal_the_sum_of_line_totals_over_generated_and_extreme_records() -> None:
    """Record.totals (lines_totals: memo, first line as the start, scaleb) against the plain rule:
    Totals.zero + line_totals per line, compared as strings (exponents too), over bulk.generate's
    output (every currency exponent it makes, net and gross, discounts) and hand-made extremes."""
    import orjson

    from bulk.generate import generate
    from bulk.records import parse_record

    raws = [raw.rstrip(b"\n") for seed in (0, 5) for raw in generate(1500, seed)]
    base = orjson.loads(raws[0])
    extremes = [("999999999999", "999999999999.999999999999", "1000"), ("0.000000000001", "0.000000000001", "0"),
                ("1", "-0.005", "19"), ("1", "0.005", "7"), ("3", "0.335", "0"), ("1", "-999999999999", "999.5"),
                ("7", "1E+3", "19.000"), ("1", "0", "0")]
    for currency in ("EUR", "JPY", "KWD", "CLF"):
        for prices in ("net", "gross"):
            lines = [{"title": "t", "quantity": q, "unit_price": p, "tax_rate": r} for q, p, r in extremes]
            for k in range(1, len(lines) + 1):
                raws.append(orjson.dumps({**base, "currency": currency, "prices": prices, "lines": lines[-k:]}))
    for no, raw in enumerate(raws, 1):
        rec = parse_record(raw, no)
        expected = Totals.zero(rec.currency)
        for t in rec.line_totals():
            expected = expected + t
        for _ in range(2):  # the second time every line comes from the memo
            got = rec.totals()
            assert (str(got.net), str(got.tax), str(got.gross)) == (str(expected.net), str(expected.tax),
                                                                     str(expected.gross)), raw


def test_totals_of_no_line_are_zero_and_a_bad_price_mode_is_refused() -> None:
    from bulk.money import invoice_totals

    assert str(invoice_totals([], "net", "KWD").gross) == "0.000"
    with pytest.raises(ValueError):
        invoice_totals([(Decimal(1), Decimal(1), Decimal(0))], "both", "EUR")
