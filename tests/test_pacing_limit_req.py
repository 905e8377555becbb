"""The pacer against a model of nginx ``limit_req`` (rate R, ``burst=5 nodelay``) on uvloop's
clock (whole ms, timers rounded to the ms: ``_MillisecondLoop``), the issue 11 setting at
R = 1,000 (1 / R = the clock's tick), on the virtual clock: nothing depends on the machine.

What the pacer itself gives there: its pace (0.99 R, :func:`bulk.pacing.pace_for`) with no
429, and after a stall of the client's loop of ``T`` s, the whole burst at once: a stall costs
``T x R + 1`` slots less the burst, no more. So what keeps a real run under 0.97 R is the
stalls (and a 429's Retry-After at the run's end), not the spacing or the clock's rounding.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from typing import cast

import anyio
import pytest
from test_pacer import send_all
from test_pacer_compose import _MillisecondLoop

from bulk.pacing import Pacer, burst_for, pace_for


class LimitReq:
    """nginx's ``ngx_http_limit_req_lookup`` for one key: ``excess`` in thousandths of a request,
    drained at ``rate`` per ms elapsed on nginx's ms clock; a request that would take it over
    ``burst`` is refused (429) and changes nothing."""

    def __init__(self, rate: float, burst: int = 5) -> None:
        self.rate, self.burst = int(rate * 1000), burst * 1000
        self.excess, self.last = 0, 0
        self.accepted: list[float] = []
        self.refused = 0

    def take(self, at: float) -> bool:
        ms = math.floor(at * 1000 + 1e-6)
        excess = max(self.excess - self.rate * (ms - self.last) // 1000 + 1000, 0) if self.accepted else 1000
        if excess > self.burst:
            self.refused += 1
            return False
        self.excess, self.last = excess, ms
        self.accepted.append(ms / 1000)
        return True

    @property
    def achieved(self) -> float:
        """Accepted requests per second, first to last accepted (as benchmarks/run.py reads nginx's log)."""
        a = self.accepted
        return (len(a) - 1) / (a[-1] - a[0])


def _run(rate: float, n: int, stall: float = 0.0, every: float = 0.2) -> tuple[LimitReq, list[float], list[float]]:
    """n requests at ``--rate rate`` (64 workers, answers after 1 ms) to a LimitReq; the loop
    stalls ``stall`` s every ``every`` s. Returns the server, the send times, the stalls' ends."""
    server = LimitReq(rate)
    stalls: list[float] = []

    async def go() -> list[float]:
        loop = cast(_MillisecondLoop, asyncio.get_running_loop())
        pacer = Pacer(limits={"*": rate}, concurrency=64, give_up_after=600, max_wait=30)
        done = False

        async def staller() -> None:
            while not done:
                await anyio.sleep(every)
                loop.clock[0] += stall  # the loop is busy (or the process descheduled) meanwhile
                stalls.append(loop.time())

        async with anyio.create_task_group() as tg:
            if stall:
                tg.start_soon(staller)
            times = await send_all(pacer, n, 64, on_send=lambda i, sent_at: None if server.take(sent_at) else 1.0)
            done = True
        return times

    times = anyio.run(go, backend_options={"loop_factory": _MillisecondLoop})
    return server, times, stalls


@pytest.mark.parametrize("rate", [1000.0, 200.0])
def test_on_uvloops_clock_the_pacer_keeps_its_pace_at_limit_req_without_a_429(rate: float) -> None:
    server, _, _ = _run(rate, int(3 * rate))
    assert server.refused == 0
    assert server.achieved >= 0.995 * pace_for(rate)  # 0.99 R at 1,000/s: a tick skipped per 100


def test_after_a_stall_the_whole_burst_goes_at_once_so_a_stall_costs_its_length_less_the_burst() -> None:
    rate, stall, every = 1000.0, 0.020, 0.200
    server, times, stalls = _run(rate, 3000, stall, every)
    burst = burst_for(rate)
    assert server.refused == 0
    at_once = Counter(round(t, 6) for t in times)
    assert stalls and all(at_once[round(end, 6)] == burst for end in stalls[:-1])
    # per cycle of every + stall s: (stall x R + 1 - burst) slots lost, the rest at the pace
    lost = (stall * rate + 1 - burst) / ((every + stall) * rate)
    assert server.achieved >= pace_for(rate) * (1 - lost) * 0.99
