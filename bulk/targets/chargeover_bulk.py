"""Batching of ChargeOver calls into ``POST /api/v3/_bulk`` (O-bulk: at most 25 sub-requests).

Why: ChargeOver limits requests, not objects, and one ``_bulk`` call is one request, so under
a request-rate limit 25 creates per call go up to 25 times as fast (the request counts in
``tests/test_chargeover.py``; the speed itself is a benchmark's to measure). The per-record
contract does not change: every ``upload`` awaits its own sub-response through :meth:`Batcher.call`.

The coalescing of concurrent calls into one batch is the engine's hook,
:class:`bulk.batching.Batches` (a leader per batch, which waits until it is full or ``linger``
seconds have passed and sends it; every caller of a failed batch gets the same ``bulk``
error). What is ChargeOver's is here: the ``_bulk`` envelope, sent with ``job.send`` (pacing,
429 pauses and retries are the engine's), whose sub-request list is taken, and the batch
closed, when the transport first encodes the body, so under a rate limit the batch keeps
filling while it waits for its slot; and the recovery below.

Lost answers: a ``_bulk`` call that may have been committed (timeout, reset, 5xx) is recovered
before it is sent again. Each create carries the URI that finds its object by external key;
one ``_bulk`` of those GETs looks them all up. If every create is found, their objects are the
answers (``Sub.recovered``) and nothing is resent; otherwise (or when the look-up itself gets
no answer) the batch is resent whole, and a create found before comes back "external key in
use" (400) and is answered with what was found. A create of an earlier attempt or a killed
run that reaches ChargeOver late, after the look-up, cannot duplicate either: external keys
are unique, so whichever of the two copies comes second is refused, and a refused create is
looked up by its key (``ChargeOverTarget._create``). An answer that holds fewer results than
sub-requests is a lost answer (retried as above); a sub-request that failed alone (5xx, 429)
is sent again on its own, with the same recovery.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..batching import Batch, Batches
from ..errors import RetryableError, ServerError, TransportError
from ..transport import Reply, Request
from .base import RunJob

__all__ = ["BULK_URI", "MAX_BULK", "Batcher", "Sub", "parse"]

BULK_URI = "/api/v3/_bulk"
MAX_BULK = 25  # O-bulk
SHORT_ANSWERS = 3  # answers with results missing taken as lost, per batch, before its callers get the error


def parse(content: bytes) -> Any:
    """A ChargeOver answer, numbers with a fraction as Decimal (amounts stay exact)."""
    try:
        return json.loads(content, parse_float=Decimal)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Sub:
    """One answer: the envelope's ``code``, ``message`` and ``response``."""

    code: int
    message: str
    response: Any
    recovered: bool = False  # found by external key after a lost answer, not answered now


class _Entry:
    """One sub-request of a batch, and its object when a lost answer's look-up found it."""

    __slots__ = ("found", "lookup", "request")

    def __init__(self, request: dict[str, Any], lookup: str | None) -> None:
        self.request = request
        self.lookup = lookup
        self.found: Any = None


class _BatchRequest(Request):
    """``POST /_bulk`` whose body is the batch as it is when first sent (``Request.body()`` is
    called by the transport at send time, once: every resend carries the same batch)."""

    __slots__ = ("_freeze",)

    def __init__(self, freeze: Callable[[], list[dict[str, Any]]]) -> None:
        super().__init__("POST", BULK_URI)
        self._freeze = freeze

    def body(self) -> bytes | None:
        if self.json is None:
            self.json = self._freeze()
        return super().body()


def _interrupted() -> BaseException:
    return TransportError("the _bulk request was interrupted", maybe_committed=True)


class Batcher:
    """Create inside the run (anyio events are bound to its loop); one per run."""

    def __init__(self, *, size: int = MAX_BULK, linger: float = 0.01) -> None:
        if not 1 <= size <= MAX_BULK:
            raise ValueError(f"size must be 1..{MAX_BULK}")
        self.size = size
        self.linger = linger
        self._batches: Batches[_Entry, Sub] = Batches(self._flush, size=size, linger=linger,
                                                      interrupted=_interrupted)

    async def call(self, job: RunJob, method: str, uri: str, payload: Any = None, *,
                   lookup: str | None = None) -> Sub:
        """Send one sub-request in the next batch; ``lookup`` finds a POST's object by key."""
        entry = _Entry({"request_method": method, "uri": uri, "payload": payload}, lookup)
        return await self._batches.call(job, entry)

    async def _flush(self, batch: Batch[_Entry], job: RunJob) -> list[Sub]:
        """One ``_bulk`` call for the batch (resent, after a look-up, while its answer is lost)."""
        entries = batch.items
        recovered = False

        def freeze() -> list[dict[str, Any]]:
            batch.close()  # no await between this and the encoding: nobody joins late
            return [e.request for e in entries]

        async def recover() -> Reply | None:
            nonlocal recovered
            try:
                await self._look_up(entries, job)
            except RetryableError:
                return None  # nothing known: resending is safe, a create found twice is a refused key
            if all(e.found is not None for e in entries):
                recovered = True
                return Reply(200, {}, b"")
            return None

        request = _BatchRequest(freeze)  # every send of it carries the same batch
        short = 0
        while True:
            reply = await job.send(request, stage="bulk", recover=recover)
            batch.close()
            if not recovered:
                try:
                    results = _results(reply, len(entries))
                    break
                except ServerError:
                    # A short answer is a lost answer (some sub-requests may have committed): looked
                    # up like one, then resent (a create found twice is a refused key), a few times.
                    short += 1
                    if short > SHORT_ANSWERS:
                        raise
                    await recover()
            if recovered:  # every create was found: nothing is resent
                results = [Sub(200, "", e.found, recovered=True) for e in entries]
                break
        # "External key in use" for a create found by the look-up is our own earlier create.
        return [Sub(200, "", entry.found, recovered=True) if entry.found is not None and sub.code == 400 else sub
                for entry, sub in zip(entries, results, strict=True)]

    async def _look_up(self, entries: list[_Entry], job: RunJob) -> None:
        """Find the objects of the creates of a batch whose answer was lost (one _bulk of GETs)."""
        wanted = [e for e in entries if e.lookup and e.found is None]
        if not wanted:
            return
        req = Request("POST", BULK_URI, json=[
            {"request_method": "GET", "uri": e.lookup, "payload": None} for e in wanted])
        reply = await job.send(req, stage="bulk")
        for entry, sub in zip(wanted, _results(reply, len(wanted)), strict=True):
            if sub.code == 200 and isinstance(sub.response, dict):
                entry.found = sub.response


def _results(reply: Reply, count: int) -> list[Sub]:
    data = parse(reply.content)
    response = data.get("response") if isinstance(data, dict) else None
    subs = response.get("_bulk") if isinstance(response, dict) else response
    if not isinstance(subs, list) or len(subs) != count or not all(isinstance(s, dict) for s in subs):
        raise ServerError(reply.status, f"the _bulk answer does not hold {count} results")
    return [Sub(_code(s.get("code")), str(s.get("message") or ""), s.get("response")) for s in subs]


def _code(value: Any) -> int:
    return value if type(value) is int else 0

