"""bulk.testing's seams: the engine's send path and a target's upload without sockets
(MockTransport), and the pacer on a fake clock (VirtualLoop). Real sockets stay the rule for
end-to-end tests; these make one behaviour at a time exact and fast."""

from __future__ import annotations

import asyncio
import time

import anyio
import pytest

from bulk.errors import AuthError, RecordRefused, TransportError
from bulk.generate import generate
from bulk.pacing import Pacer, burst_for
from bulk.records import parse_record
from bulk.targets.agiled import AgiledTarget
from bulk.testing import MemoryState, MockTransport, run_virtual, upload_one
from bulk.transport import BaseTransport, Reply, Request

_: type[BaseTransport] = MockTransport  # mypy checks that the mock implements the protocol

RECORD = parse_record(next(iter(generate(1, seed=3))).rstrip(b"\n"), 1)


def _agiled() -> AgiledTarget:
    return AgiledTarget(base_url="http://mock.invalid", credentials={"AGILED_API_TOKEN": "tok-0123456789"}, options={})


def test_a_lost_answer_is_retried_with_the_same_key_and_the_contact_resolved_once() -> None:
    lost = [True]

    def api(req: Request) -> Reply:
        if req.method == "GET" and req.path == "/public/v1/contacts":
            return Reply(200, {}, b'{"data": []}')
        if req.path == "/public/v1/contacts":
            return Reply(201, {}, b'{"data": {"id": 41}}')
        if lost[0]:  # committed, then the answer is lost
            lost[0] = False
            raise TransportError("no answer (ServerDisconnectedError)", maybe_committed=True)
        return Reply(201, {}, b'{"data": {"id": 7, "status": "draft", "total": "1.00"}}')

    transport = MockTransport(api)
    state = MemoryState()
    created = anyio.run(lambda: upload_one(_agiled(), RECORD, transport, state=state))
    assert created.invoice_id == "7" and created.customer_id == "41"
    invoices = [r for r in transport.requests if r.path == "/public/v1/invoices"]
    assert len(invoices) == 2 and invoices[0].headers == invoices[1].headers  # same Idempotency-Key
    assert invoices[0].body() == invoices[1].body()
    assert state.get("agiled.contact", RECORD.customer.external_id) == "41"


@pytest.mark.parametrize(("status", "error"), [(422, RecordRefused), (401, AuthError)])
def test_answers_are_classified_by_the_target(status: int, error: type[Exception]) -> None:
    async def api(req: Request) -> Reply:
        if req.method == "GET":
            return Reply(200, {}, b'{"data": [{"id": 5}]}')
        return Reply(status, {}, b'{"message": "The given data was invalid.", "errors": {"due_date": ["bad"]}}')

    with pytest.raises(error):
        anyio.run(upload_one, _agiled(), RECORD, MockTransport(api))


def test_the_virtual_clock_drives_the_pacer_exactly_and_at_once() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        pacer = Pacer(limits={"write": 0.1}, concurrency=4, give_up_after=600, max_wait=600)
        start = loop.time()

        async def one() -> None:
            async with pacer.slot("write"):
                pass

        async with anyio.create_task_group() as tg:
            for _ in range(21):
                tg.start_soon(one)
        return start, loop.time()

    wall = time.monotonic()
    start, end = run_virtual(main)
    # 21 requests at 0.1/s: the first burst at once, then one every 10 s of the loop's clock
    assert end - start == pytest.approx((21 - burst_for(0.1)) / 0.1, abs=0.011)
    # and none of it was waited for: less real time passed than the loop's clock says (200 s)
    assert time.monotonic() - wall < end - start


def test_the_testing_module_is_a_pinned_public_surface() -> None:
    import bulk.testing

    assert set(bulk.testing.__all__) == {"CHECKS", "MemoryState", "MockTransport", "Support", "VirtualLoop",
                                         "conformance", "run_virtual", "upload_one"}
    assert set(bulk.testing.CHECKS) == {"happy_path", "throttled", "refused_record", "lost_answers",
                                        "resume_skips_done", "server_down_resumes"}
