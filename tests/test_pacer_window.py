"""The in-flight window after an isolated 429 in a paced run (bulk/_pacing/window.py), on the
virtual clock: it never narrows below the lanes' burst, so a jitter 429 costs the lane's small
cut, not the rate a halved window allows."""

from __future__ import annotations

import anyio
from test_pacer import once_at, peak_in_flight, send_all

from bulk.pacing import CLIMB_EVERY, Pacer
from bulk.testing import run_virtual


def now() -> float:
    return anyio.current_time()


def test_an_isolated_429_at_1000_per_s_keeps_the_pace_the_window_needs() -> None:
    # 1,000/s with answers after 3 ms: 4 in flight are needed (the lane's burst is 4). One 429
    # in flight halving the window to 2 capped the rate at 2 per 3 ms (0.67 R) until the
    # window grew back; the lane's own cut is 1% of R, climbing back within ~50 ms.
    cut: list[float] = []
    peak = [0]

    async def go() -> list[float]:
        p = Pacer(limits={"write": 1000.0}, concurrency=64, give_up_after=600, max_wait=30)
        inflight = [0]

        async def answer() -> None:
            inflight[0] += 1
            peak[0] = max(peak[0], inflight[0])
            await anyio.sleep(0.003)
            inflight[0] -= 1

        return await send_all(p, 1500, 64, on_send=once_at(500, cut), answer=answer)

    times = run_virtual(go)
    assert cut, "the 429 was given"
    after = [t for t in times if cut[0] <= t < cut[0] + CLIMB_EVERY]
    assert len(after) >= 0.95 * 1000 * CLIMB_EVERY
    assert peak[0] <= 8  # the window still bounds what is in flight


def test_an_unpaced_run_still_halves_what_is_in_flight_after_a_429() -> None:
    # No lane, 16 workers with answers after 10 ms: 16 in flight. A 429 caps them at 8.
    peaks: list[int] = []

    async def go() -> None:
        p = Pacer(limits={}, concurrency=16, give_up_after=600, max_wait=30)
        inflight = [0]
        done = [False]

        async def worker(w: int) -> None:
            for i in todo:
                async with p.slot("write") as sent_at:
                    inflight[0] += 1
                    if done[0]:
                        peaks.append(inflight[0])
                    await anyio.sleep(0.01)
                    inflight[0] -= 1
                if i == 100:
                    p.throttled(1.0, "write", sent_at)  # a new episode: this one waits alone
                    done[0] = True

        todo = iter(range(300))
        async with anyio.create_task_group() as tg:
            for w in range(16):
                tg.start_soon(worker, w)

    run_virtual(go)
    assert peaks and max(peaks[16:]) <= 8


def test_a_paced_window_grown_by_slow_answers_comes_back_down_before_a_stall() -> None:
    # 100/s: answers after 50 ms for the first 2 s (6 in flight needed: the window grows to
    # them), then after 1 ms; the server stalls from 4.0 s to 4.3 s and answers what it took
    # meanwhile at once. A window left at its peak let the pace send ~6 into the stall.
    during: list[int] = []

    def answer_at(t: float) -> float:
        if 4.0 <= t < 4.3:
            return 4.3
        return t + (0.05 if t < 2.0 else 0.001)

    async def go() -> int:
        p = Pacer(limits={"write": 100.0}, concurrency=64, give_up_after=600, max_wait=30, burst=2)
        inflight, peak = [0], [0]
        start = now()

        async def worker() -> None:
            for _ in todo:
                async with p.slot("write") as sent_at:
                    t = sent_at - start
                    inflight[0] += 1
                    if t < 2.0:
                        peak[0] = max(peak[0], inflight[0])
                    elif 4.0 <= t < 4.3:
                        during.append(inflight[0])
                    await anyio.sleep(answer_at(t) - t)
                    inflight[0] -= 1

        todo = iter(range(500))
        async with anyio.create_task_group() as tg:
            for _ in range(64):
                tg.start_soon(worker)
        return peak[0]

    peak = run_virtual(go)
    assert peak >= 5  # it did grow for the slow answers
    assert during and max(during) <= 3  # and came down to what 1 ms answers need


def test_stalls_of_the_server_do_not_grow_the_window_beyond_what_the_median_round_trip_needs() -> None:
    # 1,000/s (the lane's burst is 4), answers after 1 ms, but the server stalls 15 ms every
    # 100 ms and answers what it took meanwhile at the stall's end (nginx stamps them with one
    # clock reading): each stall fills the window, and a window grown by every answer that came
    # while full reached 20 and more, all sent into the next stall at once. The median round
    # trip (1 ms, to its 5% steps) caps it at 4 + 2 x 1000 x 0.00105, 7 (14 without the cap).
    def answer_at(t: float) -> float:
        into = t % 0.1
        return t - into + 0.015 if into < 0.015 else t + 0.001

    peak, times = peak_in_flight(
        lambda: Pacer(limits={"write": 1000.0}, concurrency=64, give_up_after=600, max_wait=30), answer_at, 1500)
    assert len(times) == 1500
    assert peak <= 7
    # ... and the rate is kept between the stalls: 1,500 requests in their 1.5 s and the stalls'.
    assert max(times) - min(times) <= 1.5 / 0.85
