"""The record handle the worker builds (``bulk.job.new_record_job``) and its synchronous
cache hit (``Job.cached``): the same handle as ``RecordJob(...)``, and a cached customer
costs an Agiled upload no lookup."""

from __future__ import annotations

import anyio

from bulk.job import RecordJob, new_record_job
from bulk.records import parse_record
from bulk.targets.agiled import AgiledTarget
from bulk.testing import MemoryState, MockTransport
from bulk.testing._mock import session
from bulk.transport import Reply, Request

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
    from bulk.transport import _new_reply, write_request

    body = {"a": 1}
    headers = {"Idempotency-Key": "k"}
    fast = write_request("/x", body, headers)
    assert type(fast) is Request
    assert fast == Request("POST", "/x", None, body, headers)
    assert fast.body() == b'{"a":1}' and fast.kind == "write" and fast.content_type == "application/json"
    reply = _new_reply(201, {"X": "1"}, b'{"data":1}')
    assert type(reply) is Reply and reply == Reply(201, {"X": "1"}, b'{"data":1}')
    assert reply.json() == {"data": 1}
