"""Engine-offered hook for targets with a bulk endpoint (see :mod:`bulk.targets.base`): :class:`Batches`.

Batching coalesces the small requests of concurrent ``upload`` calls into one bulk call, for an
API that limits requests, not objects (ChargeOver's ``_bulk``: 25 creates per request). Every
caller still awaits its own result: ``await batches.call(job, item)`` returns the result of
``item``, or raises the batch's error.

Protocol (no background task, nothing outlives the run): the first caller to find no open
batch becomes its *leader*. It waits until the batch holds ``size`` items or ``linger``
seconds have passed, then awaits ``flush(batch, job)`` with its own ``job``; the other callers
(*followers*) join the open batch and wait. ``flush`` sends the batch (with ``job.send``: the
pacing, 429 pauses and retries are the engine's) and returns one result per item, in the
order of ``batch.items``; each caller gets its own. The batch stays open, and keeps filling,
until it is closed: when it is full, or when ``flush`` calls :meth:`Batch.close` (do it when
the request body is encoded, e.g. in ``Request.body()``, which the transport calls at send
time, so a batch that waits for its rate-limit slot still takes callers), or when ``flush``
returns. Nobody joins a closed batch: the next caller leads a new one.

Errors: if ``flush`` raises a :class:`~bulk.errors.BulkError`, every caller of the batch gets
that same error. Anything else (a cancelled leader, a bug in ``flush``, a ``flush`` returning
the wrong number of results, which raises :class:`RuntimeError`) reaches the leader as it is
and every follower as ``interrupted()``: by default a
:class:`~bulk.errors.TransportError` with ``maybe_committed`` (their items may have been sent).

Create it inside the run (``Target.start_run``: its anyio events belong to the running loop);
one per run and bulk endpoint.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Generic, TypeVar

import anyio

from .errors import BulkError, TransportError

if TYPE_CHECKING:
    from .targets.base import RunJob

__all__ = ["Batch", "Batches"]

T = TypeVar("T")
R = TypeVar("R")


class Batch(Generic[T]):
    """The items of one bulk call, in the order their callers joined."""

    __slots__ = ("_closed", "items")

    def __init__(self) -> None:
        self.items: list[T] = []
        self._closed = anyio.Event()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Nobody joins after this (idempotent). Call it when the body is encoded, with no
        ``await`` between reading :attr:`items` and this call, so no caller joins unsent."""
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()


class _Pending(Generic[T, R]):
    """A batch and what its followers wait for: the results, or the error."""

    __slots__ = ("batch", "done", "error", "results")

    def __init__(self) -> None:
        self.batch: Batch[T] = Batch()
        self.done = anyio.Event()
        self.results: list[R] | None = None
        self.error: BaseException | None = None


def _interrupted() -> BaseException:
    return TransportError("the batch request was interrupted", maybe_committed=True)


class Batches(Generic[T, R]):
    """Leader/follower batching of concurrent calls into ``flush``; ``size >= 1``, ``linger >= 0`` seconds."""

    def __init__(self, flush: Callable[[Batch[T], RunJob], Awaitable[list[R]]], *, size: int, linger: float,
                 interrupted: Callable[[], BaseException] = _interrupted) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.flush = flush
        self.size = size
        self.linger = linger
        self.interrupted = interrupted
        self._open: _Pending[T, R] | None = None

    async def call(self, job: RunJob, item: T) -> R:
        """``item``'s result, from the next batch's ``flush``; or the batch's error."""
        pending = self._open
        leader = pending is None or pending.batch.closed
        if pending is None or pending.batch.closed:  # nobody joins a closed batch: lead a new one
            pending = self._open = _Pending()
        batch = pending.batch
        index = len(batch.items)
        batch.items.append(item)
        if len(batch.items) >= self.size:
            batch.close()
        if leader:
            await self._lead(pending, job)
        else:
            await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.results is not None
        return pending.results[index]

    async def _lead(self, pending: _Pending[T, R], job: RunJob) -> None:
        batch = pending.batch
        try:
            with anyio.move_on_after(self.linger):
                await batch.wait_closed()
            results = await self.flush(batch, job)
            batch.close()
            if len(results) != len(batch.items):
                raise RuntimeError(f"the batch's flush returned {len(results)} results for {len(batch.items)} items")
            pending.results = results
        except BaseException as exc:
            batch.close()
            pending.error = exc if isinstance(exc, BulkError) else self.interrupted()
            raise
        finally:
            pending.done.set()
