"""Latency.record and the bucket readers against HdrHistogram's own code (record_value, its
iterators and percentiles): the inlined hot path and the C-level bucket scan change nothing."""

from __future__ import annotations

import contextlib
import random

from hdrh.histogram import HdrHistogram

from bulk.latency import HIGHEST_US, Latency, buckets, histogram, stats_ms


def _values() -> list[int]:
    rnd = random.Random(11)
    values = [int(rnd.lognormvariate(11.5, 1.2)) for _ in range(3000)]
    return [*values, 0, 1, 2, 1023, 1024, 2047, 2048, 999_999, HIGHEST_US, HIGHEST_US + 5, 10 * HIGHEST_US]


def test_record_fills_each_histogram_as_record_value_does() -> None:
    lat = Latency()
    write, invoice, interval = histogram(), histogram(), histogram()
    read = histogram()
    for i, micros in enumerate(_values()):
        clamped = min(max(micros, 1), HIGHEST_US)
        if i % 3:
            lat.record("write", "invoice", micros, 201 if i % 7 else 503)
            for h in (write, invoice, interval):
                h.record_value(clamped)
        else:
            lat.record("read", "read", micros, "reset" if i % 5 == 0 else 200)  # a stage named as its kind
            for h in (read, interval):
                h.record_value(clamped)
    assert sorted(lat.hist) == ["invoice", "read", "write"]
    assert lat.kinds == {"read", "write"}
    for mine, ref in ((lat.hist["write"], write), (lat.hist["invoice"], invoice), (lat.hist["read"], read),
                      (lat.interval, interval)):
        assert list(mine.counts) == list(ref.counts)
        assert (mine.total_count, mine.min_value, mine.max_value) == (ref.total_count, ref.min_value, ref.max_value)
    n = len(_values())
    assert lat.finished == n
    assert sum(lat.status["write"].values()) + sum(lat.status["read"].values()) == n
    assert lat.status["write"] == lat.status["invoice"]
    assert lat.errors == lat.status["write"].get(503, 0) + lat.status["read"].get("reset", 0)


def _reference_buckets(h: HdrHistogram) -> list[tuple[int, int, int]]:
    out = []
    for index in range(h.counts_len):
        n = h.get_count_at_index(index)
        if n:
            low = h.get_value_from_index(index)
            out.append((low, h.get_highest_equivalent_value(low), n))
    return out


def test_buckets_and_percentiles_match_hdrhistograms_own() -> None:
    h = histogram()
    assert buckets(h) == []
    for micros in _values():
        h.record_value(min(max(micros, 1), HIGHEST_US))
    assert buckets(h) == _reference_buckets(h)
    st = stats_ms(h)
    assert st["count"] == h.get_total_count()
    for name, p in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9)):
        assert st[name] == round(h.get_value_at_percentile(p) / 1000, 3), name
    assert st["max"] == round(h.get_highest_equivalent_value(h.get_max_value()) / 1000, 3)
    one = histogram()
    one.record_value(5000)
    assert buckets(one) == _reference_buckets(one) and len(buckets(one)) == 1


def test_buckets_of_a_histogram_of_another_word_size_match_hdrhistograms_own() -> None:
    """The readers view a histogram() one's counts as 64-bit words; one of 32-bit counts (not
    made by bulk) is read from its ctypes array, with the same result."""
    h = HdrHistogram(1, HIGHEST_US, 3, word_size=4)
    for micros in _values():
        h.record_value(min(max(micros, 1), HIGHEST_US))
    assert buckets(h) == _reference_buckets(h)
    assert stats_ms(h)["p99"] == round(h.get_value_at_percentile(99.0) / 1000, 3)


def test_take_interval_returns_each_seconds_requests_and_then_an_empty_histogram() -> None:
    lat = Latency()
    seconds = [[1500, 2500, 900_000], [7, 7, 3_000_000], [], [42]]
    for values in seconds:
        for micros in values:
            lat.record("write", "invoice", micros, 201)
        got = lat.take_interval()
        ref = histogram()
        for micros in values:
            ref.record_value(micros)
        assert list(got.counts) == list(ref.counts)
        assert (got.total_count, got.min_value, got.max_value) == (ref.total_count, ref.min_value, ref.max_value)
        assert stats_ms(got) == stats_ms(ref)
    assert lat.hist["write"].total_count == sum(len(v) for v in seconds)


