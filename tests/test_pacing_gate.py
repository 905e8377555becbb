"""The pacer's in-flight gate (bulk/_pacing/gate.py): first come first served, resizable, and
no place lost to a cancelled waiter."""

from __future__ import annotations

import asyncio

import anyio

from bulk._pacing.gate import Gate


async def _settle() -> None:
    for _ in range(5):  # let every woken task run to its next await
        await asyncio.sleep(0)


def test_waiters_enter_in_order_as_places_come_back_and_a_shrink_waits_for_holders() -> None:
    async def go() -> None:
        gate = Gate(2)
        order: list[int] = []

        async def enter(i: int) -> None:
            await gate.enter()
            order.append(i)

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(enter, i)
            await _settle()
            assert order == [0, 1] and gate.held == 2 and len(gate.waiters) == 3
            gate.leave()
            await _settle()
            assert order == [0, 1, 2]
            gate.resize(1)  # a shrink: the two holders keep their places, nobody new enters
            gate.leave()
            await _settle()
            assert order == [0, 1, 2] and gate.held == 1
            gate.resize(3)  # room for two more at once
            await _settle()
            assert order == [0, 1, 2, 3, 4] and gate.held == 3 and not gate.waiters

    anyio.run(go)


def test_a_cancelled_waiter_takes_no_place_and_a_cancel_after_admission_gives_it_back() -> None:
    async def go() -> None:
        gate = Gate(1)
        await gate.enter()
        entered: list[str] = []

        async def enter(name: str) -> None:
            await gate.enter()
            entered.append(name)

        async with anyio.create_task_group() as tg:
            tg.start_soon(enter, "second")
            scope = anyio.CancelScope()

            async def cancellable() -> None:
                with scope:
                    await enter("cancelled")

            tg.start_soon(cancellable)
            tg.start_soon(enter, "third")
            await _settle()
            assert len(gate.waiters) == 3
            scope.cancel()  # the middle waiter goes before any place came back
            await _settle()
            assert len(gate.waiters) == 2 and gate.held == 1
            gate.leave()
            await _settle()
            gate.leave()
            await _settle()
            assert entered == ["second", "third"] and gate.held == 1

        # Admitted (its place taken on its behalf) and cancelled before it ran: the place comes back.
        gate = Gate(1)
        await gate.enter()
        task = asyncio.ensure_future(gate.enter())
        await _settle()
        gate.leave()  # admits the waiter: held stays 1, on its behalf
        assert gate.held == 1
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert gate.held == 0 and not gate.waiters

    anyio.run(go)
