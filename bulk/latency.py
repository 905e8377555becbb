"""Request latency and answer status per request kind and stage (issue 15).

One :class:`Latency` per process records every HTTP request a run sends (every attempt,
throttled and failed ones included, so a histogram's count equals the summary's
``requests`` once nothing is in flight) into HDR histograms: one per kind (``read``,
``write``) and one per target stage (``invoice``, ``item``, ``customer``...). Memory is
bounded however long the run: a histogram is a fixed array (values in microseconds, 1 µs to
one hour, 3 significant digits; longer values are clamped to the hour).

The hot path (:meth:`Latency.record`) does a few dict lookups and bumps each histogram in one loop,
and no string is made per request (statuses stay ints until the summary).

Persistence: :meth:`Latency.to_json` is ``{"<kind>": "<HdrHistogram base64 encoding>"}``
plus the status counts (``RUN_DIR/latency.hdr.json``, see docs in /README: Benchmark runs);
:meth:`Latency.add_json` adds such a document (an earlier run's, a shard's, an upload
process's delta) to this one. Histograms add exactly, so merged percentiles are those of the
union of the requests.
"""

from __future__ import annotations

import contextvars
import ctypes
import sys
from collections.abc import Mapping
from itertools import compress
from typing import Any

from hdrh import codec
from hdrh.histogram import HdrHistogram

__all__ = ["ERROR_STATUSES", "INTENDED", "Latency", "histogram", "stats_ms"]

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour
DIGITS = 3

#: Transport errors, counted beside the HTTP statuses under these names.
ERROR_STATUSES = ("reset", "timeout", "refused")

#: Open loop (``--arrival-rate``): a one-element list holding the record's intended start
#: (``time.monotonic()``), set by the worker before the record's upload. The record's first
#: request takes it (and sets it to None), so its latency counts from when the record
#: *should* have started: a stalled server shows in the percentiles instead of hiding
#: behind the workers it kept busy (coordinated omission). A list, not the value, so that
#: a target's sub-tasks (which copy the context) share it.
INTENDED: contextvars.ContextVar[list[float | None] | None] = contextvars.ContextVar("bulk_intended", default=None)


def histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


# Every histogram here has the same layout, so a value's counts index is computed once per
# request (as HdrHistogram.record_value does, without its method calls) and bumped in each.
_T = histogram()
_MASK: int = _T.sub_bucket_mask
_UNIT: int = _T.unit_magnitude
_HALF_MAG: int = _T.sub_bucket_half_count_magnitude
_HALF: int = _T.sub_bucket_half_count
del _T


_BUCKET_BASE: int = _UNIT + _HALF_MAG + 1


def _index(value: int) -> int:
    bucket = (value | _MASK).bit_length() - _BUCKET_BASE
    return ((bucket + 1) << _HALF_MAG) + (value >> (bucket + _UNIT)) - _HALF


def _decode_into(scratch: HdrHistogram, encoded: str) -> HdrHistogram:
    """``encoded`` (``HdrHistogram.encode``'s text) decoded into ``scratch`` (emptied first);
    a fresh histogram only for another layout than ours. Not ``HdrHistogram.decode``: a fresh
    histogram a delta (a reference cycle, ~184 KB of counts the collector does not count) piled
    up between full collections. ``HdrHistogramEncoder.decode`` checks the headers, the C
    varint decoder ``HdrHistogram.decode`` uses writes the non-zero counts into ``scratch``."""
    hdr_payload = codec.HdrHistogramEncoder.decode(encoded.encode("ascii"))
    p = hdr_payload.payload
    if (p.lowest_trackable_value, p.highest_trackable_value, p.significant_figures) != (LOWEST_US, HIGHEST_US, DIGITS):
        return HdrHistogram.decode(encoded.encode("ascii"))  # not one of ours: the package's way
    counts = scratch.counts
    ctypes.memset(ctypes.addressof(counts), 0, ctypes.sizeof(counts))
    results = codec.decode(hdr_payload._data, codec.payload_header_size, ctypes.addressof(counts),
                           scratch.counts_len, scratch.word_size)
    scratch.total_count, scratch.max_value, scratch.min_value = 0, 0, sys.maxsize
    if results["total"]:
        scratch.set_internal_tacking_values(results["min_nonzero_index"], results["max_nonzero_index"],
                                            results["total"])
    return scratch


