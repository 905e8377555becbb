"""The aiolimiter-based pacer (bulk/pacing.py) on a virtual clock, and against a sandbox with a
small bucket.

The unit tests run on :func:`bulk.testing.run_virtual`, an event loop whose clock is virtual
(like aiolimiter's own tests, which drive ``loop.time()``): the selector never blocks, it
advances the clock to the next timer, so every time below is exact and nothing depends on the
machine's speed.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from harness import SandboxServer, assert_exactly_once, cli, summary, upload_args, write_input

from bulk.errors import QuotaExhausted
from bulk.pacing import CLIMB, CLIMB_EVERY, Pacer, burst_for, pace_for, sample_for
from bulk.testing import run_virtual


def now() -> float:
    return asyncio.get_running_loop().time()


async def send_all(pacer: Pacer, n: int, workers: int, *, kind: str = "write",
                   on_send: Callable[[int, float], float | None] | None = None,
                   answer: Callable[[], Awaitable[None]] | None = None) -> list[float]:
    """n requests by ``workers`` workers; ``on_send(i, sent_at)`` may answer 429 (returns its
    Retry-After) and then the request is sent again, as Session.send does. ``answer()`` is a
    request's round trip, in its slot (default: 1 ms). Returns send times."""
    times: list[float] = []
    todo = iter(range(n))

    async def worker() -> None:
        for i in todo:
            while True:
                async with pacer.slot(kind) as sent_at:
                    times.append(sent_at)
                    await (answer() if answer else anyio.sleep(0.001))  # the answer's round trip
                retry_after = on_send(i, sent_at) if on_send else None
                if retry_after is None:
                    pacer.ok()
                    break
                if wait := pacer.throttled(retry_after, kind, sent_at):
                    await anyio.sleep(wait)

    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker)
    return times


def once_at(index: int, cut: list[float]) -> Callable[[int, float], float | None]:
    """An ``on_send`` for :func:`send_all`: request ``index`` is answered 429 (Retry-After 1 s)
    the first time only, and the loop time of that answer goes into ``cut``."""

    def on_send(i: int, sent_at: float) -> float | None:
        if i != index or cut:
            return None
        cut.append(now())
        return 1.0

    return on_send


def pacer(rate: float, **kw: Any) -> Pacer:
    return Pacer(limits={"write": rate}, concurrency=kw.pop("concurrency", 16), give_up_after=600, max_wait=30, **kw)


def at_once(times: list[float]) -> int:
    """The most requests sent at one instant."""
    return max(Counter(round(t, 9) for t in times).values())


def test_requests_are_spaced_evenly_after_at_most_the_burst() -> None:
    async def go() -> list[float]:
        return await send_all(pacer(100.0, burst=3), 40, 16)

    times = run_virtual(go)
    t0 = times[0]
    assert times[:3] == [t0] * 3  # the bucket holds 3
    gaps = [b - a for a, b in itertools.pairwise(times[2:])]
    # then exactly 1 / pace apart: a hair under R (10 us a request), so a server's bucket drains
    assert gaps == pytest.approx([1 / pace_for(100.0)] * len(gaps), abs=1e-6)
    assert at_once(times) == 3


def test_the_burst_is_small_and_one_at_low_rates() -> None:
    assert burst_for(0.5) == burst_for(1.9) == 1  # a server's bucket may hold one request
    assert burst_for(20) == burst_for(200) == 2
    assert 2 <= burst_for(1000) <= 5 and burst_for(1e9) <= 5  # under nginx burst=5


def test_the_pace_is_under_r_by_10_us_a_request_and_at_most_1_percent() -> None:
    assert pace_for(20.0) == pytest.approx(20.0 * (1 - 20e-5))  # 0.02%: its bucket holds 250 ms
    assert pace_for(200.0) == pytest.approx(200.0 * (1 - 200e-5))
    assert pace_for(1000.0) == pytest.approx(990.0) and pace_for(5000.0) == pytest.approx(4950.0)


