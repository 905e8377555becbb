"""The per-request retry budget (bulk.job.Session.send), driven through a scripted transport.

A record is failed (its retries exhausted) only when the failure is its own: the API answers
others between its attempts. An outage, a restart or a burst of 5xx must never cost a record
its place, however many attempts it makes meanwhile; the health check (give-up time) bounds
those instead. Found by tests/test_faults.py::test_sandbox_restarted_mid_run, which hit these
races only sometimes; here they are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from bulk.errors import ApiUnavailable, ServerError, TransportError
from bulk.job import Session
from bulk.pacing import Backoff, Pacer
from bulk.targets.agiled import AgiledTarget
from bulk.transport import Reply, Request

OK = Reply(200, {}, b'{"data": {"id": 1}}')


class ScriptedTransport:
    """Answers attempt ``i`` (1-based) with ``script(i)``: a Reply, or an exception to raise.
    ``others_succeed(i)`` says whether other workers got an answer just before attempt ``i``."""

    def __init__(self, pacer: Pacer, script: Callable[[int], Reply | Exception],
                 others_succeed: Callable[[int], bool]) -> None:
        self.pacer, self.script, self.others_succeed = pacer, script, others_succeed
        self.calls = 0

    def redact(self, text: str) -> str:
        return text

    async def send(self, req: Request) -> Reply:
        self.calls += 1
        if self.others_succeed(self.calls):
            await anyio.sleep(0.001)
            self.pacer.ok()  # another worker's request was answered meanwhile
            await anyio.sleep(0.001)
        outcome = self.script(self.calls)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def _send(script: Callable[[int], Reply | Exception], others_succeed: Callable[[int], bool], *,
          attempts: int = 3, give_up_after: float = 30) -> tuple[Reply | BaseException, int]:
    async def main() -> tuple[Reply | BaseException, int]:
        pacer = Pacer(limits={}, concurrency=4, give_up_after=give_up_after, max_wait=60)
        transport = ScriptedTransport(pacer, script, others_succeed)
        target = AgiledTarget(base_url="http://127.0.0.1:9", credentials={"AGILED_API_TOKEN": "x"}, options={})
        session = Session(transport=transport, pacer=pacer, target=target, state=None,  # type: ignore[arg-type]
                          attempts=attempts, item_concurrency=1, backoff=Backoff(base=0.0))
        try:
            return await session.send(Request("POST", "/x", json={}), stage="invoice"), transport.calls
        except Exception as exc:  # the outcome under test
            return exc, transport.calls

    return anyio.run(main)


def refused() -> TransportError:
    return TransportError("cannot connect (refused)", maybe_committed=False)


def test_refused_connections_never_use_up_the_budget_while_others_are_answered() -> None:
    # A restart seen from one worker: refused 10 times while others got answers in between
    # (they reached the server just before or just after it was away), then it is back.
    result, calls = _send(lambda i: refused() if i <= 10 else OK, others_succeed=lambda i: True)
    assert result is OK and calls == 11


def test_a_5xx_burst_does_not_fail_a_record_for_an_answer_that_was_already_on_its_way() -> None:
    # The burst starts; another worker's answer, sent before it, arrives just after this
    # request's first failure; then nothing is answered until the burst ends.
    result, calls = _send(lambda i: ServerError(500, "burst") if i <= 6 else OK, others_succeed=lambda i: i == 2)
    assert result is OK and calls == 7


def test_a_failure_of_its_own_uses_up_the_budget() -> None:
    # This request always gets 500 while the API answers every other: it is the record's.
    result, calls = _send(lambda i: ServerError(500, "poison"), others_succeed=lambda i: True, attempts=3)
    assert isinstance(result, ServerError) and calls == 3


def test_an_outage_is_bounded_by_the_give_up_time_not_the_budget() -> None:
    result, calls = _send(lambda i: ServerError(503, "down"), others_succeed=lambda i: False, give_up_after=0.05)
    assert isinstance(result, ApiUnavailable) and calls > 3
    assert "no successful answer" in str(result)


@pytest.mark.parametrize("maybe_committed", [True, False])
def test_lost_connections_are_charged_refused_ones_are_not(maybe_committed: bool) -> None:
    error = TransportError("no answer" if maybe_committed else "cannot connect", maybe_committed=maybe_committed)
    result, calls = _send(lambda i: error if i <= 5 else OK, others_succeed=lambda i: True, attempts=3)
    if maybe_committed:  # a reset or timeout may be this request's own doing (a poison payload)
        assert result is error and calls == 3
    else:
        assert result is OK and calls == 6
