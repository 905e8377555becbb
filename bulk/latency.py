"""Request latency and answer status per request kind and stage (issue 15).

One :class:`Latency` per process records every HTTP request a run sends (every attempt,
throttled and failed ones included, so a histogram's count equals the summary's
``requests`` once nothing is in flight) into HDR histograms: one per kind (``read``,
``write``) and one per target stage (``invoice``, ``item``, ``customer``...). Memory is
bounded however long the run: a histogram is a fixed array (values in microseconds, 1 µs to
one hour, 3 significant digits; longer values are clamped to the hour; bulk._hdr).

The hot path (:meth:`Latency.record`) only appends the value to a plain list per (kind,
stage, status): bumping three histograms' ctypes counts per request cost ~11.8k instructions.
The lists are folded into the histograms and status counts (:meth:`Latency.flush`, many values
at once in C) every :data:`FLUSH_AT` values and before anything reads them: every reader here
(the properties, the summary's numbers, the checkpoint's document, the timeline's second, a
delta) flushes first, so what it sees is exactly what recording each request directly gave.

Persistence: :meth:`Latency.to_json` is ``{"<kind>": "<HdrHistogram base64 encoding>"}``
plus the status counts (``RUN_DIR/latency.hdr.json``, see docs in /README: Benchmark runs);
:meth:`Latency.add_json` adds such a document (an earlier run's, a shard's, an upload
process's delta) to this one. Histograms add exactly, so merged percentiles are those of the
union of the requests.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from typing import Any

from hdrh.histogram import HdrHistogram

from ._hdr import HIGHEST_US, LOWEST_US, add_values, buckets, decode_into, empty, histogram, stats_ms

__all__ = ["ERROR_STATUSES", "FLUSH_AT", "HIGHEST_US", "INTENDED", "LOWEST_US", "Latency", "buckets", "histogram",
           "stats_ms"]

#: Recorded values wait in lists until this many are waiting (or something reads): the
#: lists' memory stays bounded (~150 KB) and the fold's fixed cost is shared by many values.
FLUSH_AT = 4096

#: Transport errors, counted beside the HTTP statuses under these names.
ERROR_STATUSES = ("reset", "timeout", "refused")

#: Open loop (``--arrival-rate``): a one-element list holding the record's intended start
#: (``time.monotonic()``), set by the worker before the record's upload. The record's first
#: request takes it (and sets it to None), so its latency counts from when the record
#: *should* have started: a stalled server shows in the percentiles instead of hiding
#: behind the workers it kept busy (coordinated omission). A list, not the value, so that
#: a target's sub-tasks (which copy the context) share it.
class _Intended:
    """A :class:`contextvars.ContextVar` (``get``, ``set``, ``reset``) that says whether it was
    ever set (``used``): the sender reads the context variable only then, where a closed-loop
    run paid a ``ContextVar.get`` per request for a value that is never there. Once set it
    stays ``used`` for the process (a later closed-loop run reads None: correct, a bit slower)."""

    __slots__ = ("_var", "used")

    def __init__(self) -> None:
        self._var: contextvars.ContextVar[list[float | None] | None] = contextvars.ContextVar(
            "bulk_intended", default=None)
        self.used = False

    def get(self) -> list[float | None] | None:
        return self._var.get()

    def set(self, value: list[float | None] | None) -> contextvars.Token[list[float | None] | None]:
        self.used = True
        return self._var.set(value)

    def reset(self, token: contextvars.Token[list[float | None] | None]) -> None:
        self._var.reset(token)


INTENDED = _Intended()


class Latency:
    """Histograms and status counts of one process's requests (see the module docstring)."""

    def __init__(self) -> None:
        self._hist: dict[str, HdrHistogram] = {}
        self._status: dict[str, dict[int | str, int]] = {}
        self._kinds: set[str] = set()  # the keys of ``hist`` that are request kinds (the rest: stages)
        self._interval = histogram()  # every request of this second (any kind); see take_interval
        self._spare = histogram()  # the interval of the second before (see take_interval)
        self._decoded: HdrHistogram | None = None  # what add_json decodes into (see bulk._hdr.decode_into)
        self._finished = 0  # requests folded in, every kind
        self._errors = 0  # of which 5xx answers or transport errors
        self._stats: dict[str, tuple[int, dict[str, Any]]] = {}  # latency_ms per key, by count
        #: micros recorded and not yet folded in, per (kind, stage, status); see flush
        self._pending: dict[tuple[str, str, int | str], list[int]] = {}
        self._waiting = 0  # how many values _pending holds

    def record(self, kind: str, stage: str, micros: int, status: int | str) -> None:
        """One finished request: ``micros`` from its (intended) start to its answer or error."""
        try:
            self._pending[kind, stage, status].append(micros)
        except KeyError:
            self._pending[kind, stage, status] = [micros]
        self._waiting += 1
        if self._waiting >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        """Fold the waiting values into the histograms (each kind's, each stage's, this
        second's) and the status counts. Every reader calls it first; order does not matter
        (counts, totals, minimum and maximum are the same whatever the order values come in)."""
        pending = self._pending
        if not pending:
            return
        self._pending = {}
        self._waiting = 0
        hist, status_of = self._hist, self._status
        for (kind, stage, status), values in pending.items():
            h = hist.get(kind)
            if h is None:
                h = self._new(kind)
                self._kinds.add(kind)
            n = len(values)
            counts = status_of[kind]
            counts[status] = counts.get(status, 0) + n
            if stage == kind:
                add_values((h, self._interval), values)
            else:
                at_stage = hist.get(stage)
                if at_stage is None:
                    at_stage = self._new(stage)
                add_values((h, at_stage, self._interval), values)
                counts = status_of[stage]
                counts[status] = counts.get(status, 0) + n
            self._finished += n
            if status.__class__ is str or status >= 500:  # type: ignore[operator]
                self._errors += n

    def _new(self, key: str) -> HdrHistogram:
        h = self._hist[key] = histogram()
        self._status[key] = {}
        return h

    # --- what the run reads (each flushes first) -------------------------------------------------
    @property
    def hist(self) -> dict[str, HdrHistogram]:
        """The histogram of each kind and stage."""
        self.flush()
        return self._hist

    @property
    def status(self) -> dict[str, dict[int | str, int]]:
        """The answer statuses' counts, per kind and stage (ints, or ERROR_STATUSES' names)."""
        self.flush()
        return self._status

    @property
    def kinds(self) -> set[str]:
        """The keys of :attr:`hist` that are request kinds (the rest are stages)."""
        self.flush()
        return self._kinds

    @property
    def interval(self) -> HdrHistogram:
        """Every request of this second (any kind), for the timeline's p50/p99 (see take_interval)."""
        self.flush()
        return self._interval

    @property
    def finished(self) -> int:
        """Requests recorded, every kind."""
        return self._finished + self._waiting

    @property
    def errors(self) -> int:
        """Of :attr:`finished`, 5xx answers and transport errors."""
        self.flush()
        return self._errors

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
        doc["_kinds"] = sorted(self._kinds)
        return doc

    def add_json(self, doc: Mapping[str, Any]) -> None:
        """Add a :meth:`to_json` document (its requests join this one's)."""
        self._add(doc, delta=False)

    def add_delta(self, doc: Mapping[str, Any]) -> None:
        """An upload process's requests since its last report: into the totals and this second."""
        self._add(doc, delta=True)

    def _add(self, doc: Mapping[str, Any], *, delta: bool) -> None:
        # (no flush needed: adding commutes with the waiting values' fold)
        kinds = set(doc.get("_kinds") or ())
        for key, value in doc.items():
            if key.startswith("_") or not isinstance(value, str):
                continue
            h = self._hist.get(key) or self._new(key)
            if self._decoded is None:
                self._decoded = histogram()
            other = decode_into(self._decoded, value)  # one histogram decoded into, not one a delta
            h.add(other)
            if key in kinds:
                self._kinds.add(key)
                if delta:
                    self._interval.add(other)
        for key, counts in (doc.get("_status") or {}).items():
            mine = self._status.setdefault(key, {})
            for code, n in counts.items():
                code_key: int | str = int(code) if code.isdigit() else code
                mine[code_key] = mine.get(code_key, 0) + int(n)
                if key in kinds:
                    self._finished += int(n)
                    if not code.isdigit() or int(code) >= 500:
                        self._errors += int(n)

    def take_interval(self) -> HdrHistogram:
        """The requests finished since the last call (the timeline's second), then an empty one.

        The histogram returned is valid until the next call: two are used in turn, the spare
        emptied bucket by bucket (only its non-empty ones). Not a fresh one a second: an
        HdrHistogram is a reference cycle (its encoder holds it) with ~184 KB of counts outside
        the garbage collector's accounting, and with the upload's collector thresholds
        (bulk._cli.upload: ``gc.freeze``, 20,000/50/100) a full collection came about once a
        run, so a 1,000,000-record run held every second's histogram: 167.8 MB peak RSS against
        70.8 MB with the spare (measured 2026-12-01)."""
        self.flush()
        h, spare = self._interval, self._spare
        empty(spare)
        self._interval, self._spare = spare, h
        return h

    def take_delta(self) -> dict[str, Any] | None:
        """This process's requests since the last call (an upload process ships them to the
        parent), then forget them. None when there were none. Only the kinds and stages with
        requests since the last call are in it (not an empty histogram for every one seen)."""
        self.flush()
        if not self._finished:
            return None
        doc = {key: value for key, value in self.to_json().items()
               if key.startswith("_") or self._hist[key].get_total_count()}
        doc["_status"] = {key: counts for key, counts in doc["_status"].items() if counts}
        self._stats.clear()
        for h in self._hist.values():  # emptied in place, not new ones a delta (see take_interval)
            empty(h)
        for counts in self._status.values():
            counts.clear()
        self._finished = self._errors = 0
        return doc

    def total(self, key: str) -> HdrHistogram | None:
        return self.hist.get(key)