def test_kind_and_shared_limits_compose() -> None:
    async def go() -> tuple[list[float], list[float]]:
        p = Pacer(limits={"write": 10.0, "*": 20.0}, concurrency=16, give_up_after=600, max_wait=30, burst=1)
        reads: list[float] = []
        async with anyio.create_task_group() as tg:
            async def read_side() -> None:
                reads.extend(await send_all(p, 20, 4, kind="read"))
            tg.start_soon(read_side)
            writes = await send_all(p, 10, 4, kind="write")
        return writes, reads

    writes, reads = run_virtual(go)
    # writes at most 10/s, everything together at most 20/s (one request at a time)
    assert all(b - a >= 0.1 - 1e-6 for a, b in itertools.pairwise(writes))
    both = sorted(writes + reads)
    assert all(b - a >= 0.05 - 1e-6 for a, b in itertools.pairwise(both))


def test_a_429_cuts_the_rate_by_its_share_then_it_climbs_back() -> None:
    seen: list[float] = []
    full = pace_for(100.0)
    step = 100.0 / sample_for(100.0)  # one 429 of the 20 answers a share is taken of: 5/s

    async def go() -> tuple[list[float], float]:
        p = pacer(100.0, burst=1, concurrency=4)

        def answer(i: int, sent_at: float) -> float | None:
            return 1.0 if i == 50 and not seen and not seen.append(sent_at) else None

        times = await send_all(p, 400, 4, on_send=answer)
        return times, p.lane("write").current_rate  # type: ignore[union-attr]

    times, final_rate = run_virtual(go)
    cut = seen[0] + 0.001  # when its answer came
    # slower right after the 429, by its share...
    after = [t for t in times if cut + 0.02 < t < cut + CLIMB_EVERY]
    gaps = [b - a for a, b in itertools.pairwise(after)]
    assert gaps and all(g == pytest.approx(1 / (full - step), abs=1e-6) for g in gaps)
    assert final_rate == full  # ...and back at the full pace
    # climbing in steps of CLIMB x R from CLIMB_EVERY after the cut: back while the throttled
    # request still waits its Retry-After of 1 s (a cut held for the whole Retry-After cost a
    # tenth of R per 429 at nginx's constant Retry-After: 1).
    back = cut + CLIMB_EVERY * (1 + step // (CLIMB * 100.0))
    assert back + 0.05 < cut + 1.0
    late = [t for t in times if t > back + 0.05]
    assert len(late) > 100
    assert all(b - a == pytest.approx(1 / full, abs=1e-6) for a, b in itertools.pairwise(late))
    assert len(times) == 401  # every request sent, the throttled one twice


def test_429s_to_requests_sent_at_the_cut_pace_pause_everyone_then_resume_gradually() -> None:
    answered: list[tuple[int, float]] = []

    async def go() -> tuple[list[float], float]:
        p = pacer(200.0, burst=2, concurrency=32)
        first_cut: list[float] = []

        def answer(i: int, sent_at: float) -> float | None:
            # the server is over its limit for 0.5 s after the first 429, then fine again
            if i == 20 and not first_cut:
                first_cut.append(now())
                return 0.5
            if first_cut and now() < first_cut[0] + 0.5 and len(answered) < 40:
                answered.append((i, sent_at))
                return 0.5
            return None

        times = await send_all(p, 300, 32, on_send=answer)
        return times, first_cut[0]

    times, cut = run_virtual(go)
    # The second 429 to a request sent after the cut (most of their answers 429s: one alone is
    # no majority) paused every worker until its Retry-After...
    sent_late = sorted(s for _, s in answered if s >= cut)
    assert len(sent_late) >= 2, "requests sent after the cut were throttled"
    pause_end = sent_late[1] + 0.001 + 0.5
    assert not [t for t in times if pause_end - 0.499 < t < pause_end - 1e-9]
    # ...and they did not all leave together: never more than the burst at one instant.
    assert at_once([t for t in times if t >= pause_end - 1e-9]) <= 2
    assert len(times) == 300 + len(answered) + 1


def test_requests_already_on_their_way_cut_by_their_share_and_begin_no_episode() -> None:
    async def go() -> tuple[float, float, float]:
        p = pacer(100.0, burst=1)
        async with p.slot("write") as first:
            pass
        async with p.slot("write") as second:
            pass
        assert p.throttled(1.0, "write", second) == 1.0  # a new episode: cut, this request waits
        begun = p._episodes.cut_at
        rate = p.lane("write").current_rate  # type: ignore[union-attr]
        assert p.throttled(1.0, "write", first) == 1.0  # sent before it: its share, it alone waits
        assert not p.paused and p._episodes.cut_at == begun
        return begun, rate, p.lane("write").current_rate  # type: ignore[union-attr]

    _, rate, after = run_virtual(go)
    step = 100.0 / sample_for(100.0)
    assert rate == pytest.approx(pace_for(100.0) - step)
    assert after == pytest.approx(pace_for(100.0) - 2 * step)


def test_in_flight_requests_are_halved_after_a_429() -> None:
    async def go() -> tuple[int, int]:
        p = pacer(1e6, concurrency=16)
        peak = [0, 0]
        inflight = [0]
        throttled: list[float] = []

        async def worker(k: int) -> None:
            for j in range(30):
                async with p.slot("write") as sent_at:
                    inflight[0] += 1
                    if not throttled:
                        peak[0] = max(peak[0], inflight[0])
                    elif throttled[0] + 0.011 < now() < throttled[0] + 0.1:  # once those in flight then are done
                        peak[1] = max(peak[1], inflight[0])
                    await anyio.sleep(0.01)
                    inflight[0] -= 1
                if k == 0 and j == 5 and not throttled:
                    throttled.append(now())
                    p.throttled(0.05, "write", sent_at)

        async with anyio.create_task_group() as tg:
            for k in range(16):
                tg.start_soon(worker, k)
        return peak[0], peak[1]

    before, after = run_virtual(go)
    assert before == 16
    assert after == 7  # half of the 15 still in flight when the 429 came (then +1 per CLIMB_EVERY)


def test_x_ratelimit_remaining_zero_pauses_until_the_reset() -> None:
    async def go() -> tuple[float, float]:
        p = pacer(1000.0)
        async with p.slot("write"):
            pass
        t = now()
        p.observe("write", {"X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "2"})
        async with p.slot("write") as sent_at:
            pass
        p.observe("write", {"X-RateLimit-Remaining": "10", "X-RateLimit-Reset": "5"})  # 10 in 5 s: 2/s
        return sent_at - t, p.lane("write").current_rate  # type: ignore[union-attr]

    waited, rate = run_virtual(go)
    assert waited == pytest.approx(2.0, abs=1e-6)
    assert rate == pytest.approx(2.0)


def test_a_wait_beyond_max_wait_stops_even_for_one_request() -> None:
    async def go() -> None:
        p = pacer(100.0)
        async with p.slot("write") as sent_at:
            pass
        with pytest.raises(QuotaExhausted):
            p.throttled(3600, "write", sent_at)

    run_virtual(go)


# --- against the sandbox: a bucket of 2 at the pacer's own rate ---------------------------------
#
# How many 429s a real run gets here depends on the machine: the server's bucket judges by its
# own clock, so any stall of the client or of the in-process server bunches arrivals (up to
# the --concurrency in flight) and a bucket of 2 refuses the excess, however well the client
# paces. That the pacer never lets more than its burst go at once, even after a pause, is
# asserted exactly above, on the virtual clock. Here: what holds on any machine's speed.

def test_a_small_server_bucket_at_the_pacers_rate_completes_exactly_once_every_429_retried(tmp_path: Path) -> None:
    rate, n = 40.0, 120
    records = write_input(tmp_path / "in.ndjson", n)
    # A few seeded 429s beyond the bucket's, so the accounting below is tested on every run.
    with SandboxServer("agiled", rate_limit=rate, read_rate_limit=rate, burst=2, throttle_rate=0.02, seed=265) as sb:
        out = tmp_path / "out"
        args = upload_args(sb, tmp_path / "in.ndjson", out)
        args[args.index("--rate") + 1] = f"{rate:g}"
        done = cli([*args, "--concurrency", "16"], sb.env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        state = sb.state()["requests"]
        assert_exactly_once(sb, out, records)
    s = summary(out)
    assert (s["records"]["created"], s["records"]["failed"], s["records"]["uncertain"]) == (n, 0, 0), s["records"]
    assert state["total"] > n  # contacts and invoices went through the bucket
    assert state["throttled"] >= 1, state  # seed 265: 6 of the first 145 rolls hit, and every run rolls 145+
    # Every request the server saw was counted by the client, and every 429 it gave was taken
    # as one (and retried: nothing failed): no request outside the pacer's accounting.
    assert s["requests"] == state["total"], (s["requests"], state)
    assert s["throttled"] == state["throttled"] == state["by_status"].get("429", 0), (s["throttled"], state)
    # A 429 costs one resend and nothing else: the successful requests are exactly the job's
    # own (the auth check, a look-up and a create per customer, a create per invoice), so no
    # throttled request was done twice nor given up.
    customers = len({r.customer.external_id for r in records})
    assert state["by_status"].get("200", 0) == 1 + customers, state
    assert state["by_status"].get("201", 0) == customers + n, state
    assert state["total"] == 1 + 2 * customers + n + state["throttled"], state


def peak_in_flight(make: Callable[[], Pacer], answer_at: Callable[[float], float], n: int) -> tuple[int, list[float]]:
    """n requests by 64 workers through the pacer ``make()`` builds; a request sent at t is
    answered at ``answer_at(t)``. Returns the most requests in flight at once, and the send times."""
    async def go() -> tuple[int, list[float]]:
        p = make()
        inflight, peak, times = [0], [0], []

        async def worker() -> None:
            for _ in todo:
                async with p.slot("write") as sent_at:
                    times.append(sent_at)
                    inflight[0] += 1
                    peak[0] = max(peak[0], inflight[0])
                    await anyio.sleep(answer_at(sent_at - 1000.0) - (sent_at - 1000.0))
                    inflight[0] -= 1

        todo = iter(range(n))
        async with anyio.create_task_group() as tg:
            for _ in range(64):
                tg.start_soon(worker)
        return peak[0], times

    return run_virtual(go)


def _peak_in_flight(rate: float, answer_at: Callable[[float], float], n: int) -> tuple[int, list[float]]:
    return peak_in_flight(lambda: pacer(rate, burst=2, concurrency=64), answer_at, n)


def test_in_flight_follows_what_the_pace_needs_so_a_stalled_server_gets_no_batch() -> None:
    # 100/s, answers after 1 ms, but the server stalls from 0.5 s to 0.8 s (what it takes
    # meanwhile it answers at 0.8 s, as nginx stamps a batch with one clock reading): the
    # pace alone would have sent 30 requests into the stall; the window holds them back at
    # what the pace needed before it.
    peak, times = _peak_in_flight(100.0, lambda t: 0.8 if 0.5 <= t < 0.8 else t + 0.001, 200)
    assert peak <= 3
    assert len(times) == 200
    # 100/s with answers after 50 ms: 5 in flight are needed; the window grows to them, and
    # the pace is kept (after the ramp, exactly 1/R apart) without letting all 64 go.
    peak, times = _peak_in_flight(100.0, lambda t: t + 0.05, 300)
    assert 5 <= peak <= 8
    gaps = [b - a for a, b in itertools.pairwise(times[20:])]
    assert gaps == pytest.approx([1 / pace_for(100.0)] * len(gaps), abs=1e-6)
