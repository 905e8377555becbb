"""The pacer with several limits on one request (a kind's lane and the shared ``--rate``), and
its answer to sporadic 429s, on the virtual clock (:func:`bulk.testing.run_virtual`): every
time is exact and nothing depends on the machine's speed."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from test_pacer import once_at, peak_in_flight, send_all

from bulk.pacing import CLIMB_EVERY, Pacer, burst_for
from bulk.testing import VirtualLoop, run_virtual


def now() -> float:
    return asyncio.get_running_loop().time()


def spacing_violations(times: list[float], rate: float, burst: int) -> list[tuple[float, float]]:
    """Sends ``burst`` apart that are closer than ``1 / rate``: ``burst + 1`` requests within
    less than 1/rate, more than a bucket of ``burst`` at ``rate`` lets go (at most ``burst``
    at once, then one per 1/rate)."""
    times = sorted(times)
    return [(a, b) for a, b in zip(times, times[burst:], strict=False) if b - a < 1 / rate - 1e-6]


def test_a_kind_and_the_shared_limit_are_passed_at_one_instant() -> None:
    # Writes 10/s and everything 20/s, burst 1. Ten reads queue for the shared lane first; a
    # write that takes its own lane and then waits behind them left at 0.5 s, and the next
    # write, whose own slot came 0.1 s after the first one's *slot* (not its departure),
    # followed it 0.05 s later: twice the write rate.
    async def go() -> tuple[list[float], list[float]]:
        p = Pacer(limits={"write": 10.0, "*": 20.0}, concurrency=32, give_up_after=600, max_wait=30, burst=1)
        reads: list[float] = []
        async with anyio.create_task_group() as tg:
            async def read_side() -> None:
                reads.extend(await send_all(p, 20, 10, kind="read"))
            tg.start_soon(read_side)
            await anyio.lowlevel.checkpoint()  # the reads are queued first
            writes = await send_all(p, 6, 3, kind="write")
        return writes, reads

    writes, reads = run_virtual(go)
    assert len(writes) == 6 and len(reads) == 20
    assert spacing_violations(writes, 10.0, 1) == []
    assert spacing_violations(writes + reads, 20.0, 1) == []


def _peak_in_flight(limits: dict[str, float], answer_at: Callable[[float], float], n: int) -> tuple[int, list[float]]:
    """n writes by 64 workers; a request sent at t is answered at ``answer_at(t)``."""
    return peak_in_flight(lambda: Pacer(limits=limits, concurrency=64, give_up_after=600, max_wait=30, burst=2),
                          answer_at, n)


def test_a_run_with_several_limits_keeps_no_more_in_flight_than_the_pace_needs() -> None:
    # As for one lane (test_pacer): the server stalls from 0.5 s to 0.8 s and answers what it
    # took meanwhile at once; with a kind's limit and a shared one, the window holds the
    # requests back too instead of letting the pace send 30 into the stall.
    limits = {"write": 100.0, "*": 200.0}
    peak, times = _peak_in_flight(limits, lambda t: 0.8 if 0.5 <= t < 0.8 else t + 0.001, 200)
    assert peak <= 3
    assert len(times) == 200
    assert spacing_violations(times, 100.0, 2) == []


def test_sporadic_429s_at_the_lowered_pace_cut_again_without_pausing_everyone() -> None:
    # At 200/s a 429 cuts; then one answer in 25 is a 429 for a while (a server whose stalls
    # bunch the requests in flight): most requests sent at the lowered pace pass, so the limit
    # is not spent. Each 429 cuts again and waits alone; nobody pauses for the Retry-After.
    async def go() -> list[float]:
        p = Pacer(limits={"write": 200.0}, concurrency=16, give_up_after=600, max_wait=30, burst=2)
        refused: set[int] = set()

        def answer(i: int, sent_at: float) -> float | None:
            if i in refused or not (i == 20 or (20 < i < 400 and i % 25 == 0)):
                return None  # a throttled request passes when sent again
            refused.add(i)
            return 1.0

        return await send_all(p, 600, 16, on_send=answer)

    times = run_virtual(go)
    gaps = [b - a for a, b in itertools.pairwise(sorted(times))]
    assert max(gaps) < 0.05  # a pause would leave a gap of its Retry-After, 1 s
    assert len(times) == 600 + 16  # every request, and the 16 throttled ones once more


def test_after_a_429_the_window_grows_back_by_demand_well_before_the_retry_after() -> None:
    # 100/s with answers after 50 ms needs 5-6 requests in flight. A 429 halves the window;
    # held at half until its Retry-After (1 s) ended, it capped the rate at 3 per 50 ms (60/s).
    cut: list[float] = []

    async def go() -> list[float]:
        p = Pacer(limits={"write": 100.0}, concurrency=64, give_up_after=600, max_wait=30, burst=2)
        return await send_all(p, 300, 64, on_send=once_at(100, cut), answer=lambda: anyio.sleep(0.05))

    times = run_virtual(go)
    start = cut[0] + 3 * CLIMB_EVERY
    sent = [t for t in times if start <= t < start + 0.5]
    assert len(sent) >= 0.85 * 100 * 0.5  # at least 0.85 R (the cut rate is 0.9 R, climbing)


class _MillisecondLoop(VirtualLoop):
    """A virtual loop with uvloop's clock and timers, that counts its turns (selects).

    As on uvloop (libuv): ``loop.time()`` reads in whole ms, a timer's delay is rounded to the
    nearest ms and one of 0 ms is ``call_soon``, and the clock's resolution is 1 ms. Each turn
    costs ``TURN`` of virtual time, as a real turn costs CPU, so a pacer that re-arms 0 ms
    timers until the clock ticks does so ~1 ms / TURN times: a busy loop, counted in turns."""

    TURN = 10e-6

    def __init__(self) -> None:
        super().__init__()
        self.turns = 0
        self._clock_resolution = 0.001
        select = self._selector.select  # type: ignore[attr-defined]

        def counted(timeout: float | None = None) -> list[Any]:
            self.turns += 1
            if self.turns > 200_000:
                raise RuntimeError("the pacer spins: 200,000 loop turns")
            self.clock[0] += self.TURN
            return select(None if timeout is None else max(0.0, timeout - self.TURN))

        self._selector.select = counted  # type: ignore[attr-defined]

    def time(self) -> float:
        # + 1e-6 ms: a clock moved to exactly a whole ms must read it despite float rounding
        return math.floor(self.clock[0] * 1000 + 1e-6) / 1000

    def call_at(self, when: float, callback: Callable[..., object], *args: Any,
                context: Any = None) -> Any:
        ms = round((when - self.time()) * 1000)
        if ms <= 0:
            return self.call_soon(callback, *args, context=context)
        return super().call_at(self.time() + ms / 1000, callback, *args, context=context)

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any,
                   context: Any = None) -> Any:
        return self.call_at(self.time() + delay, callback, *args, context=context)


@pytest.mark.parametrize("rate", [1000.0, 900.0, 300.0, 1500.0, 3000.0, 7.0])
def test_the_pacer_does_not_spin_on_a_clock_in_whole_milliseconds(rate: float) -> None:
    # On uvloop's clock, aiolimiter armed its wake-up timer for the sub-ms remainder of the
    # wait (1/R = 1.11 ms at 900/s), which uvloop rounds to 0 ms, every loop turn until the
    # clock ticked: ~45 turns per request at 900/s here, a busy loop (~70 wake-ups per request
    # on uvloop). At 1,000/s elapsed x rate came a hair under one request (the bucket's EPS).
    loop = _MillisecondLoop()
    n = min(300, int(rate * 6))

    async def go() -> list[float]:
        return await send_all(Pacer(limits={"*": rate}, concurrency=16, give_up_after=600, max_wait=30), n, 16)

    times = anyio.run(go, backend_options={"loop_factory": lambda: loop})
    assert len(times) == n
    assert loop.turns < 10 * n  # 16 workers' answers included: 3 to 6 turns per request
    burst = burst_for(rate)
    assert spacing_violations(times, rate, burst) == []
    assert max(times) - min(times) >= (n - burst) / rate - 1e-6  # no faster than R, burst aside
