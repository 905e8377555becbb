"""bulk/_pacing/bucket.py: on asyncio's own loop a Bucket admits when aiolimiter does, and on a
clock in whole ms it wakes once per admission instead of once per loop turn (virtual clock:
:func:`bulk.testing.run_virtual`; nothing depends on the machine's speed)."""

from __future__ import annotations

import asyncio
from functools import partial

import anyio
import pytest
from aiolimiter import AsyncLimiter
from test_pacer_compose import _MillisecondLoop

from bulk._pacing.bucket import MS, Bucket, tick_of
from bulk.testing import run_virtual


async def _admissions(limiter: AsyncLimiter, n: int, tasks: int) -> tuple[list[float], int]:
    """n acquisitions by ``tasks`` tasks: the loop times they were admitted at, and how many
    times the limiter armed its wake-up timer (each admission re-arms it for the next waiter)."""
    loop = asyncio.get_running_loop()
    times: list[float] = []
    todo = iter(range(n))
    fired = [0]
    wake_next = limiter._wake_next

    async def task() -> None:
        for _ in todo:
            await limiter.acquire()
            times.append(loop.time())

    original_call_at = loop.call_at

    def call_at(when: float, callback: object, *args: object, context: object = None) -> asyncio.TimerHandle:
        if callback == wake_next:
            fired[0] += 1
        return original_call_at(when, callback, *args, context=context)  # type: ignore[arg-type]

    loop.call_at = call_at  # type: ignore[method-assign]  # counts the limiter's timers
    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(task)
    return times, fired[0]


@pytest.mark.parametrize(("rate", "burst"), [(900.0, 3), (7.0, 2), (0.5, 1)])
def test_on_asyncios_loop_a_bucket_admits_when_aiolimiter_does(rate: float, burst: int) -> None:
    plain, _ = run_virtual(partial(_admissions, AsyncLimiter(burst, burst / rate), 40, 8))
    ours, _ = run_virtual(partial(_admissions, Bucket(burst, burst / rate), 40, 8))
    assert len(ours) == len(plain) == 40
    assert max(abs(a - b) for a, b in zip(ours, plain, strict=True)) < 1e-6
    loop = asyncio.new_event_loop()
    assert tick_of(loop) < 1e-6  # asyncio's own clock resolution, not uvloop's 1 ms
    loop.close()


def _on_ms_clock(limiter: AsyncLimiter, n: int) -> tuple[list[float], int, int]:
    loop = _MillisecondLoop()
    times, armed = anyio.run(partial(_admissions, limiter, n, 8), backend_options={"loop_factory": lambda: loop})
    return times, armed, loop.turns


def test_on_a_clock_in_whole_ms_a_bucket_arms_its_timer_a_few_times_per_request() -> None:
    # 1/R = 1.11 ms: aiolimiter armed a 0 ms timer every loop turn until the clock ticked
    n, rate = 300, 900.0
    times, armed, turns = _on_ms_clock(Bucket(3, 3 / rate), n)
    assert len(times) == n
    assert armed <= 4 * n and turns <= 4 * n
    times.sort()
    # a bucket of 3: at most 3 at once, then one per 1/R (4 within less than 1/R: none)
    assert all(b - a >= 1 / rate - 1e-6 for a, b in zip(times, times[3:], strict=False))
    _, armed, turns = _on_ms_clock(AsyncLimiter(3, 3 / rate), n)
    assert armed > 10 * n and turns > 10 * n  # the busy loop this module exists to prevent
    assert MS == 0.001
