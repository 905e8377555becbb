"""Where the pacer's rate settles under a steady share of sporadic 429s (bulk/_pacing/lane.py).

On the virtual clock (:func:`bulk.testing.run_virtual`): a server that answers every ``m``-th
new request 429 (``Retry-After: 1``) whatever the pace, the share ``f = 1 / m`` that a small
bucket's phase and jitter artefacts give (``f = 1 / (m + 1)`` of the answers, with the resends).
Each 429 takes its share of a climb step's answers off the rate and the rate climbs back
``CLIMB`` x R per ``CLIMB_EVERY``, so it settles at ``R x CLIMB / f``: R while under ``CLIMB``
of the answers are 429s, and the same share of R at every R from 200/s on (a multiplicative
cut per 429 settled at ``sqrt(2 R / f)``: 0.63 R at R = 1,000 for f = 0.5%, and the lower the
higher R). Under 200/s a climb step holds fewer than ``SAMPLE`` answers, a 429 is taken as one
of ``SAMPLE``, and a larger share keeps the full rate (at R = 20: up to 20%).
"""

from __future__ import annotations

import anyio
import pytest
from test_pacer import now

from bulk.pacing import CLIMB, SAMPLE, Pacer, pace_for, sample_for
from bulk.testing import run_virtual


def settled(rate: float, every: int, seconds: float, warm: float) -> tuple[float, float]:
    """Requests at ``rate`` for ``seconds`` with every ``every``-th new one answered 429: the
    pacer's mean asked rate and the mean sent rate after the first ``warm`` s, both / R."""
    async def go() -> tuple[float, float]:
        p = Pacer(limits={"write": rate}, concurrency=64, give_up_after=600, max_wait=30)
        lane = p.lane("write")
        assert lane is not None
        asked: list[float] = []
        sent: list[float] = []
        count = [0]
        start = now()
        half = start + warm

        async def worker() -> None:
            while now() < start + seconds:
                count[0] += 1
                refuse = count[0] % every == 0
                while True:
                    async with p.slot("write") as sent_at:
                        if half <= sent_at < start + seconds:  # not the queue let go at the end
                            sent.append(sent_at)
                        await anyio.sleep(0.001)  # the answer's round trip
                    if not refuse:
                        p.ok()
                        break
                    refuse = False  # the resend passes
                    if wait := p.throttled(1.0, "write", sent_at):
                        await anyio.sleep(wait)

        async def sample() -> None:
            while now() < start + seconds:
                await anyio.sleep(0.05)
                if now() >= half:
                    asked.append(lane.weight_at(now()) and lane.current_rate)

        async with anyio.create_task_group() as tg:
            tg.start_soon(sample)
            for _ in range(64):
                tg.start_soon(worker)
        return sum(asked) / len(asked) / rate, len(sent) / (seconds - warm) / rate

    return run_virtual(go)


@pytest.mark.parametrize("rate", [20.0, 200.0, 1000.0])
def test_a_share_of_429s_under_climb_keeps_the_full_rate(rate: float) -> None:
    asked, sent = settled(rate, 100, *((30.0, 15.0) if rate < 200 else (6.0, 3.0)))  # f = 1%, half of CLIMB
    assert 0.97 <= asked <= pace_for(rate) / rate + 1e-9  # never above the pace
    assert sent >= 0.97


@pytest.mark.parametrize("rate", [200.0, 1000.0])
@pytest.mark.parametrize("every", [10, 20])
def test_a_larger_share_settles_at_climb_over_the_share_at_every_rate(rate: float, every: int) -> None:
    # f = 1/11, 1/21: R x CLIMB / f = 0.22 R, 0.42 R, within 1 / (f x R / sample_for(R)) s per e-fold
    asked, sent = settled(rate, every, 10.0, 6.0)
    assert asked == pytest.approx(CLIMB * (every + 1), rel=0.12)
    assert sent == pytest.approx(asked, rel=0.05)  # what it asks for is what it sends


def test_under_200_per_second_a_429_is_one_of_sample_answers() -> None:
    assert sample_for(20.0) == sample_for(200.0) == SAMPLE
    asked, _ = settled(20.0, 10, 30.0, 15.0)  # f = 1/11: under CLIMB x SAMPLE / (R x CLIMB_EVERY) = 20%
    assert asked >= 0.97
