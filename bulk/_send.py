"""The engine's sender: :meth:`bulk.job.Session.send`, pacing and retries around one request.

The one coroutine per request between a target and the transport: it runs for every request
of the run, so it is kept to plain statements (the pacer's slot taken and given back by
synchronous calls where nothing must wait) and what it reads more than once is bound to
locals first. A module of its own, with :class:`~bulk.job.Session` as ``self``: ``Session.send``
*is* this function (a class attribute), no forwarding frame.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from time import monotonic
from typing import TYPE_CHECKING

import anyio

from .errors import RetryableError, Throttled, TransportError, UnknownReference
from .latency import FLUSH_AT, INTENDED
from .pacing import _REMAINING
from .transport import Reply, Request

if TYPE_CHECKING:
    from .job import Session

__all__ = ["send"]

_LAST_BEFORE_FLUSH = FLUSH_AT - 1  # a value recorded with this many waiting makes Latency.record fold them in


async def send(
    self: Session, req: Request, *, stage: str, recover: Callable[[], Awaitable[Reply | None]] | None = None,
    refs: tuple[tuple[str, str], ...] = (),
) -> Reply:
    """Send with pacing and retries (the contract: :meth:`bulk.targets.base.RunJob.send`).

    One coroutine per request (this one) between the target and the transport: it runs for
    every request of the run, so what it reads more than once is bound to locals first."""
    kind = req.kind
    pacer, transport, latency, counters = self.pacer, self.transport, self.latency, self.counters
    attempt = 0  # failures charged to this request's budget
    tries = 0  # every failure: drives the backoff
    last_failure: float | None = None
    try:
        while True:
            try:
                # The pacer's slot without a context manager's two coroutines (Pacer.slot's steps)
                if (sent_at := pacer.take(kind)) is None:
                    sent_at = await pacer.enter(kind)
                try:
                    counters.requests += 1
                    start = monotonic()
                    # Open loop: a record's first request counts from the record's intended start.
                    if INTENDED.used and (intended := INTENDED.get()) is not None and intended[0] is not None:
                        start, intended[0] = min(start, intended[0]), None
                    try:
                        reply = await transport.send(req)
                    except TransportError as exc:
                        latency.record(kind, stage, int((monotonic() - start) * 1e6), exc.reason)
                        raise
                    end = monotonic()
                    # Latency.record, inline (once per request: a call fewer): the value into its
                    # (kind, stage, status) list when that list exists and no fold is due with it
                    micros = int((end - start) * 1e6)
                    values = latency._pending.get((kind, stage, reply.status))
                    if values is None or latency._waiting >= _LAST_BEFORE_FLUSH:
                        latency.record(kind, stage, micros, reply.status)
                    else:
                        values.append(micros)
                        latency._waiting += 1
                finally:
                    pacer.give(sent_at)
                # Pacer.observe's first test inline (once per request: a call fewer when, as
                # mostly, the answer has no X-RateLimit-Remaining); observe reads it all again.
                if (headers := reply.headers).get(_REMAINING) is not None:
                    pacer.observe(kind, headers)
                result = self.target.classify(reply, stage)
                # Pacer.ok_at(end), inline (keep the two alike): no await since the answer came,
                # so no later success is noted yet
                pacer._last_ok = end
                pacer.failing_since = None
                return result
            except Throttled as exc:
                # 429 does not use up the attempt budget: the pacer adapts the pace (or pauses
                # everyone), the health check bounds how long we keep being throttled.
                counters.throttled += 1
                if wait := pacer.throttled(exc.retry_after, kind, sent_at):
                    await anyio.sleep(wait)  # this request's own Retry-After (one sleep, no polling)
            except RetryableError as exc:
                pacer.failed(str(exc))
                tries += 1
                # A connection that could not even be made (refused: the server is away, e.g.
                # restarting) says nothing about this request and is not charged to its budget.
                if not isinstance(exc, TransportError) or exc.maybe_committed:
                    attempt += 1
                # The budget is per record only while the API answers others: during an outage
                # nothing is marked failed; the health check stops the run (resumably) instead.
                # "Answers others" means between this request's last two failures: a success
                # merely since its first failure may be an answer that was already on its way
                # when the outage began (a restart), and would cost the record its place.
                if (attempt >= self.attempts and last_failure is not None
                        and pacer.succeeded_since(last_failure)):
                    raise
                last_failure = monotonic()
                counters.retries += 1
                await anyio.sleep(self.backoff.delay(min(tries, self.attempts)))
                if exc.maybe_committed and recover is not None:
                    found = await recover()
                    if found is not None:
                        return found
    except UnknownReference as exc:
        exc.refs = exc.refs or refs  # the resolved ids this request was built from
        raise
