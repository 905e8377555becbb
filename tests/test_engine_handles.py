"""The record handle the worker builds (``bulk.job.new_record_job``, and ``Workers.work``'s
own inline copy of it) and its synchronous cache hit (``Job.cached``): the same handle as
``RecordJob(...)``, and a cached customer costs an Agiled upload no lookup."""

from __future__ import annotations

import anyio

from bulk._worker import Workers
from bulk.errors import UnknownReference
from bulk.feed import Feed
from bulk.job import RecordJob, new_record_job
from bulk.records import parse_record
from bulk.targets.agiled import AgiledTarget
from bulk.testing import MemoryState, MockTransport
from bulk.testing._mock import session
from bulk.transport import Reply, Request
from bulk.watermark import Tracker

LINE = (b'{"external_id":"INV-1","customer":{"external_id":"C-1","email":"a@example.com","name":"A B"},'
        b'"currency":"EUR","status":"draft","prices":"net","lines":[{"title":"x","quantity":1,'
        b'"unit_price":"2.50","tax_rate":"19"}]}')


def _target() -> AgiledTarget:
    return AgiledTarget(base_url="http://mock.invalid", credentials={"AGILED_API_TOKEN": "token-12345678"},
                        options={})


def _answer(req: Request) -> Reply:
    if req.path.endswith("/contacts"):
        return Reply(200, {}, b'{"data":[{"id":7}]}')
    return Reply(201, {}, b'{"data":{"id":99,"status":"draft","total":null}}')


def test_the_workers_handle_is_the_classes_own() -> None:
    async def main() -> None:
        run = session(_target(), MockTransport(_answer))
        record = parse_record(LINE, 3)
        for progress, maybe in ((None, False), ({"step": "x"}, True)):
            fast = new_record_job(run, record, progress, maybe)
            slow = RecordJob(run, record, progress=progress, maybe_sent_before=maybe)
            assert type(fast) is RecordJob
            for name in RecordJob.__slots__ + RecordJob.__mro__[1].__slots__:
                assert getattr(fast, name) == getattr(slow, name), name
            assert fast.progress == (progress or {})
            assert fast.maybe_sent_before is maybe

    anyio.run(main)


def test_the_worker_loops_handle_is_the_classes_own() -> None:
    """``Workers.work`` builds each record's handle inline: attribute for attribute the class's."""
    seen: list[tuple[RecordJob, RecordJob]] = []

    class _Target(AgiledTarget):
        async def upload(self, record, job):  # type: ignore[no-untyped-def]
            expected = RecordJob(run, record, progress=progress.get(record.line_no),
                                 maybe_sent_before=record.line_no <= 3)
            seen.append((job, expected))
            raise UnknownReference(404, "stop here")  # no refs: the record fails, nothing else runs

    class _Recorder:
        def created(self, *_: object) -> None:
            raise AssertionError("not expected")

        def failed(self, *_: object) -> None:
            pass

    class _Run:
        stopping = False

    progress = {3: {"step": "x"}}

    async def main() -> None:
        nonlocal run
        target = _Target(base_url="http://mock.invalid", credentials={"AGILED_API_TOKEN": "token-12345678"},
                         options={})
        run = session(target, MockTransport(_answer))
        tracker = Tracker(0, 1)
        workers = Workers(_Run(), session=run, target=target, recorder=_Recorder(),  # type: ignore[arg-type]
                          tracker=tracker, inflight={}, resume_progress=dict(progress), prev_reserved=3,
                          arrivals=None)
        feed: Feed = Feed(4)  # type: ignore[type-arg]
        for line in (3, 4):
            entry = [line, 0, 0]
            tracker.pending.append(entry)
            await feed.put((entry, parse_record(LINE, line), LINE))
        feed.close()
        await workers.work(feed)

    run = None
    anyio.run(main)
    assert len(seen) == 2
    for fast, slow in seen:
        assert type(fast) is RecordJob
        for name in RecordJob.__slots__ + RecordJob.__mro__[1].__slots__:
            assert getattr(fast, name) == getattr(slow, name), name
    assert seen[0][0].progress == {"step": "x"} and seen[0][0].maybe_sent_before is True
    assert seen[1][0].progress == {} and seen[1][0].maybe_sent_before is False


def test_a_cached_customer_is_a_synchronous_hit_and_costs_no_lookup() -> None:
    async def main() -> None:
        transport = MockTransport(_answer)
        run = session(_target(), transport, state=MemoryState())
        record = parse_record(LINE, 1)
        target = run.target
        first = new_record_job(run, record, None, False)
        assert first.cached("agiled.contact", "C-1") is None  # nothing resolved yet
        made = await target.upload(record, first)
        assert made.customer_id == "7" and made.invoice_id == "99"
        assert [r.path for r in transport.requests] == ["/public/v1/contacts", "/public/v1/invoices"]
        second = new_record_job(run, record, None, False)
        assert second.cached("agiled.contact", "C-1") == "7"
        transport.requests.clear()
        again = await target.upload(record, second)
        assert again.customer_id == "7"
        assert [r.path for r in transport.requests] == ["/public/v1/invoices"]  # no second lookup

    anyio.run(main)


def test_the_fast_request_and_reply_are_the_classes_own() -> None:
    from bulk._wire import _new_reply
    from bulk.transport import write_request

    body = {"a": 1}
    headers = {"Idempotency-Key": "k"}
    fast = write_request("/x", body, headers)
    assert type(fast) is Request
    assert fast == Request("POST", "/x", None, body, headers)
    assert fast.body() == b'{"a":1}' and fast.kind == "write" and fast.content_type == "application/json"
    reply = _new_reply(201, {"X": "1"}, b'{"data":1}')
    assert type(reply) is Reply and reply == Reply(201, {"X": "1"}, b'{"data":1}')
    assert reply.json() == {"data": 1}