def _empty(h: HdrHistogram) -> None:
    """Empty ``h`` in place, bucket by bucket (only its non-empty ones)."""
    counts = h.counts
    for index, _ in _nonzero(h):
        counts[index] = 0
    h.total_count = h.max_value = 0
    h.min_value = sys.maxsize


def _nonzero(h: HdrHistogram) -> list[tuple[int, int]]:
    """(index, count) of every non-empty bucket, in index order. Only the buckets between the
    recorded minimum's and maximum's are read (a slice of the ctypes array: a list, made in C),
    and the empty ones are skipped by ``itertools.compress`` (C): the histogram's ~23,000
    counts are never walked in Python, nor copied whole. A summary reads four histograms at
    every checkpoint, the timeline one a second."""
    if h.get_total_count() == 0:
        return []
    first = _index(max(LOWEST_US, min(h.min_value, HIGHEST_US))) if h.min_value <= HIGHEST_US else 0
    last = min(h.counts_len, _index(min(h.max_value, HIGHEST_US)) + 1) if h.max_value else h.counts_len
    counts = h.counts[first:last]
    return list(zip(compress(range(first, last), counts), compress(counts, counts), strict=True))


def buckets(h: HdrHistogram) -> list[tuple[int, int, int]]:
    """(lowest, highest equivalent value, count) in microseconds of every non-empty bucket, in
    increasing order (HdrHistogram's get_value_from_index and get_highest_equivalent_value,
    inlined: the package's own iterators walk every sub-bucket in Python, ~1 s a histogram)."""
    out = []
    for index, n in _nonzero(h):
        bucket, sub = (index >> _HALF_MAG) - 1, (index & (_HALF - 1)) + _HALF
        if bucket < 0:
            bucket, sub = 0, sub - _HALF
        low = sub << (bucket + _UNIT)
        out.append((low, low + (1 << (bucket + _UNIT)) - 1, n))
    return out


def stats_ms(h: HdrHistogram) -> dict[str, Any]:
    """count, p50, p90, p99, p999, max, mean in milliseconds (3 decimals), as HdrHistogram
    defines them (a percentile is the highest value equivalent to its bucket), in one pass
    over the counts: the package's own get_mean_value walks every sub-bucket in Python (~1 s)."""
    total = h.get_total_count()
    if total == 0:
        return {"count": 0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "p999": 0.0, "max": 0.0, "mean": 0.0}
    targets = [(name, max(1, int(p * total / 100 + 0.5))) for name, p in _PERCENTILES]
    out: dict[str, Any] = {"count": total}
    running = 0
    weighted = 0
    top = 0
    k = 0
    for low, top, n in buckets(h):
        weighted += n * ((low + top + 1) // 2)
        running += n
        while k < len(targets) and running >= targets[k][1]:
            out[targets[k][0]] = round(top / 1000, 3)
            k += 1
    out["max"] = round(top / 1000, 3)
    out["mean"] = round(weighted / total / 1000, 3)
    return out


_PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))


