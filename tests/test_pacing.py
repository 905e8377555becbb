"""Pacing rules that do not need a server: Retry-After forms, quota stop, health stop."""

from __future__ import annotations

import time
from email.utils import formatdate

import anyio
import pytest

from bulk.errors import ApiUnavailable, QuotaExhausted
from bulk.pacing import Backoff, Pacer, parse_retry_after


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0.0), ("3", 3.0), ("2.5", 2.5), ("-4", 0.0), ("", None), (None, None), ("soon", None)],
)
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_retry_after_http_date() -> None:
    now = time.time()
    value = formatdate(now + 120, usegmt=True)
    got = parse_retry_after(value, now=now)
    assert got is not None and 118 <= got <= 121
    assert parse_retry_after(formatdate(now - 50, usegmt=True), now=now) == 0.0


def test_long_retry_after_stops_the_run_resumably() -> None:
    async def go() -> None:
        pacer = Pacer(limits={}, concurrency=1, give_up_after=60, max_wait=30)
        pacer.throttled(5)  # fine: pauses
        with pytest.raises(QuotaExhausted) as info:
            pacer.throttled(3600)
        assert "resume after" in str(info.value) and "with the same command" in str(info.value)
        assert info.value.resume_at

    anyio.run(go)


def test_throttle_pauses_every_worker() -> None:
    async def go() -> list[float]:
        pacer = Pacer(limits={}, concurrency=4, give_up_after=60, max_wait=30)
        starts: list[float] = []
        t0 = time.monotonic()
        pacer.throttled(0.3)

        async def one() -> None:
            async with pacer.slot("write"):
                starts.append(time.monotonic() - t0)

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(one)
        return starts

    starts = anyio.run(go)
    assert len(starts) == 4 and min(starts) >= 0.29


def test_health_stops_after_silence() -> None:
    pacer_holder: list[Pacer] = []

    async def go() -> None:
        # a 2 s budget: far longer than a loaded machine's stall between two plain calls
        pacer = Pacer(limits={}, concurrency=1, give_up_after=2.0, max_wait=30)
        pacer_holder.append(pacer)
        pacer.failed("HTTP 500: boom")  # within budget: no raise
        await anyio.sleep(2.1)
        with pytest.raises(ApiUnavailable, match="HTTP 500: boom"):
            pacer.failed("HTTP 500: boom")
        pacer.ok()
        pacer.failed("HTTP 500: again")  # a success resets the clock

    anyio.run(go)


def test_backoff_is_bounded_and_jittered() -> None:
    b = Backoff(base=0.1, cap=1.0)
    delays = [b.delay(n) for n in range(1, 12) for _ in range(20)]
    assert all(0 <= d <= 1.0 for d in delays)
    assert len({round(d, 6) for d in delays}) > 50
