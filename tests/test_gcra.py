"""The GCRA limiter behind --rate / --limit, on a fake clock: exact spacing, bounded bursts."""

from __future__ import annotations

import time

import anyio
import pytest

from bulk.pacing import Gcra, Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def send_times(limiter: Gcra, clock: Clock, n: int) -> list[float]:
    """When n requests, each sent as soon as allowed, go out."""
    out = []
    for _ in range(n):
        clock.now += limiter.reserve()
        out.append(clock.now)
    return out


def test_requests_are_spaced_exactly_one_over_rate() -> None:
    clock = Clock()
    times = send_times(Gcra(4.0, clock=clock), clock, 9)
    assert [t - times[0] for t in times] == pytest.approx([i * 0.25 for i in range(9)])


def test_a_burst_goes_at_once_then_the_rate_holds() -> None:
    clock = Clock()
    limiter = Gcra(100.0, burst=5, clock=clock)
    times = send_times(limiter, clock, 105)
    assert times[:5] == [1000.0] * 5  # the burst allowance
    assert times[5] == pytest.approx(1000.01)
    # over any window the count never exceeds rate * window + burst
    assert times[-1] - times[0] == pytest.approx(1.0)


def test_idle_time_is_not_banked_beyond_the_burst() -> None:
    clock = Clock()
    limiter = Gcra(10.0, burst=2, clock=clock)
    send_times(limiter, clock, 3)
    clock.now += 60  # a minute of silence
    back = clock.now
    times = send_times(limiter, clock, 4)
    assert times[0] == times[1] == back  # two at once...
    assert times[2] - times[1] == pytest.approx(0.1)  # ...then the rate again


def test_pacer_holds_the_rate_over_real_time() -> None:
    async def go() -> float:
        pacer = Pacer(limits={"write": 200.0}, concurrency=8, give_up_after=60, max_wait=30)
        t0 = time.monotonic()

        async def one() -> None:
            for _ in range(25):
                async with pacer.slot("write"):
                    pass

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(one)
        return time.monotonic() - t0

    elapsed = anyio.run(go)
    # 200 requests at 200/s with a 10-request burst: ~0.95 s, never faster
    assert 0.9 <= elapsed < 1.5
