"""Synthetic valid invoices for ``bulk generate N --seed S``: demo data and benchmark input.

Contract of `generate`: ``n`` NDJSON lines, each ending in ``b"\\n"``, byte-identical for the same ``(n, seed)``
on every machine and Python version (only ``Random.random()`` and integer arithmetic are used), and every one
accepted by `bulk.records.parse_record`. What they exercise:

* external ids ``INV-{seed}-{i:07d}`` (i from 1), unique for a seed;
* about n/10 customers ``CUST-{k:06d}`` (at least one), each with the same e-mail, name and address on all of
  its invoices (derived from ``(seed, k)`` alone, so nothing is cached);
* currencies mostly EUR / USD / GBP, some CHF, JPY (0 decimals) and KWD (3 decimals); net and gross prices;
* 1-5 lines with integer quantities 1-20, tax rates 0 / 7 / 19 / 20, item refs from the catalogue SKU-001 ..
  SKU-050 never repeated within an invoice, unit prices as decimal strings (some with 3-4 decimals);
* sometimes a negative discount line of 5-20 % of the first line, at that line's tax rate, so every invoice
  total (net, tax and gross) stays positive;
* mostly drafts, some sent / paid (those always have an issue date); unicode titles, names and cities.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import ROUND_DOWN, Decimal

import orjson

from .money import minor_units

__all__ = ["generate"]

# (code, weight in %, price multiplier from EUR, tax rates in use)
_CURRENCY_SPEC = (
    ("EUR", 40, "1", ("19", "19", "7", "0")),
    ("USD", 22, "1.08", ("0", "7")),
    ("GBP", 15, "0.86", ("20", "20", "0")),
    ("CHF", 9, "0.95", ("7", "20", "0")),
    ("JPY", 7, "160", ("0", "7")),
    ("KWD", 7, "0.33", ("0",)),
)
_CURRENCY_TABLE = [spec for spec in _CURRENCY_SPEC for _ in range(spec[1])]  # 100 slots: index by int(r*100)
_SERVICES = ("Consulting", "Beratung", "Übersetzung", "Design 🎨", "Wartung", "Support", "Café crème ☕",
             "Workshop Köln", "Hosting 東京", "Licence")
_TIERS = ("Basic", "Standard", "Premium — 24/7", "Entreprise", "Pro ✨")
_CATALOGUE = [(f"SKU-{k + 1:03d}", f"{_SERVICES[k % 10]} · {_TIERS[k // 10]}") for k in range(50)]
_DESCRIPTIONS = (None, None, None, "Stunden laut Zeiterfassung", "Per agreement of 2026-01-15",
                 "Inkl. Anfahrt nach München", "Zeitraum: März 2026")
_NOTES = (None, None, None, "Thank you", "Vielen Dank für Ihren Auftrag!", "ありがとうございます",
          "Payable within 30 days.\nBank: IBAN DE00 0000 0000 0000")
_FIRST = (("Jane", "jane"), ("Jörg", "joerg"), ("Zoë", "zoe"), ("José", "jose"), ("Søren", "soeren"),
          ("Ólafur", "olafur"), ("Amélie", "amelie"), ("太郎", "taro"), ("Li", "li"), ("Ayşe", "ayse"),
          ("Øystein", "oystein"), ("Émile", "emile"), ("Priya", "priya"), ("Noah", "noah"))
_LAST = (("Doe", "doe"), ("Müller", "mueller"), ("Ångström", "angstrom"), ("Núñez", "nunez"),
         ("山田", "yamada"), ("Kowalska", "kowalska"), ("Østergaard", "ostergaard"), ("Smith", "smith"),
         ("Al-Sabah", "alsabah"), ("Dubois", "dubois"), ("Schäfer", "schaefer"))
_COMPANIES = (None, None, "Acme Inc", "Müller & Söhne GmbH", "Blümchen Floristik 🌸", "株式会社サンプル",
              "Société Générale de Test", "Fjord Ventures AS", "Kuwait Trading Co.")
# (city, country, locale, postal code, region, street)
_PLACES = (
    ("Köln", "DE", "de", "50667", None, "Hauptstraße 42"),
    ("München", "DE", "de", "80331", "Bayern", "Marienplatz 1"),
    ("東京", "JP", "ja", "100-0005", "東京都", "丸の内 1-1"),
    ("London", "GB", "en", "EC1A 1BB", None, "1 King's Road"),
    ("New York", "US", "en-US", "10001", "NY", "350 5th Ave"),
    ("Zürich", "CH", "de-CH", "8001", "ZH", "Bahnhofstrasse 7"),
    ("Kraków", "PL", "pl", "31-001", None, "Rynek Główny 3"),
    ("Reykjavík", "IS", "is", "101", None, "Laugavegur 12"),
    ("Kuwait City", "KW", "ar", "13001", None, "Gulf Road 5"),
    ("São Paulo", "BR", "pt-BR", "01310-000", "SP", "Avenida Paulista 1000"),
)
_DAY0 = date(2026, 1, 1)
_DATES = [(_DAY0 + timedelta(days=d)).isoformat() for d in range(365 + 31)]
_M64 = (1 << 64) - 1


def _price_table() -> dict[str, tuple[list[str], list[Decimal], Decimal]]:
    """Per currency: the catalogue's unit price texts, the same as Decimals, and the minor-unit quantum."""
    table = {}
    for code, _, multiplier, _ in _CURRENCY_SPEC:
        m = minor_units(code)
        texts, values = [], []
        for k in range(50):
            eur = Decimal(500 + (k * 7919) % 49_500).scaleb(-2)  # 5.00 .. 499.99 EUR
            # Every 7th item is priced finer than the currency (API calls, per-gram goods): 3 or 4 decimals.
            places = m if k % 7 else max(m + 1, 3 + k % 2)
            value = (eur * Decimal(multiplier) + Decimal(k).scaleb(-places)).quantize(Decimal(1).scaleb(-places))
            texts.append(format(value, "f"))
            values.append(value)
        table[code] = (texts, values, Decimal(1).scaleb(-m))
    return table


