"""The HDR histogram layout bulk uses, and the fast ways to fill, read and empty one.

Every histogram here has one layout (values in microseconds, 1 µs to one hour, 3
significant digits), so a value's counts index is computed the way
``HdrHistogram.record_value`` does, without its method calls, and many values at once in C
(:func:`add_values`: chains of ``map`` over ``operator`` functions, then ``Counter``). The
package's own iterators and percentile methods walk all ~23,000 sub-buckets in Python (~1 s a
histogram); the readers here (:func:`buckets`, :func:`stats_ms`) visit only the non-empty ones.
"""

from __future__ import annotations

import ctypes
import sys
from collections import Counter
from itertools import compress, repeat
from operator import add, lshift, or_, rshift, sub
from typing import Any

from hdrh import codec
from hdrh.codec import add_array
from hdrh.histogram import HdrHistogram

__all__ = ["DIGITS", "HIGHEST_US", "LOWEST_US", "add_values", "buckets", "decode_into", "empty", "histogram",
           "stats_ms"]

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour
DIGITS = 3


def histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


_T = histogram()
_MASK: int = _T.sub_bucket_mask
_UNIT: int = _T.unit_magnitude
_HALF_MAG: int = _T.sub_bucket_half_count_magnitude
_HALF: int = _T.sub_bucket_half_count
del _T
_BUCKET_BASE: int = _UNIT + _HALF_MAG + 1
# add_values' C form of _index relies on this layout (1 µs units: no unit shift), checked here
# rather than trusted: another LOWEST_US would need the unit magnitude back in it.
assert _UNIT == 0 and _HALF == 1 << _HALF_MAG, "add_values assumes 1-unit resolution"


def _index(value: int) -> int:
    bucket = (value | _MASK).bit_length() - _BUCKET_BASE
    return ((bucket + 1) << _HALF_MAG) + (value >> (bucket + _UNIT)) - _HALF


#: What add_values counts a batch into before adding it to each histogram (always left empty).
_SCRATCH = histogram().counts
_WORD = ctypes.sizeof(ctypes.c_uint64)
assert ctypes.sizeof(_SCRATCH) == _WORD * len(_SCRATCH)


def add_values(hists: tuple[HdrHistogram, ...], values: list[int]) -> None:
    """Record every one of ``values`` (microseconds; clamped to LOWEST_US..HIGHEST_US, as
    bulk.latency promises) into each of ``hists``: the same counts, total, min and max as
    ``record_value`` per value.

    No Python code runs per value: each value's index is :func:`_index` with the layout's
    constants folded in (``shift = bucket``; ``index = (shift << half_mag) + (value >>
    shift)``), computed by ``map`` over ``operator`` functions, and ``Counter`` counts them.
    Python runs once per distinct index (into a scratch array), and the scratch's range is
    added to each histogram by the package's C ``add_array`` (what ``HdrHistogram.add`` uses)."""
    if not values:
        return
    low, high = min(values), max(values)
    if low < LOWEST_US or high > HIGHEST_US:
        values = [min(max(v, LOWEST_US), HIGHEST_US) for v in values]
        low, high = min(values), max(values)
    shifts = list(map(sub, map(int.bit_length, map(or_, values, repeat(_MASK))), repeat(_BUCKET_BASE)))
    scratch = _SCRATCH
    for index, k in Counter(map(add, map(lshift, shifts, repeat(_HALF_MAG)), map(rshift, values, shifts))).items():
        scratch[index] = k
    first, n = _index(low), len(values)
    offset, length = first * _WORD, _index(high) + 1 - first
    src = ctypes.addressof(scratch) + offset
    for h in hists:
        add_array(ctypes.addressof(h.counts) + offset, src, length, _WORD)
        h.total_count += n
        if high > h.max_value:
            h.max_value = high
        if low < h.min_value:
            h.min_value = low
    ctypes.memset(src, 0, length * _WORD)


def decode_into(scratch: HdrHistogram, encoded: str) -> HdrHistogram:
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


def empty(h: HdrHistogram) -> None:
    """Empty ``h`` in place: only the range its minimum and maximum span (a C memset)."""
    if h.get_total_count():
        first, last = _bounds(h)
        ctypes.memset(ctypes.addressof(h.counts) + first * _WORD, 0, (last - first) * _WORD)
    h.total_count = h.max_value = 0
    h.min_value = sys.maxsize


def _bounds(h: HdrHistogram) -> tuple[int, int]:
    """The range of counts indexes that can be non-zero: those of the recorded minimum to maximum."""
    first = _index(max(LOWEST_US, min(h.min_value, HIGHEST_US))) if h.min_value <= HIGHEST_US else 0
    last = min(h.counts_len, _index(min(h.max_value, HIGHEST_US)) + 1) if h.max_value else h.counts_len
    return first, last


def _nonzero(h: HdrHistogram) -> list[tuple[int, int]]:
    """(index, count) of every non-empty bucket, in index order. Only the buckets between the
    recorded minimum's and maximum's are read (a slice of a memoryview of the counts: no copy,
    no ctypes item getter per count), and the empty ones are skipped by ``itertools.compress``
    (C): the histogram's ~23,000 counts are never walked in Python, nor copied. A summary
    reads four histograms at every checkpoint, the timeline one a second."""
    if h.get_total_count() == 0:
        return []
    first, last = _bounds(h)
    counts = _counts(h)[first:last]
    return [(first + i, counts[i]) for i in compress(range(last - first), counts)]


def _counts(h: HdrHistogram) -> Any:
    """``h``'s counts as a memoryview of unsigned 64-bit integers (no copy, read in C without
    the ctypes array's item getter, which slicing calls per count); a histogram of another word
    size (not one :func:`histogram` made) as its ctypes array."""
    counts = h.counts
    if h.word_size == _WORD and ctypes.sizeof(counts) == _WORD * h.counts_len:
        return memoryview(counts).cast("B").cast("Q")
    return counts


def buckets(h: HdrHistogram) -> list[tuple[int, int, int]]:
    """(lowest, highest equivalent value, count) in microseconds of every non-empty bucket, in
    increasing order (HdrHistogram's get_value_from_index and get_highest_equivalent_value,
    inlined: the package's own iterators walk every sub-bucket in Python, ~1 s a histogram)."""
    out = []
    for index, n in _nonzero(h):
        bucket, sub_ = (index >> _HALF_MAG) - 1, (index & (_HALF - 1)) + _HALF
        if bucket < 0:
            bucket, sub_ = 0, sub_ - _HALF
        low = sub_ << (bucket + _UNIT)
        out.append((low, low + (1 << (bucket + _UNIT)) - 1, n))
    return out


_PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))


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