def test_take_interval_makes_no_histogram_a_second() -> None:
    """Two histograms in turn, never a new one: an HdrHistogram is a reference cycle (its
    encoder holds it) whose ~184 KB of counts the collector does not see, so one a second
    piled up under the upload's collector thresholds (167.8 MB at 1,000,000 records)."""
    lat = Latency()
    held = [lat.interval]  # held, so no id is reused
    for second in range(10):
        lat.record("write", "invoice", 1000 + second, 201)
        held += [lat.take_interval(), lat.interval]
    assert len({id(h) for h in held}) == 2


def _histograms_alive() -> int:
    import gc

    return sum(1 for o in gc.get_objects() if isinstance(o, HdrHistogram))


def test_adding_deltas_decodes_into_one_histogram_and_adds_exactly() -> None:
    """``--processes N``: the parent adds every worker's delta. Decoding each into a fresh
    HdrHistogram (a reference cycle with ~184 KB of counts) piled them up between full
    collections; the collector is off here, so every fresh one stays visible."""
    import gc

    worker, parent, ref_write, ref_interval = Latency(), Latency(), histogram(), histogram()
    values = _values()
    gc.collect()
    gc.disable()
    try:
        before = _histograms_alive()
        for second in range(8):
            for micros in values[second::8]:
                worker.record("write", "invoice", micros, 201 if micros % 5 else 503)
                ref_write.record_value(min(max(micros, 1), HIGHEST_US))
                if second == 7:
                    ref_interval.record_value(min(max(micros, 1), HIGHEST_US))
            delta = worker.take_delta()
            assert delta is not None
            parent.take_interval()  # the timeline's second: only the last delta stays in it
            parent.add_delta(delta)
        # the parent's write and invoice totals, the one it decodes into, the worker's new ones
        assert _histograms_alive() - before <= 5
    finally:
        gc.enable()
    for h in (parent.hist["write"], parent.hist["invoice"]):
        assert list(h.counts) == list(ref_write.counts)
        assert h.total_count == ref_write.total_count  # min and max: their buckets' bounds, as decoded
    assert list(parent.interval.counts) == list(ref_interval.counts)
    assert parent.interval.total_count == ref_interval.total_count
    assert parent.kinds == {"write"} and parent.finished == len(values)
    assert parent.errors == sum(1 for v in values if not v % 5)
    assert stats_ms(parent.hist["write"]) == stats_ms(ref_write)


def test_the_senders_inline_record_equals_latency_record() -> None:
    """``Session.send`` records a request's latency inline (bulk._send) when its list exists and
    no fold is due: what it leaves is what ``Latency.record`` of the same values leaves, and it
    folds in at the same counts."""
    import anyio

    from bulk import latency as latency_mod
    from bulk.errors import RecordRefused
    from bulk.targets.agiled import AgiledTarget
    from bulk.testing import MockTransport
    from bulk.testing._mock import session
    from bulk.transport import Reply, Request

    statuses = [200, 201, 200, 404, 201]  # (a 404 is recorded, then refused: no retry)

    def answer(req: Request) -> Reply:
        return Reply(statuses[len(transport.requests) % len(statuses)], {}, b"{}")

    transport = MockTransport(answer)
    target = AgiledTarget(base_url="http://mock.invalid", credentials={"AGILED_API_TOKEN": "token-12345678"},
                          options={})
    n = 2 * latency_mod.FLUSH_AT + 7
    waiting: list[int] = []
    runs = []

    async def main() -> None:
        run = session(target, transport)
        runs.append(run)
        for i in range(n):
            req = Request("GET", "/public/v1/me", kind="read" if i % 2 else "write")
            with contextlib.suppress(RecordRefused):  # the 404s: recorded all the same
                await run.send(req, stage="auth" if i % 3 else "invoice")
            waiting.append(run.latency._waiting)

    anyio.run(main)
    run = runs[0]
    ref = Latency()
    ref_waiting = []
    for i in range(n):
        ref.record("read" if i % 2 else "write", "auth" if i % 3 else "invoice", 5, statuses[(i + 1) % len(statuses)])
        ref_waiting.append(ref._waiting)
    assert waiting == ref_waiting  # folded in at the same requests
    assert run.latency.finished == ref.finished == n
    assert run.latency.status_codes() == ref.status_codes()
    assert {k: v.total_count for k, v in run.latency.hist.items()} == {k: v.total_count for k, v in ref.hist.items()}
