"""bulk/_pacing/bucket.py: on asyncio's own loop a Bucket admits when aiolimiter does, and on a
clock in whole ms it wakes once per admission instead of once per loop turn (virtual clock:
:func:`bulk.testing.run_virtual`; nothing depends on the machine's speed)."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import inspect
import textwrap
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


def _code_digest(function: object) -> str:
    """A digest of a function's code, docstring and comments left out (ast drops comments)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))  # type: ignore[arg-type]
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:16]


#: aiolimiter's code that Bucket depends on (1.3.0): _wake_next is copied by Bucket._wake_next,
#: and give_back / resized rely on what _leak, has_capacity and acquire do with _level and
#: _last_check. A new aiolimiter that changes any of them fails here: re-read bulk/_pacing/bucket.py
#: against it, then update the digests (and pyproject.toml's pin).
_AIOLIMITER_CODE = {
    "__init__": "2b150a4fdd98794b",
    "_leak": "1f998f82e9c7d1a6",
    "has_capacity": "38c1fc312cbff6e6",
    "acquire": "eeab621b4d688a10",
    "_wake_next": "0a0a724b7818b718",
}


def test_the_aiolimiter_internals_bucket_uses_are_the_ones_it_was_written_against() -> None:
    assert {"_level", "_last_check", "_rate_per_sec", "_waiters", "_waker_handle"} <= set(AsyncLimiter.__slots__)
    assert {name: _code_digest(getattr(AsyncLimiter, name)) for name in _AIOLIMITER_CODE} == _AIOLIMITER_CODE


def test_give_back_and_resized_keep_the_level_that_has_capacity_sees() -> None:
    # The private state Bucket writes, checked through aiolimiter's public has_capacity, on a
    # clock that does not move meanwhile (nothing leaks between the steps).
    async def main() -> list[bool]:
        bucket = Bucket(4.0, 4.0 / 1000.0)
        for _ in range(3):
            await bucket.acquire()
        seen = [bucket.has_capacity(1), bucket.has_capacity(1.5)]  # level 3 of 4
        bucket.give_back(2)
        seen += [bucket.has_capacity(3), bucket.has_capacity(3.5)]  # level 1
        bucket.give_back(5)
        seen.append(bucket.has_capacity(4))  # never under empty
        await bucket.acquire(3)
        smaller = bucket.resized(2.0)
        seen += [smaller.max_rate == 2.0, abs(smaller.time_period - 0.002) < 1e-12]
        seen += [smaller.has_capacity(0), smaller.has_capacity(0.5)]  # as full as it can be: 2 of 2
        return seen

    assert run_virtual(main) == [True, False, True, False, True, True, True, True, False]
