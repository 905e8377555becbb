"""A 429 lowers a lane's burst (bulk/_pacing/lane.py, Lane.shrink), on the virtual clock.

After a stall of the client's loop a lane lets its burst go at one instant; a server whose
bucket is small, and which counts a few ms of our sends at one clock reading, answers the
excess 429. Each 429 (one per bunch) takes one request off the burst, down to MIN_BURST.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import cast

import anyio
from test_pacer import send_all

from bulk._pacing.lane import MIN_BURST, Lane, burst_for
from bulk.pacing import Pacer
from bulk.testing import VirtualLoop, run_virtual


def test_a_429_takes_one_off_the_burst_once_per_bunch_down_to_the_floor() -> None:
    lane = Lane(1000.0)
    assert lane.burst == burst_for(1000.0) == 4
    pace = lane.limiter._rate_per_sec
    lane.shrink(sent_at=10.0, now=10.001)
    assert lane.burst == 3 and lane.limiter.max_rate < 3.001
    assert abs(lane.limiter._rate_per_sec - pace) < 1e-9  # the same pace, a smaller bucket
    lane.shrink(sent_at=10.0005, now=10.002)  # sent before that shrink: the same bunch
    assert lane.burst == 3
    lane.shrink(sent_at=10.001, now=10.003)
    lane.shrink(sent_at=10.003, now=10.004)
    assert lane.burst == MIN_BURST == 2
    one = Lane(1.0)
    one.shrink(sent_at=10.0, now=10.5)
    assert one.burst == 1


def test_after_two_429s_a_stalled_loop_catches_up_no_more_than_the_floor_at_once() -> None:
    # 1,000/s, 64 workers, answers after 1 ms; the client's loop stalls 8 ms every 20 ms, so
    # each stall ends with the lane's burst leaving at one instant. Requests 300 and 900 are
    # answered 429 (Retry-After 1 s) once each: from the second on, at most 2 go at once.
    throttled_at: list[float] = []

    def on_send(i: int, sent_at: float) -> float | None:
        if i in (300, 900) and i not in seen:
            seen.add(i)
            throttled_at.append(anyio.current_time())
            return 1.0
        return None

    seen: set[int] = set()

    async def go() -> list[float]:
        loop = cast(VirtualLoop, asyncio.get_running_loop())
        p = Pacer(limits={"write": 1000.0}, concurrency=64, give_up_after=600, max_wait=30)
        done = False

        async def staller() -> None:
            while not done:
                await anyio.sleep(0.020)
                loop.clock[0] += 0.008  # the loop is busy for 8 ms

        async with anyio.create_task_group() as tg:
            tg.start_soon(staller)
            times = await send_all(p, 2000, 64, on_send=on_send)
            done = True
        return times

    times = run_virtual(go)
    assert len(throttled_at) == 2
    # One instant: within 10 us (each turn of the virtual loop moves its clock by 1 ns).
    before = Counter(round(t, 5) for t in times if t < throttled_at[0])
    after = Counter(round(t, 5) for t in times if t > throttled_at[1])
    assert max(before.values()) == 4  # the stalls do bunch the full burst before any 429
    assert max(after.values()) == MIN_BURST
