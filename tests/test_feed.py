"""bulk.feed.Feed: the producer -> workers hand-off (order, bound, hysteresis, close, cancel)."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest
from anyio import EndOfStream

from bulk.feed import Feed


def test_every_item_once_in_order_then_end_of_stream() -> None:
    async def go() -> list[list[int]]:
        feed: Feed[int] = Feed(4)
        got: list[list[int]] = [[], [], []]

        async def produce() -> None:
            try:
                for i in range(100):
                    await feed.put(i)
            finally:
                feed.close()

        async def work(k: int) -> None:
            while True:
                try:
                    got[k].append(await feed.get())
                except EndOfStream:
                    return
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            for k in range(3):
                tg.start_soon(work, k)
        return got

    got = anyio.run(go)
    assert sorted(i for part in got for i in part) == list(range(100))
    assert all(part == sorted(part) for part in got)  # each worker sees the feed's order
    assert all(part for part in got)


def test_the_producer_waits_when_full_and_wakes_at_the_low_mark() -> None:
    async def go() -> list[tuple[str, int]]:
        feed: Feed[int] = Feed(4, low=1)
        log: list[tuple[str, int]] = []

        async def produce() -> None:
            for i in range(6):
                await feed.put(i)
                log.append(("put", len(feed)))
            feed.close()

        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            await anyio.sleep(0.05)
            assert len(feed) == 4  # bounded: the producer is waiting
            for _ in range(2):
                log.append(("got", await feed.get()))
            await anyio.sleep(0.05)
            assert len(feed) == 2  # above the low mark: still waiting
            log.append(("got", await feed.get()))
            await anyio.sleep(0.05)
            assert len(feed) == 3  # drained to 1: the producer refilled in one go (2 puts left)
            while True:
                try:
                    log.append(("got", await feed.get()))
                except EndOfStream:
                    break
        return log

    log = anyio.run(go)
    assert [v for k, v in log if k == "got"] == list(range(6))


def test_a_cancelled_waiter_does_not_strand_an_item() -> None:
    async def go() -> int:
        feed: Feed[int] = Feed(4)
        result: list[int] = []

        async def waiter(scope_holder: list[anyio.CancelScope]) -> None:
            with anyio.CancelScope() as scope:
                scope_holder.append(scope)
                await feed.get()

        async def patient() -> None:
            result.append(await feed.get())

        holder: list[anyio.CancelScope] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter, holder)
            await anyio.sleep(0.01)
            tg.start_soon(patient)
            await anyio.sleep(0.01)
            holder[0].cancel()  # the first waiter leaves...
            await anyio.sleep(0.01)
            await feed.put(7)  # ...so the item goes to the next one, not to a waiter that is gone
        return result[0]

    assert anyio.run(go) == 7


def test_put_after_close_is_refused() -> None:
    async def go() -> None:
        feed: Feed[int] = Feed(2)
        feed.close()
        with pytest.raises(anyio.ClosedResourceError):
            await feed.put(1)
        with pytest.raises(EndOfStream):
            await feed.get()

    anyio.run(go)
