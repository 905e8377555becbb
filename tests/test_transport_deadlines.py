"""``--timeout`` is kept by one watchdog (bulk._deadlines), with ``asyncio.timeout``'s contract:
a request with no answer in time is a TransportError that may have committed, its task can go on
sending, and a cancellation from outside (a cancel scope, the run stopping) stays a cancellation,
also when it comes together with the watchdog's. Real sockets: a server that reads the request
and never answers (so no timing guess: the request can only end by the deadline or the scope)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import anyio
import pytest

from bulk._deadlines import Deadlines
from bulk.errors import TransportError
from bulk.transport import Request, Transport
from tests.test_transport_boundary import raw_server


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    await asyncio.sleep(60)  # read the request, answer nothing


async def _answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(7)  # the body: {"a":1}
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()


def test_a_request_times_out_after_its_timeout_and_its_task_sends_again() -> None:
    async def go() -> tuple[TransportError, float, int, bool]:
        async with raw_server(_silent) as silent, raw_server(_answering) as answering:
            async with Transport(silent, headers={}, timeout=0.4, connections=4) as t:
                start = time.monotonic()
                with pytest.raises(TransportError) as info:
                    await t.send(Request("POST", "/x", json={"a": 1}))
                took = time.monotonic() - start
                task = asyncio.current_task()
                assert task is not None
                cancelling = task.cancelling()  # the watchdog's cancel was taken back
                left = bool(t._deadlines and t._deadlines.due)
            async with Transport(answering, headers={}, timeout=0.4, connections=4) as t2:
                reply = await t2.send(Request("POST", "/x", json={"a": 1}))
                assert reply.status == 201
            return info.value, took, cancelling, left

    err, took, cancelling, left = anyio.run(go)
    assert err.maybe_committed is True and err.reason == "timeout"
    assert str(err) == "no answer (TimeoutError: timed out)"
    assert took >= 0.4  # never before the deadline (after it by at most a tick, plus the machine)
    assert cancelling == 0 and not left


def test_an_outside_cancellation_stays_a_cancellation() -> None:
    async def go() -> tuple[bool, int]:
        arrived = anyio.Event()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            arrived.set()
            await asyncio.sleep(60)

        async with raw_server(silent) as base, Transport(base, headers={}, timeout=30, connections=4) as t:
            with anyio.CancelScope() as scope:
                async def cancel_when_sent() -> None:
                    await arrived.wait()
                    scope.cancel()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(cancel_when_sent)
                    await t.send(Request("POST", "/x", json={"a": 1}))
            return scope.cancelled_caught, len(t._deadlines.due) if t._deadlines else -1

    caught, left = anyio.run(go)
    assert caught and left == 0


def test_the_watchdogs_cancel_and_an_outside_one_together_stay_a_cancellation() -> None:
    """The watchdog cancels a task that is being cancelled from outside too: settle() takes only
    its own cancellation back, so the task is still cancelling and the CancelledError goes on."""
    async def go() -> tuple[bool, int, bool]:
        deadlines = Deadlines(60)  # its watchdog does not tick in this test: expire() is its tick
        deadlines.start()
        waited: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        in_flight = asyncio.Event()
        mine = False
        cancelling = -1

        async def request() -> None:
            nonlocal mine, cancelling
            task = asyncio.current_task()
            assert task is not None
            deadlines.due[task] = time.monotonic() - 1  # already past its deadline
            in_flight.set()
            try:
                await waited
            except asyncio.CancelledError:
                mine = deadlines.settle(task)
                cancelling = task.cancelling()
                raise

        task = asyncio.get_running_loop().create_task(request())
        await in_flight.wait()
        deadlines.expire(time.monotonic())  # the watchdog cancels it,
        task.cancel()  # and so does someone else, before the task runs again
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await deadlines.close()
        return mine, cancelling, task.cancelled()

    mine, cancelling, cancelled = asyncio.run(go())
    assert mine and cancelling == 1 and cancelled
