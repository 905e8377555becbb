"""Coperniq's daily quota as one run sees it, and the gated send every Coperniq request takes.

Every answer's ``X-RateLimit-Limit``/``X-RateLimit-Remaining`` and the API's clock (``Date``)
are noted (:meth:`Quota.observe`, from ``classify``); every request passes the engine's quota
hook, a :class:`bulk.spacing.QuotaGate`, so the requests in flight stay within what is left and
the run stops with :class:`~bulk.errors.QuotaExhausted` only once nothing is in flight (see
"Limits" in ``bulk.targets.coperniq``). Every part of the Coperniq client sends through
``CoperniqTarget.send`` (typed :class:`Send`), which is the running run's :meth:`Quota.send`,
never through ``job.send`` directly.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import email.utils
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

from ..errors import QuotaExhausted
from ..spacing import QuotaGate
from ..transport import Reply, Request
from .base import RunJob

__all__ = ["Quota", "Recover", "Send", "recovering"]

_DAY = dt.timedelta(hours=24)
# A 429 while Remaining is at most this is the daily quota, not the per-second limit: Remaining
# lags (C-auth: usage is cached up to 60 s per key), so "almost nothing left" + 429 means "spent".
_QUOTA_429_MARGIN = 100
_NO_DATE_MARGIN = 3600  # s: without a Date header, the client's clock stands in, with this margin
_RECOVERING = contextvars.ContextVar("coperniq_recovering", default=False)

#: ``job.send``'s ``recover``: look for what a lost answer may have created
Recover = Callable[[], Awaitable[Reply | None]]


class Send(Protocol):
    """``job.send`` behind the quota gate (:meth:`Quota.send`): how every part sends."""

    def __call__(self, job: RunJob, req: Request, *, stage: str, recover: Recover | None = None) -> Awaitable[Reply]:
        ...


def _server_time(reply: Reply) -> int | None:
    """The API's clock (the ``Date`` header, RFC 9110) as POSIX seconds, None without one."""
    try:
        return int(email.utils.parsedate_to_datetime(reply.headers["Date"]).timestamp())
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def _remaining(reply: Reply) -> int | None:
    value = reply.headers.get("X-RateLimit-Remaining")
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


@contextlib.contextmanager
def recovering() -> Iterator[None]:
    """Within: requests skip the gate. For the lookups inside the retry of a create that is
    itself in flight (it holds a slot already: waiting for the gate to settle would wait for it)."""
    token = _RECOVERING.set(True)
    try:
        yield
    finally:
        _RECOVERING.reset(token)


class Quota:
    """This run's view of the daily quota (made in ``start_run``, one per run)."""

    def __init__(self) -> None:
        self.gate = QuotaGate()  # X-RateLimit-Remaining covers the requests in flight
        self.limit = "5000"
        self.first_answer: dt.datetime | None = None
        self.server_start: int | None = None  # the API's clock (Date) at this run's first answer

    def observe(self, reply: Reply) -> None:
        """Note what ``reply`` says of the quota and the API's clock; raise
        :class:`~bulk.errors.QuotaExhausted` for a 429 that means the day's quota is spent."""
        remaining = _remaining(reply)
        if self.first_answer is None:
            self.first_answer = dt.datetime.now(dt.UTC)
        if self.server_start is None:
            self.server_start = _server_time(reply)
        if remaining is not None:
            self.gate.remaining = remaining
            self.limit = reply.headers.get("X-RateLimit-Limit") or self.limit
        if reply.status == 429:  # what is left read only then (with --processes N, a read of the job's file)
            left = self.gate.remaining
            if left is not None and left <= _QUOTA_429_MARGIN:
                raise self.exhausted()

    def exhausted(self) -> QuotaExhausted:
        now = dt.datetime.now(dt.UTC)
        start = min(self.first_answer or now, now)
        at, full = (start + _DAY).isoformat(timespec="seconds"), (now + _DAY).isoformat(timespec="seconds")
        return QuotaExhausted(
            f"Coperniq's daily request quota for this API key ({self.limit} per rolling 24 h) is used up "
            f"(X-RateLimit-Remaining {self.gate.remaining}); stopped instead of spending the day on 429s; resume "
            f"after {at} with the same command, when this run's first requests leave the window (the whole "
            f"quota is back by {full})", resume_at=at)

    def since(self) -> int:
        """A time (the API's clock) before any copy this run can still see land late was made."""
        return self.server_start or int(time.time()) - _NO_DATE_MARGIN

    async def send(self, job: RunJob, req: Request, *, stage: str, recover: Recover | None = None) -> Reply:
        """job.send, but only while the last X-RateLimit-Remaining covers the requests in flight.

        When it does not, wait for those to finish (their answers update Remaining); stop only
        when nothing is in flight and Remaining is still spent, so no sent create is abandoned.
        """
        if _RECOVERING.get():  # a lookup inside the retry of a create that is itself in flight
            return await job.send(req, stage=stage, recover=recover)
        async with self.gate.slot(self.exhausted):  # the engine's quota hook (bulk.spacing)
            return await job.send(req, stage=stage, recover=recover)