class Latency:
    """Histograms and status counts of one process's requests (see the module docstring)."""

    def __init__(self) -> None:
        self.hist: dict[str, HdrHistogram] = {}
        self.status: dict[str, dict[int | str, int]] = {}
        self.kinds: set[str] = set()  # the keys of ``hist`` that are request kinds (the rest: stages)
        #: every request of this second (any kind), for the timeline's p50/p99; reset by it
        self.interval = histogram()
        self._spare = histogram()  # the interval of the second before (see take_interval)
        self._decoded: HdrHistogram | None = None  # what add_json decodes into (see _decode_into)
        self.finished = 0  # requests recorded, every kind
        self._stats: dict[str, tuple[int, dict[str, Any]]] = {}  # latency_ms per key, by count
        self.errors = 0  # of which 5xx answers or transport errors

    def _new(self, key: str) -> HdrHistogram:
        h = self.hist[key] = histogram()
        self.status[key] = {}
        return h

    def record(self, kind: str, stage: str, micros: int, status: int | str) -> None:
        """One finished request: ``micros`` from its (intended) start to its answer or error."""
        if micros > HIGHEST_US:
            micros = HIGHEST_US
        elif micros < LOWEST_US:
            micros = LOWEST_US
        # _index inlined, and one loop bumps each histogram (the hot path: a Python call cost
        # more than the work it did)
        bucket = (micros | _MASK).bit_length() - _BUCKET_BASE
        index = ((bucket + 1) << _HALF_MAG) + (micros >> (bucket + _UNIT)) - _HALF
        h = self.hist.get(kind)
        if h is None:
            h = self._new(kind)
            self.kinds.add(kind)
        if stage == kind:
            hists: tuple[HdrHistogram, ...] = (h, self.interval)
        else:
            at_stage = self.hist.get(stage)
            if at_stage is None:
                at_stage = self._new(stage)
            hists = (h, at_stage, self.interval)
        for h in hists:
            h.counts[index] += 1
            h.total_count += 1
            if micros > h.max_value:
                h.max_value = micros
            if micros < h.min_value:
                h.min_value = micros
        status_of = self.status
        counts = status_of[kind]
        counts[status] = counts.get(status, 0) + 1
        if stage != kind:
            counts = status_of[stage]
            counts[status] = counts.get(status, 0) + 1
        self.finished += 1
        if status.__class__ is str or status >= 500:  # type: ignore[operator]
            self.errors += 1

    # --- totals --------------------------------------------------------------------------------
    def latency_ms(self) -> dict[str, Any]:
        out = {}
        for key, h in sorted(self.hist.items()):
            cached = self._stats.get(key)
            if cached is None or cached[0] != h.get_total_count():  # unchanged histograms: not again
                cached = self._stats[key] = (h.get_total_count(), stats_ms(h))
            out[key] = cached[1]
        return out

    def status_codes(self) -> dict[str, dict[str, int]]:
        return {key: {str(code): n for code, n in sorted(counts.items(), key=lambda kv: str(kv[0]))}
                for key, counts in sorted(self.status.items())}

    # --- persistence and merging ---------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """``{"<kind>": "<base64 HDR>", ...}`` plus ``"_status"`` (the counts, by key) and
        ``"_kinds"`` (which keys are request kinds, not stages)."""
        doc: dict[str, Any] = {key: h.encode().decode("ascii") for key, h in sorted(self.hist.items())}
        doc["_status"] = self.status_codes()
        doc["_kinds"] = sorted(self.kinds)
        return doc

    def add_json(self, doc: Mapping[str, Any]) -> None:
        """Add a :meth:`to_json` document (its requests join this one's)."""
        self._add(doc, delta=False)

    def add_delta(self, doc: Mapping[str, Any]) -> None:
        """An upload process's requests since its last report: into the totals and this second."""
        self._add(doc, delta=True)

    def _add(self, doc: Mapping[str, Any], *, delta: bool) -> None:
        kinds = set(doc.get("_kinds") or ())
        for key, value in doc.items():
            if key.startswith("_") or not isinstance(value, str):
                continue
            h = self.hist.get(key) or self._new(key)
            if self._decoded is None:
                self._decoded = histogram()
            other = _decode_into(self._decoded, value)  # one histogram decoded into, not one a delta
            h.add(other)
            if key in kinds:
                self.kinds.add(key)
                if delta:
                    self.interval.add(other)
        for key, counts in (doc.get("_status") or {}).items():
            mine = self.status.setdefault(key, {})
            for code, n in counts.items():
                code_key: int | str = int(code) if code.isdigit() else code
                mine[code_key] = mine.get(code_key, 0) + int(n)
                if key in kinds:
                    self.finished += int(n)
                    if not code.isdigit() or int(code) >= 500:
                        self.errors += int(n)

    def take_interval(self) -> HdrHistogram:
        """The requests finished since the last call (the timeline's second), then an empty one.

        The histogram returned is valid until the next call: two are used in turn, the spare
        emptied bucket by bucket (only its non-empty ones). Not a fresh one a second: an
        HdrHistogram is a reference cycle (its encoder holds it) with ~184 KB of counts outside
        the garbage collector's accounting, and with the upload's collector thresholds
        (bulk._cli.upload: ``gc.freeze``, 20,000/50/100) a full collection came about once a
        run, so a 1,000,000-record run held every second's histogram: 167.8 MB peak RSS against
        70.8 MB with the spare (measured 2026-12-01)."""
        h, spare = self.interval, self._spare
        _empty(spare)
        self.interval, self._spare = spare, h
        return h

    def take_delta(self) -> dict[str, Any] | None:
        """This process's requests since the last call (an upload process ships them to the
        parent), then forget them. None when there were none."""
        if not self.finished:
            return None
        doc = self.to_json()
        self._stats.clear()
        for h in self.hist.values():  # emptied in place, not new ones a delta (see take_interval)
            _empty(h)
        for counts in self.status.values():
            counts.clear()
        self.finished = self.errors = 0
        return doc

    def total(self, key: str) -> HdrHistogram | None:
        return self.hist.get(key)
