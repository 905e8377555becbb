"""Does a lane's limiter busy-spin on uvloop? A short check, not a test (it measures wall time).

``.venv/bin/python -m benchmarks.limiter_spin [--before] [--rates 300,900,...] [--seconds 3]``

For each rate R: 64 tasks take a :class:`bulk._pacing.lane.Lane` at R in a loop for a few
seconds on uvloop, with no server and nothing else to do, and it prints the limiter's
``_wake_next`` calls per request after the first burst (a busy loop re-arms a 0 ms timer every loop turn: tens per
request), the CPU per 1,000 requests, the achieved rate after the first burst (requests/s and
/ R: on a loaded machine a stall longer than burst / R loses slots) and the worst window on
the loop's clock (the bucket's reading at each admission): the most requests in any window of length t
beyond R x t + burst (0 or below: the bucket held). ``--before`` puts back the plain
:class:`aiolimiter.AsyncLimiter` (same capacity and rate) that lanes used before
:class:`bulk._pacing.bucket.Bucket`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import uvloop
from aiolimiter import AsyncLimiter

from bulk._pacing.lane import Lane

RATES = (300.0, 900.0, 1000.0, 1500.0, 3000.0, 7.0, 0.5)
WORKERS = 64


def worst_window(times: list[float], rate: float, burst: int) -> float:
    """max over i <= j of (j - i + 1) - rate x (t_j - t_i) - burst, in one pass."""
    best, low = float("-inf"), float("inf")
    for j, t in enumerate(sorted(times)):
        low = min(low, j - rate * t)
        best = max(best, j - rate * t - low + 1 - burst)
    return best


async def measure(rate: float, seconds: float, before: bool) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    lane = Lane(rate)
    if before:
        lane.limiter = AsyncLimiter(lane.limiter.max_rate, lane.limiter.time_period)
    cls = type(lane.limiter)
    calls = [0]
    wake_next = cls._wake_next

    def counted(self: AsyncLimiter, *args: object) -> None:
        calls[0] += 1
        wake_next(self, *args)

    admitted = [0.0]
    has_capacity = cls.has_capacity

    def admits(self: AsyncLimiter, amount: float = 1) -> bool:
        if ok := has_capacity(self, amount):  # acquire's last check before it takes the capacity
            admitted[0] = self._last_check
        return ok

    # counting and timing, for this check only
    cls._wake_next, cls.has_capacity = counted, admits  # type: ignore[method-assign]
    loop_times: list[float] = []
    wall: list[float] = []
    wakes: list[int] = []  # _wake_next calls so far, at each admission

    async def worker() -> None:
        while True:
            await lane.acquire(loop.time())
            # the bucket's clock reading at admission (a fresh loop.time() may be a ms later)
            loop_times.append(admitted[0])
            wall.append(time.perf_counter())
            wakes.append(calls[0])

    cpu = time.process_time()
    try:
        async with asyncio.timeout(seconds), asyncio.TaskGroup() as tg:
            for _ in range(WORKERS):
                tg.create_task(worker())
    except TimeoutError:
        pass
    finally:
        cls._wake_next, cls.has_capacity = wake_next, has_capacity  # type: ignore[method-assign]
    cpu = time.process_time() - cpu
    n, k = len(wall), lane.burst
    if n <= k + 1 or wall[-1] <= wall[k]:
        raise SystemExit(f"R={rate:g}: too few requests in {seconds:g} s")
    # after the first burst: not the tasks' first queueing nor their cancellation at the end
    steady = (n - 1 - k) / (wall[-1] - wall[k])
    return {"rate": rate, "n": n, "wake": (wakes[-1] - wakes[k]) / (n - 1 - k), "cpu_per_1000": cpu / n * 1000,
            "steady": steady, "share": steady / rate, "excess": worst_window(loop_times, rate, k)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", action="store_true", help="plain aiolimiter.AsyncLimiter, as before Bucket")
    p.add_argument("--rates", default=",".join(f"{r:g}" for r in RATES))
    p.add_argument("--seconds", type=float, default=3.0, help="per rate (at least 4 requests' worth)")
    a = p.parse_args()
    print(f"{'before (AsyncLimiter)' if a.before else 'after (Bucket)'} on uvloop {uvloop.__version__}, "
          f"{WORKERS} tasks, no server")
    for rate in (float(r) for r in a.rates.split(",")):
        seconds = max(a.seconds, 4 / rate)
        r = uvloop.run(measure(rate, seconds, a.before))
        print(f"R={rate:g}: {r['n']} requests in {seconds:g} s, {r['wake']:.1f} wake-ups/request, "
              f"CPU {r['cpu_per_1000']:.3f} s/1,000 requests, {r['steady']:.1f}/s ({r['share']:.4f} R), "
              f"worst window {r['excess']:+.6f} requests beyond R t + burst", flush=True)


if __name__ == "__main__":
    main()
