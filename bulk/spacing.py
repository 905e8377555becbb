"""Engine-offered hooks for targets with limits beyond a rate per kind (see :mod:`bulk.targets.base`):
:class:`KeySpacer` and :class:`QuotaGate`.

Per-key spacing: at most ``limit`` requests of one key per ``window`` seconds, counted from
their completion.

Some APIs limit *identical* requests (anny: 4 identical requests per second): twins of one
key must not reach the server ``limit + 1`` times within the window. A request's send time
does not bound when it arrives, but its completion does: a request that completed before the
next one leaves surely arrived before it. So a slot is one anyio semaphore token per key, taken
before the request and given back ``window`` seconds after it completes: at any moment at most
``limit`` requests of a key are in flight or completed within the last window. A waiter
sleeps on the semaphore (no polling); idle keys are dropped, so memory follows the keys in use.

This is not a rate limit (the pacer's aiolimiter lanes pace every request by kind): it only
separates twins, which a rate limiter keyed by kind cannot see. aiolimiter counts from the
acquire, so it cannot give the "from completion" bound; the semaphore can.

Create it inside the run (the semaphores and the delayed release belong to the running loop).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager

import anyio

from . import _quotashare

__all__ = ["PEER_POLL", "KeySpacer", "QuotaGate"]

#: s: how often a gate waiting on another process's requests in flight looks again
PEER_POLL = 0.02


class _Key:
    __slots__ = ("semaphore", "users")

    def __init__(self, limit: int) -> None:
        self.semaphore = anyio.Semaphore(limit)
        self.users = 0  # waiting, in flight, or in their window after completion


class KeySpacer:
    """``async with spacer.slot(key):`` around a request; ``limit <= 0`` disables it."""

    def __init__(self, limit: int, window: float = 1.0) -> None:
        self.limit = limit
        self.window = window
        self._keys: dict[Hashable, _Key] = {}

    @asynccontextmanager
    async def slot(self, key: Hashable) -> AsyncIterator[None]:
        if self.limit <= 0:
            yield
            return
        entry = self._keys.get(key)
        if entry is None:
            entry = self._keys[key] = _Key(self.limit)
        entry.users += 1
        try:
            await entry.semaphore.acquire()
        except BaseException:
            self._done(key, entry)
            raise
        try:
            yield
        finally:
            # The token comes back one window after completion (a loop timer: no task to keep).
            asyncio.get_running_loop().call_later(self.window, self._release, key, entry)

    def _release(self, key: Hashable, entry: _Key) -> None:
        entry.semaphore.release()
        self._done(key, entry)

    def _done(self, key: Hashable, entry: _Key) -> None:
        entry.users -= 1
        if entry.users == 0 and self._keys.get(key) is entry:
            del self._keys[key]

    def __len__(self) -> int:
        """Keys currently tracked (for tests: idle keys are dropped)."""
        return len(self._keys)


class QuotaGate:
    """Requests in flight never more than the quota the API last said is left.

    For an API that sends ``X-RateLimit-Remaining`` for a long window (Coperniq: 5,000 per
    rolling 24 h): set :attr:`remaining` from every answer; ``async with gate.slot(exhausted):``
    around ``job.send`` waits (on an anyio Event, no polling) while the requests in flight could
    use up what is left, since their answers update it, and raises ``exhausted()`` only when
    nothing is in flight and nothing is left, so no sent request is abandoned. ``remaining``
    None (no header seen yet) never waits. The pacer still paces every request; this only
    keeps a run from spending a quota it does not have.

    In a worker of ``--processes N`` (made while :func:`bulk._quotashare.bind` holds) the
    counts are the job's: the requests in flight of all N processes, and the least of their
    last answers' Remaining (:class:`~bulk._quotashare.QuotaShare`). A wait for another process's
    requests looks again every :data:`PEER_POLL` seconds, as their answers reach no Event
    here; it happens only when the quota is all but spent.
    """

    def __init__(self) -> None:
        self._remaining: int | None = None
        self.inflight = 0  # this process's
        self._settled: anyio.Event | None = None
        self._share = _quotashare.current()

    @property
    def remaining(self) -> int | None:
        return self._remaining if self._share is None else self._share.remaining()

    @remaining.setter
    def remaining(self, value: int) -> None:
        if self._share is None:
            self._remaining = value
        else:
            self._share.observe(value)

    @asynccontextmanager
    async def slot(self, exhausted: Callable[[], BaseException]) -> AsyncIterator[None]:
        share = self._share
        while True:
            if share is None:
                inflight = self.inflight
                if self._remaining is None or self._remaining > inflight:
                    break
            else:
                counted, inflight = share.enter()
                if counted:
                    break
            if inflight == 0:
                raise exhausted()
            if self._settled is None:
                self._settled = anyio.Event()
            if share is None:
                await self._settled.wait()
            else:
                with anyio.move_on_after(PEER_POLL):
                    await self._settled.wait()
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1
            if share is not None:
                share.leave()
            if self._settled is not None:
                self._settled.set()
                self._settled = None
