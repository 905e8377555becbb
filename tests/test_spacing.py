"""bulk.spacing: KeySpacer (at most ``limit`` requests of a key per window, counted from
completion) and QuotaGate (requests in flight within the quota left), in one process and
shared by a job's processes (bulk._quotashare)."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from bulk.errors import OutputError
from bulk.spacing import KeySpacer


def test_a_key_over_its_limit_waits_a_window_after_a_completion_and_other_keys_do_not() -> None:
    window = 2.0  # far longer than a stall of a loaded machine between the steps below
    events: list[tuple[str, str, float]] = []

    b_done = anyio.Event()

    async def request(spacer: KeySpacer, key: str, name: str, hold: anyio.Event | None = None) -> None:
        async with spacer.slot(key):
            events.append((name, "enter", time.monotonic()))
            if hold is not None:
                await hold.wait()
            # Read inside the slot, so it is never later than the completion the spacer marks on
            # leaving: a reading taken after the block can be late by however long the process
            # was descheduled in between (5 ms seen under a loaded fresh-clone run).
            events.append((name, "exit", time.monotonic()))
        if name == "b1":
            b_done.set()

    async def main() -> int:
        spacer = KeySpacer(2, window=window)
        release = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(request, spacer, "A", "a1")
            tg.start_soon(request, spacer, "A", "a2", release)
            await anyio.lowlevel.checkpoint()
            tg.start_soon(request, spacer, "A", "a3")
            tg.start_soon(request, spacer, "B", "b1")
            await b_done.wait()
            assert not any(e[0] == "a3" for e in events), events  # B passed while A's third waits
            release.set()
        return len(spacer)

    left = anyio.run(main)
    at = {(name, what): t for name, what, t in events}
    first_exit = min(at[("a1", "exit")], at[("a2", "exit")])
    assert at[("a3", "enter")] >= first_exit + window - 1e-6  # from a completion (1e-6: float rounding)
    assert at[("b1", "enter")] < at[("a3", "enter")]
    assert left > 0  # keys in their window are still tracked...


def test_idle_keys_are_dropped_and_a_zero_limit_never_waits() -> None:
    async def main() -> tuple[int, int]:
        held = KeySpacer(1, window=3600)  # no token comes back during the test, however slow it is
        for k in range(50):
            async with held.slot(k):
                pass
        busy = len(held)
        spacer = KeySpacer(1, window=0.01)
        for k in range(50):
            async with spacer.slot(k):
                pass
        for _ in range(1000):  # bounded: until every token is back and its key dropped (<= 10 s)
            if not len(spacer):
                break
            await anyio.sleep(0.01)
        off = KeySpacer(0)
        async with off.slot("x"), off.slot("x"):  # the same key twice at once: no wait, no deadlock
            pass
        return busy, len(spacer)

    busy, after = anyio.run(main)
    assert busy == 50 and after == 0


def test_the_quota_gate_waits_for_answers_in_flight_and_stops_only_when_nothing_is_left() -> None:
    class Spent(Exception):
        pass

    async def main() -> list[str]:
        from bulk.spacing import QuotaGate

        gate, log = QuotaGate(), []
        async with gate.slot(Spent), gate.slot(Spent):  # nothing known yet: never waits
            log.append("two at once, no header yet")
        gate.remaining = 1
        answer = anyio.Event()

        sent = anyio.Event()

        async def first() -> None:
            async with gate.slot(Spent):
                log.append("first sent")
                sent.set()
                await answer.wait()
                gate.remaining = 0  # its answer: the quota is used up
            log.append("first answered")

        async def second() -> None:
            try:
                async with gate.slot(Spent):
                    log.append("second sent")
            except Spent:
                log.append("second stopped: quota spent")

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await sent.wait()
            tg.start_soon(second)
            for _ in range(20):  # let the second one run as far as it can
                await anyio.lowlevel.checkpoint()
            log.append("second still waiting" if "second sent" not in log else "second went early")
            answer.set()
        return log

    assert anyio.run(main) == ["two at once, no header yet", "first sent", "second still waiting", "first answered",
                               "second stopped: quota spent"]


def test_the_processes_of_a_job_share_one_quota_count(tmp_path: Path) -> None:
    # Two shard workers' records in the job's quota file (bulk._quotashare): a check and its
    # count are one step across them, what is left is the least of their last answers', and a
    # record whose process is gone counts nothing in flight.
    from bulk import _quotashare

    path = tmp_path / "quota.bin"
    _quotashare.reset(path, 2)
    a, b = _quotashare.QuotaShare(path, 0), _quotashare.QuotaShare(path, 1)
    assert a.remaining() is None
    assert a.enter() == (True, 0) and b.enter() == (True, 1)  # nothing known yet: never waits
    a.leave()
    b.leave()
    a.observe(2)
    assert b.remaining() == 2
    assert a.enter() == (True, 0) and b.enter() == (True, 1)
    assert a.enter() == (False, 2) and b.enter() == (False, 2)  # 2 left, 2 in flight: the job's
    b.observe(5)  # an answer that reached b after a's, but that the server gave before
    assert a.remaining() == 2 and a.enter() == (False, 2)
    b.leave()
    assert a.enter() == (True, 1)
    a.observe(0)
    a.leave()
    a.leave()
    assert b.enter() == (False, 0)  # spent, and nothing in flight: the caller stops

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    _quotashare.reset(path, 2)
    with path.open("r+b") as f:  # a killed worker's record: 3 in flight, 3 left
        f.write(struct.pack("<qqq", int(dead.stdout), 3, 3))
    c = _quotashare.QuotaShare(path, 1)
    assert c.enter() == (True, 0)
    with pytest.raises(OutputError, match=r"quota file .* has no record 2; run the same command again"), \
            _quotashare.bind(path, 2):
        pass
    for share in (a, b, c):
        share.close()
