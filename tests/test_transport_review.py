"""The transport's guards (review points of 2026-12-01): a dead timeout watchdog stops the run
instead of leaving requests without a deadline, deadlines are on the loop's clock, a request the
watchdog cancelled is a "timeout" whatever aiohttp turned the cancellation into, a body trickled
slower than ``--timeout`` times out, and misuse is a clear RuntimeError. Real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import anyio
import pytest

from bulk.errors import AbortRun, TransportError
from bulk.transport import Reply, Request, Transport
from tests.test_transport_boundary import raw_server
from tests.test_transport_deadlines import _answering


def _arrival_server(arrived: asyncio.Event):  # type: ignore[no-untyped-def]
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        arrived.set()
        await asyncio.sleep(60)  # read the request, answer nothing
    return silent


@asynccontextmanager
async def _one_request_unanswered(request_timeout: float) -> AsyncIterator[tuple[Transport, asyncio.Task[Reply]]]:
    """An open transport (``request_timeout``) and the task of one POST it sent, once the POST has reached
    a server that reads it and answers nothing; its watchdog's table is there to look at."""
    arrived = asyncio.Event()
    async with raw_server(_arrival_server(arrived)) as base, \
            Transport(base, headers={}, timeout=request_timeout, connections=4) as t:
        sending = asyncio.get_running_loop().create_task(t.send(Request("POST", "/x", json={"a": 1})))
        await arrived.wait()
        assert t._deadlines is not None
        yield t, sending


def test_a_dead_watchdog_fails_the_request_in_flight_and_every_next_one() -> None:
    async def go() -> tuple[BaseException, BaseException]:
        async with _one_request_unanswered(request_timeout=30) as (t, sending):
            assert t._deadlines is not None and t._deadlines._watch is not None
            t._deadlines._watch.cancel()  # the watchdog dies (as a bug or a stray cancel would do)
            with anyio.fail_after(10):  # a failsafe only: the send ends at once, or hangs for 60 s
                in_flight = await asyncio.gather(sending, return_exceptions=True)
            with pytest.raises(AbortRun) as next_one:
                await t.send(Request("POST", "/x", json={"a": 1}))
            return in_flight[0], next_one.value

    in_flight, next_one = asyncio.run(go())
    assert isinstance(in_flight, AbortRun)
    for err in (in_flight, next_one):
        assert str(err) == ("internal error: the --timeout watchdog stopped (it was cancelled), so no request "
                            "could time out: the run stopped; run the same command again to resume")


class _Faulty:
    """Stands in for a request's task in the watchdog's table: cancelling it raises."""

    def cancel(self) -> None:
        raise RuntimeError("boom")


def test_a_watchdog_dead_by_an_exception_fails_the_request_and_the_transport_closes_cleanly() -> None:
    # Dead by an exception, not a cancel: close() must not re-raise that exception (it would
    # replace the AbortRun, "run the same command again", by a foreign error at the run's end).
    async def go() -> BaseException:
        async with _one_request_unanswered(request_timeout=30) as (t, sending):
            t._deadlines.due[_Faulty()] = 0.0  # type: ignore[index]  # its next tick raises in expire()
            with anyio.fail_after(10):  # a failsafe only: the send ends at the next tick, or hangs for 60 s
                (in_flight,) = await asyncio.gather(sending, return_exceptions=True)
            return in_flight

    in_flight = asyncio.run(go())  # leaving `async with Transport` raised RuntimeError("boom") before
    assert isinstance(in_flight, AbortRun)
    assert "watchdog stopped (RuntimeError: boom)" in str(in_flight)


class _ShiftedLoop(asyncio.SelectorEventLoop):
    """A loop whose clock is not time.monotonic: a day ahead."""

    def time(self) -> float:
        return super().time() + 86_400.0


def test_deadlines_are_on_the_loops_clock() -> None:
    async def go() -> tuple[float, float, TransportError]:
        async with _one_request_unanswered(request_timeout=2) as (t, sending):
            (deadline,) = t._deadlines.due.values()
            now = asyncio.get_running_loop().time()
            with pytest.raises(TransportError) as info:
                await sending
            return deadline, now, info.value

    with asyncio.Runner(loop_factory=_ShiftedLoop) as runner:
        deadline, now, err = runner.run(go())
    assert now < deadline <= now + 2  # (2 s, not less: a loaded machine must not time it out before we look)
    assert err.reason == "timeout"


@pytest.mark.parametrize("exc", [aiohttp.ClientOSError(104, "Connection reset by peer"),
                                 aiohttp.ClientPayloadError("Response payload is not completed"),
                                 aiohttp.ServerDisconnectedError()])
def test_an_error_of_a_request_the_watchdog_cancelled_is_a_timeout(exc: Exception) -> None:
    t = Transport("http://127.0.0.1:9", headers={}, timeout=1, connections=1)
    expired = t._failure(exc, expired=True)
    assert isinstance(expired, TransportError) and expired.reason == "timeout" and expired.maybe_committed
    assert str(expired).startswith(f"no answer ({type(exc).__name__}")  # the message stays aiohttp's
    not_expired = t._failure(exc, expired=False)
    assert isinstance(not_expired, TransportError) and not_expired.reason == "reset"


async def _trickling(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 100000\r\n\r\n")
    while True:  # a byte at a time, never the whole body: only the deadline can end the request
        writer.write(b"x")
        await writer.drain()
        await asyncio.sleep(0.01)


def test_a_body_trickled_slower_than_the_timeout_times_out() -> None:
    async def go() -> TransportError:
        async with raw_server(_trickling) as base, Transport(base, headers={}, timeout=0.3, connections=4) as t:
            with pytest.raises(TransportError) as info:
                await t.send(Request("POST", "/x", json={"a": 1}))
            return info.value

    err = anyio.run(go)
    assert err.reason == "timeout" and err.maybe_committed
    assert str(err) == "no answer (TimeoutError: timed out)"


def test_send_outside_async_with_and_a_second_enter_are_refused() -> None:
    async def go() -> tuple[str, str, int]:
        async with raw_server(_answering) as base:
            t = Transport(base, headers={}, timeout=5, connections=4)
            with pytest.raises(RuntimeError) as unopened:
                await t.send(Request("POST", "/x", json={"a": 1}))
            async with t:
                with pytest.raises(RuntimeError) as again:
                    await t.__aenter__()
                status = (await t.send(Request("POST", "/x", json={"a": 1}))).status  # still usable
            return str(unopened.value), str(again.value), status

    unopened, again, status = anyio.run(go)
    assert unopened == "Transport.send() needs the transport open: use 'async with Transport(...)'"
    assert again == "a Transport is entered once: create a new one for another 'async with'"
    assert status == 201
