"""bulk.batching.Batches, the engine's batching hook, on its own: concurrent calls coalesced into
one flush through the engine's real send path (bulk.job.Session over bulk.testing.MockTransport),
on the virtual clock (bulk.testing.run_virtual), so lingers and rate-limit waits are exact and
no test depends on the machine's speed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import orjson
import pytest

from bulk.batching import Batch, Batches
from bulk.errors import ServerError, TransportError
from bulk.job import Session, SessionJob
from bulk.pacing import Backoff, Pacer
from bulk.records import Record
from bulk.targets.base import Created, Job, RunJob, Target
from bulk.testing import MemoryState, MockTransport, run_virtual
from bulk.transport import Reply, Request

Flush = Callable[[Batch[int], RunJob], Awaitable[list[str]]]


class _Target(Target):
    """Just enough of a target for the engine's Session: the default ``classify``."""

    name = "batching-test"
    credential_env = ()
    base_url_env = "BATCHING_TEST_URL"

    def headers(self) -> dict[str, str]:
        return {}

    async def upload(self, record: Record, job: Job) -> Created:
        raise AssertionError("not used: the tests call the hook directly")


class _BulkRequest(Request):
    """``POST /bulk`` whose body is the batch as it is when the transport encodes it (as
    ChargeOver's ``_bulk``): the batch closes then, so it fills while waiting for its slot."""

    __slots__ = ("_batch",)

    def __init__(self, batch: Batch[int]) -> None:
        super().__init__("POST", "/bulk")
        self._batch = batch

    def body(self) -> bytes | None:
        if self.json is None:
            self.json = list(self._batch.items)
            self._batch.close()
        return super().body()


async def send_batch(batch: Batch[int], job: RunJob) -> list[str]:
    """The flush of a well-behaved target: one bulk request, one result per item."""
    reply = await job.send(_BulkRequest(batch), stage="bulk")
    results = orjson.loads(reply.content)
    assert isinstance(results, list)
    return [str(r) for r in results]


class Api:
    """A bulk endpoint: answers ``r<item>`` for every item, and notes (loop time, items) of each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, list[int]]] = []

    def __call__(self, req: Request) -> Reply:
        items = orjson.loads(req.body() or b"null")
        self.calls.append((asyncio.get_running_loop().time(), items))
        return Reply(200, {}, orjson.dumps([f"r{i}" for i in items]))


def run(api: Api, flush: Flush, starts: list[float], *, size: int, linger: float,
        limits: Mapping[str, float] | None = None) -> tuple[float, dict[int, Any]]:
    """Call ``batches.call(job, i)`` for item ``i`` at virtual time ``starts[i]`` after the start;
    return the start time and each item's result or exception."""

    async def main() -> tuple[float, dict[int, Any]]:
        pacer = Pacer(limits=limits or {}, concurrency=8, give_up_after=600, max_wait=600, burst=1)
        session = Session(transport=MockTransport(api), pacer=pacer, target=_Target(
            base_url="http://mock.invalid", credentials={}, options={}), state=MemoryState(),  # type: ignore[arg-type]  # the 4 methods Session uses
            attempts=1, item_concurrency=4, backoff=Backoff(base=0.0))
        job = SessionJob(session)
        batches: Batches[int, str] = Batches(flush, size=size, linger=linger)
        outcome: dict[int, Any] = {}
        start = asyncio.get_running_loop().time()

        async def caller(i: int) -> None:
            await anyio.sleep(starts[i])
            try:
                outcome[i] = await batches.call(job, i)
            except Exception as exc:
                outcome[i] = exc

        async with anyio.create_task_group() as tg:
            for i in range(len(starts)):
                tg.start_soon(caller, i)
        return start, outcome

    return run_virtual(main)


def test_a_full_batch_is_sent_at_once_and_the_next_caller_leads_a_new_one() -> None:
    api = Api()
    start, outcome = run(api, send_batch, [0, 0, 0, 0], size=3, linger=60)
    assert [items for _, items in api.calls] == [[0, 1, 2], [3]]
    assert api.calls[0][0] - start < 1  # full: sent without waiting for the linger
    assert api.calls[1][0] - start == pytest.approx(60)  # alone: after its linger
    assert outcome == {0: "r0", 1: "r1", 2: "r2", 3: "r3"}  # each caller its own result


def test_the_linger_sends_a_partial_batch() -> None:
    api = Api()
    start, outcome = run(api, send_batch, [0, 0.2, 0.6], size=10, linger=0.5)
    assert [items for _, items in api.calls] == [[0, 1], [2]]
    assert api.calls[0][0] - start == pytest.approx(0.5)
    assert outcome == {0: "r0", 1: "r1", 2: "r2"}


def test_a_caller_joins_the_batch_while_its_leader_waits_for_a_rate_limit_slot() -> None:
    api = Api()
    # One write a second: batch [0] takes the slot at 0.1; item 1 leads the next batch, which
    # waits for the slot from 0.3 to 1.1; item 2 comes at 0.6, while it waits, and joins it.
    start, outcome = run(api, send_batch, [0, 0.2, 0.6], size=10, linger=0.1, limits={"write": 1.0})
    assert [items for _, items in api.calls] == [[0], [1, 2]]
    assert api.calls[1][0] - start >= 1.0  # it really waited for its slot
    assert outcome == {0: "r0", 1: "r1", 2: "r2"}


def test_a_flush_that_raises_fails_every_caller_with_the_same_error() -> None:
    api = Api()
    flushes: list[list[int]] = []

    async def failing(batch: Batch[int], job: RunJob) -> list[str]:
        flushes.append(list(batch.items))
        if len(flushes) == 1:
            raise ServerError(503, "the bulk endpoint is down")
        return await send_batch(batch, job)

    _, outcome = run(api, failing, [0, 0, 0, 1], size=10, linger=0.5)
    assert flushes == [[0, 1, 2], [3]]
    errors = [outcome[i] for i in range(3)]
    assert isinstance(errors[0], ServerError) and "down" in str(errors[0])
    assert all(e is errors[0] for e in errors)  # one error, every caller of the batch
    assert outcome[3] == "r3"  # the failed batch is closed: the next caller leads a new one


def test_a_bug_in_the_flush_reaches_the_leader_and_the_followers_as_maybe_committed() -> None:
    async def buggy(batch: Batch[int], job: RunJob) -> list[str]:
        raise KeyError("oops")

    _, outcome = run(Api(), buggy, [0, 0, 0], size=10, linger=0.5)
    assert isinstance(outcome[0], KeyError)
    for i in (1, 2):
        assert isinstance(outcome[i], TransportError) and outcome[i].maybe_committed
        assert "interrupted" in str(outcome[i])


def test_a_flush_returning_the_wrong_count_is_an_error_for_every_caller() -> None:
    api = Api()

    async def short(batch: Batch[int], job: RunJob) -> list[str]:
        return (await send_batch(batch, job))[:-1]

    _, outcome = run(api, short, [0, 0, 0], size=10, linger=0.5)
    assert [items for _, items in api.calls] == [[0, 1, 2]]
    assert isinstance(outcome[0], RuntimeError) and "2 results for 3 items" in str(outcome[0])
    for i in (1, 2):  # no result handed out: their items were sent, their answer is unknown
        assert isinstance(outcome[i], TransportError) and outcome[i].maybe_committed
    assert not any(isinstance(v, str) for v in outcome.values())


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Batches(send_batch, size=0, linger=0.1)