_PRICE_TABLE = _price_table()


def _mix(seed: int, k: int) -> int:
    """splitmix64 finaliser of (seed, k): customer k's facts depend on nothing else."""
    z = (seed * 0x9E3779B97F4A7C15 + k * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _customer(seed: int, k: int) -> dict[str, object]:
    h = _mix(seed, k)
    first, first_ascii = _FIRST[h % len(_FIRST)]
    last, last_ascii = _LAST[(h >> 8) % len(_LAST)]
    city, country, locale, postal, region, street = _PLACES[(h >> 16) % len(_PLACES)]
    address = None if (h >> 24) % 5 == 0 else {
        "line1": street, "line2": "c/o Buchhaltung" if (h >> 28) % 4 == 0 else None, "city": city,
        "region": region, "postal_code": postal, "country": country,
    }
    return {
        "external_id": f"CUST-{k:06d}",
        "email": f"{first_ascii}.{last_ascii}.{k}@example.{('com', 'org', 'net')[(h >> 32) % 3]}",
        "name": f"{last} {first}" if country == "JP" else f"{first} {last}",
        "company": _COMPANIES[(h >> 36) % len(_COMPANIES)],
        "locale": locale,
        "address": address,
    }


def generate(n: int, seed: int = 0) -> Iterator[bytes]:
    """Yield ``n`` valid invoice lines (see the module docstring), deterministic for ``(n, seed)``."""
    rng = random.Random(f"bulk-generate:{seed}")  # a str seed: Random(-1) and Random(1) would coincide
    r = rng.random
    n_customers = max(1, n // 10)
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    for i in range(1, n + 1):
        customer = _customer(seed, 1 + int(r() * n_customers))
        code, _, _, rates = _CURRENCY_TABLE[int(r() * 100)]
        texts, values, quantum = _PRICE_TABLE[code]
        x = r()
        status = "draft" if x < 0.7 else "sent" if x < 0.9 else "paid"
        day = int(r() * 365)
        issue = _DATES[day] if status != "draft" or r() < 0.5 else None
        due = _DATES[day + (14, 30)[int(r() * 2)]] if issue and r() < 0.8 else None
        refs = list(range(50))
        lines = []
        for j in range(1 + int(r() * 5)):
            pick = j + int(r() * (50 - j))  # partial Fisher-Yates: item refs never repeat in an invoice
            refs[j], refs[pick] = refs[pick], refs[j]
            ref, title = _CATALOGUE[refs[j]]
            lines.append({
                "title": title, "description": _DESCRIPTIONS[int(r() * len(_DESCRIPTIONS))],
                "quantity": 1 + int(r() * 20), "unit_price": texts[refs[j]],
                "tax_rate": rates[int(r() * len(rates))], "item_ref": ref,
            })
        if r() < 0.15:
            # A discount on the first line at its tax rate: each rate's net stays >= 80 % of that line,
            # so net, tax and gross totals all stay positive whatever the price mode.
            first = lines[0]
            pct = (5, 10, 15, 20)[int(r() * 4)]
            base = values[refs[0]] * first["quantity"]  # type: ignore[operator]
            off = (base * pct / 100).quantize(quantum, rounding=ROUND_DOWN)
            lines.append({
                "title": f"Rabatt {pct} % — discount", "description": None, "quantity": 1,
                "unit_price": format(-off, "f"), "tax_rate": first["tax_rate"], "item_ref": None,
            })
        yield dumps({
            "external_id": f"INV-{seed}-{i:07d}",
            "customer": customer,
            "currency": code,
            "issue_date": issue,
            "due_date": due,
            "status": status,
            "prices": "gross" if r() < 0.25 else "net",
            "notes": _NOTES[int(r() * len(_NOTES))],
            "lines": lines,
            "extra": {"po_number": f"PO-{seed}-{i}"} if r() < 0.1 else {},
        }, option=newline)
