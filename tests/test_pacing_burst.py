"""429s lower a lane's burst (bulk/_pacing/lane.py, Lane.shrink), on the virtual clock.

After a stall of the client's loop a lane lets its burst go at one instant; a server whose
bucket is small, and which counts a few ms of our sends at one clock reading, answers the
excess 429. Once they are SHRINK_AFTER and SHRINK_SHARE of the answers (one per bunch), the
burst goes down by one, to MIN_BURST at the least; sporadic 429s leave it as it is.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import cast

import anyio
from test_pacer import send_all

from bulk._pacing.lane import MIN_BURST, SHRINK_AFTER, Lane, burst_for
from bulk.pacing import Pacer
from bulk.testing import VirtualLoop, run_virtual


def test_429s_take_one_off_the_burst_once_they_are_a_share_of_the_answers() -> None:
    lane = Lane(1000.0)
    assert lane.burst == burst_for(1000.0) == 4
    pace = lane.limiter._rate_per_sec
    for i in range(9):  # 9 429s in 2,000 answers: sporadic (0.45%)
        lane.shrink(sent_at=10.0 + i / 100, now=10.001 + i / 100, answers=2000)
    assert lane.burst == 4
    lane.shrink(sent_at=10.3, now=10.301, answers=2000)  # the 10th: 0.5% of 2,000 answers
    assert lane.burst == 3 and lane.limiter.max_rate < 3.001
    assert abs(lane.limiter._rate_per_sec - pace) < 1e-9  # the same pace, a smaller bucket
    for _ in range(SHRINK_AFTER):  # sent before that shrink: the same bunch, not counted
        lane.shrink(sent_at=10.3005, now=10.302, answers=2001)
    assert lane.burst == 3
    for i in range(SHRINK_AFTER):
        lane.shrink(sent_at=10.4 + i / 100, now=10.401 + i / 100, answers=2010 + i)
    assert lane.burst == MIN_BURST == 2
    for i in range(SHRINK_AFTER):
        lane.shrink(sent_at=10.5 + i / 100, now=10.501 + i / 100, answers=2020 + i)
    assert lane.burst == 2
    one = Lane(1.0)
    for i in range(SHRINK_AFTER):
        one.shrink(sent_at=10.0 + i, now=10.5 + i, answers=5)
    assert one.burst == 1


def test_after_two_bunches_of_429s_a_stalled_loop_catches_up_no_more_than_the_floor_at_once() -> None:
    # 1,000/s, 64 workers, answers after 1 ms; the client's loop stalls 8 ms every 20 ms, so
    # each stall ends with the lane's burst leaving at one instant. Requests 300-305 and
    # 900-905 are answered 429 (Retry-After 1 s) once each: from the second bunch on, at most
    # 2 go at once. Request 100 alone is sporadic (one 429): it leaves the burst at 4.
    throttled_at: list[float] = []
    bunches = {100, *range(300, 306), *range(900, 906)}

    def on_send(i: int, sent_at: float) -> float | None:
        if i in bunches and i not in seen:
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
    assert len(throttled_at) == len(bunches)
    # One instant: within 10 us (each turn of the virtual loop moves its clock by 1 ns).
    before = Counter(round(t, 5) for t in times if t < throttled_at[1])
    after = Counter(round(t, 5) for t in times if t > throttled_at[-1])
    assert max(before.values()) == 4  # the stalls bunch the full burst, also after a sporadic 429
    assert max(after.values()) == MIN_BURST


def test_a_burst_shrunk_while_acquire_together_waits_makes_it_pass_again_instead_of_raising() -> None:
    # Two lanes at a cut rate (weight 3.5 of a burst of 4); lane b's bucket is full, so the
    # request waits on b. Meanwhile a 429 shrinks lane a to a bucket of 3: the 3.5 computed for
    # a no longer fits it, and aiolimiter raises ValueError for an amount beyond its capacity.
    # acquire_together says "pass again" (False) instead, and the next pass goes through.
    from bulk._pacing.lane import acquire_together

    async def main() -> tuple[bool, bool]:
        a, b = Lane(1000.0), Lane(1000.0)
        for lane in (a, b):
            lane.weight, lane._climb_at = 3.5, float("inf")  # cut, and no climb while we look
        await b.limiter.acquire(b.limiter.max_rate)  # full: the request waits for b to leak
        now = asyncio.get_running_loop().time()
        waiting = asyncio.ensure_future(acquire_together((a, b), now))
        await asyncio.sleep(0)  # it takes a, finds b full, gives a back and waits on b
        for i in range(SHRINK_AFTER):
            a.shrink(sent_at=now + i, now=now + i, answers=0)
        assert a.burst == 3
        first = await asyncio.wait_for(waiting, 5)
        second = await asyncio.wait_for(acquire_together((a, b), asyncio.get_running_loop().time()), 5)
        return first, second

    # the virtual clock: no stall of this process between two steps lets b leak meanwhile
    assert run_virtual(main) == (False, True)


def test_sporadic_429s_leave_the_burst_when_the_concurrency_is_under_it() -> None:
    # 1,000/s (burst 4) with --concurrency 2: the window is not "by demand" (2 <= the burst), and
    # its answers were all the pacer counted, so 0 answers made every third 429 a share of
    # 100% and shrank the burst. Three 429s in 3,000 answers (0.1%) are sporadic: it stays 4.
    sporadic = {1000, 2000, 2900}
    seen: set[int] = set()

    def on_send(i: int, sent_at: float) -> float | None:
        if i in sporadic and i not in seen:
            seen.add(i)
            return 1.0
        return None

    async def go() -> int:
        p = Pacer(limits={"write": 1000.0}, concurrency=2, give_up_after=600, max_wait=30)
        lane = p.lane("write")
        assert lane is not None and lane.burst == 4
        await send_all(p, 3000, 2, on_send=on_send)
        return lane.burst

    assert run_virtual(go) == 4
    assert seen == sporadic


def test_a_lanes_429_share_is_of_its_own_answers_not_the_other_lanes() -> None:
    # Reads at 2,000/s and writes at 1,000/s (both burst 4), two reads per write. Every 100th
    # write is answered 429 once (1% of the writes: twice SHRINK_SHARE), no read ever is. Taken of
    # the run's answers (reads too) the writes' 429s were 0.33%, under SHRINK_SHARE: the write
    # lane never shrank. Of its own answers they are 1%: it shrinks; the read lane stays 4.
    seen: set[int] = set()

    def on_write(i: int, sent_at: float) -> float | None:
        if i % 100 == 99 and i not in seen:
            seen.add(i)
            return 0.01
        return None

    async def go() -> tuple[int, int]:
        p = Pacer(limits={"read": 2000.0, "write": 1000.0}, concurrency=64, give_up_after=600, max_wait=30)
        reads, writes = p.lane("read"), p.lane("write")
        assert reads is not None and writes is not None and reads.burst == writes.burst == 4
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: send_all(p, 4000, 16, kind="read"))
            tg.start_soon(lambda: send_all(p, 2000, 16, kind="write", on_send=on_write))
        return reads.burst, writes.burst

    reads_burst, writes_burst = run_virtual(go)
    assert len(seen) == 20
    assert reads_burst == 4
    assert writes_burst < 4
