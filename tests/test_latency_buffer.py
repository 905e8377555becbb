"""Latency.record buffers values in lists and folds them in later (bulk.latency.FLUSH_AT):
every reader must see exactly what recording each request directly into HdrHistograms gives,
and a reader that skipped the fold would miss the waiting values (these tests read each one
with nothing folded yet)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from hdrh.histogram import HdrHistogram

import bulk.latency as latency_mod
from bulk.latency import HIGHEST_US, Latency, histogram, stats_ms
from bulk.prom import families


def _requests() -> list[tuple[str, str, int, int | str]]:
    rnd = random.Random(7)
    out: list[tuple[str, str, int, int | str]] = []
    for i in range(2500):
        micros = int(rnd.lognormvariate(8.0, 1.5))
        if i % 4 == 0:
            out.append(("read", "read", micros, "timeout" if i % 9 == 0 else 200))
        else:
            out.append(("write", "invoice" if i % 3 else "item", micros, 503 if i % 11 == 0 else 201))
    return [*out, ("write", "invoice", 0, 201), ("write", "item", 10 * HIGHEST_US, 201), ("read", "read", 1, 200)]


def _direct() -> tuple[dict[str, HdrHistogram], HdrHistogram]:
    """The reference: record_value per request into each histogram it belongs to."""
    hists: dict[str, HdrHistogram] = {}
    interval = histogram()
    for kind, stage, micros, _ in _requests():
        clamped = min(max(micros, 1), HIGHEST_US)
        for key in {kind, stage}:
            hists.setdefault(key, histogram()).record_value(clamped)
        interval.record_value(clamped)
    return hists, interval


def _same(mine: HdrHistogram, ref: HdrHistogram) -> None:
    assert list(mine.counts) == list(ref.counts)
    assert (mine.total_count, mine.min_value, mine.max_value) == (ref.total_count, ref.min_value, ref.max_value)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Latency:
    """A Latency holding every request, none folded in yet (no automatic flush)."""
    monkeypatch.setattr(latency_mod, "FLUSH_AT", 10**9)
    lat = Latency()
    for request in _requests():
        lat.record(*request)
    assert lat._waiting == len(_requests())  # nothing folded in: every reader below must do it
    return lat


def test_buffered_histograms_equal_direct_recording(recorded: Latency) -> None:
    ref, ref_interval = _direct()
    assert sorted(recorded.hist) == sorted(ref)
    for key, h in ref.items():
        _same(recorded.hist[key], h)
    _same(recorded.interval, ref_interval)
    assert recorded.kinds == {"read", "write"}
    assert recorded.latency_ms() == {key: stats_ms(h) for key, h in sorted(ref.items())}
    assert recorded.status_codes() == _counts()
    assert recorded.finished == len(_requests())
    assert recorded.errors == sum(1 for *_, s in _requests() if isinstance(s, str) or s >= 500)


def test_buffered_encoding_is_byte_identical(recorded: Latency) -> None:
    ref, _ = _direct()
    doc = recorded.to_json()
    assert {k: v for k, v in doc.items() if not k.startswith("_")} == \
        {key: h.encode().decode("ascii") for key, h in sorted(ref.items())}
    assert doc["_kinds"] == ["read", "write"]


def _counts() -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for kind, stage, _, status in _requests():
        for key in {kind, stage}:
            out.setdefault(key, {})[str(status)] = out.get(key, {}).get(str(status), 0) + 1
    return out


READERS: dict[str, Callable[[Latency], Any]] = {
    "hist": lambda lat: {k: stats_ms(h) for k, h in lat.hist.items()},
    "total": lambda lat: stats_ms(lat.total("write")),
    "interval": lambda lat: stats_ms(lat.interval),
    "take_interval": lambda lat: stats_ms(lat.take_interval()),
    "latency_ms": lambda lat: lat.latency_ms(),
    "status": lambda lat: {k: dict(v) for k, v in lat.status.items()},
    "status_codes": lambda lat: lat.status_codes(),
    "to_json": lambda lat: lat.to_json(),
    "take_delta": lambda lat: lat.take_delta(),
    "finished": lambda lat: lat.finished,
    "errors": lambda lat: lat.errors,
    "kinds": lambda lat: sorted(lat.kinds),
    "prometheus": lambda lat: [(m.name, [(s.labels, s.value) for s in m.samples])
                               for m in families(lat, {}, {}, 0)],
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_every_reader_sees_the_waiting_values(recorded: Latency, reader: str) -> None:
    """Each reader, first thing on an unfolded Latency, against the same reader after an
    explicit fold: equal only if the reader folds the waiting values in itself."""
    folded = Latency()
    for request in _requests():
        folded.record(*request)
    folded.flush()
    assert READERS[reader](recorded) == READERS[reader](folded)


def test_a_skipped_fold_would_be_seen(monkeypatch: pytest.MonkeyPatch, recorded: Latency) -> None:
    """The check above can fail: a reader that does not fold sees nothing yet."""
    assert recorded._hist == {} and recorded._finished == 0
    monkeypatch.setattr(Latency, "flush", lambda self: None)
    assert recorded.latency_ms() == {}


def test_waiting_values_are_bounded() -> None:
    lat = Latency()
    for i in range(3 * latency_mod.FLUSH_AT + 5):
        lat.record("write", "invoice", 1000 + i, 201)
        assert lat._waiting < latency_mod.FLUSH_AT
    assert lat._hist["write"].total_count == 3 * latency_mod.FLUSH_AT
    assert lat.finished == 3 * latency_mod.FLUSH_AT + 5


def test_a_delta_carries_only_what_changed() -> None:
    lat = Latency()
    lat.record("read", "read", 900, 200)
    lat.record("write", "invoice", 1200, 201)
    assert sorted(k for k in (lat.take_delta() or {}) if not k.startswith("_")) == ["invoice", "read", "write"]
    lat.record("read", "read", 950, 200)
    delta = lat.take_delta()
    assert delta is not None
    assert sorted(k for k in delta if not k.startswith("_")) == ["read"]
    assert delta["_status"] == {"read": {"200": 1}}
    parent = Latency()
    parent.add_delta(delta)
    assert parent.finished == 1 and parent.hist["read"].total_count == 1
