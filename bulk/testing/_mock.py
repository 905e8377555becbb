"""An in-process transport, a memory resume store, and one record through a target without sockets.

``MockTransport(handler)`` is httpx's ``MockTransport`` for `bulk`: each request the engine
sends is answered by ``handler(request)`` (a plain or an async function returning a
:class:`~bulk.transport.Reply`, or raising :class:`~bulk.errors.TransportError` to play a lost
answer or a refused connection). It implements :class:`bulk.transport.BaseTransport`, so the
engine's real send path (pacing, classification, retries, recover) runs unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..job import RecordJob, Session, upload
from ..pacing import Backoff, Pacer
from ..transport import Reply, Request, redactor

if TYPE_CHECKING:
    from ..records import Record
    from ..targets.base import Created, Target

__all__ = ["MemoryState", "MockTransport", "upload_one"]

Handler = Callable[[Request], "Reply | Awaitable[Reply]"]


class MockTransport:
    """Answers every request with ``handler(request)``; ``requests`` lists what was sent, in order."""

    def __init__(self, handler: Handler, *, base_url: str = "http://mock.invalid",
                 secrets: tuple[str, ...] = ()) -> None:
        self.base_url = base_url
        self.handler = handler
        self.requests: list[Request] = []
        self._redact = redactor(secrets)

    async def __aenter__(self) -> MockTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def redact(self, text: str) -> str:
        return self._redact(text)

    async def send(self, req: Request) -> Reply:
        self.requests.append(req)
        answer = self.handler(req)
        if type(answer) is not Reply and inspect.isawaitable(answer):  # a Reply, mostly: no check
            answer = await answer
        assert isinstance(answer, Reply), f"the handler must return a Reply, not {type(answer).__name__}"
        return answer


class MemoryState:
    """The resolved-ids part of the resume file (``bulk.checkpoint.StateStore``), in memory."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], str] = {}

    def get(self, ns: str, key: str) -> str | None:
        return self.values.get((ns, key))

    def put(self, ns: str, key: str, value: str) -> None:
        self.values[(ns, key)] = value

    def forget(self, ns: str, key: str) -> None:
        self.values.pop((ns, key), None)

    def items(self, ns: str) -> dict[str, str]:
        return {k: v for (n, k), v in self.values.items() if n == ns}


def session(target: Target, transport: Any, *, state: MemoryState | None = None, attempts: int = 3,
            item_concurrency: int = 4, concurrency: int = 8) -> Session:
    """The engine's per-run :class:`~bulk.job.Session` over ``transport``: no pacing limit,
    no backoff delay (retries are immediate), ``attempts`` tries per request."""
    pacer = Pacer(limits={}, concurrency=concurrency, give_up_after=60, max_wait=60)
    return Session(transport=transport, pacer=pacer, target=target,
                   state=state if state is not None else MemoryState(),  # type: ignore[arg-type]  # the 4 methods Session uses
                   attempts=attempts, item_concurrency=item_concurrency, backoff=Backoff(base=0.0))


async def upload_one(target: Target, record: Record, transport: Any, *, state: MemoryState | None = None,
                     attempts: int = 3, maybe_sent_before: bool = False) -> Created:
    """Run ``target.upload(record)`` through the engine's real send path over ``transport`` (a
    :class:`MockTransport`, or any :class:`~bulk.transport.BaseTransport`), in the running loop.
    Raises what the engine would see: a ``bulk`` error or the target's ``Created``."""
    run = session(target, transport, state=state, attempts=attempts)
    job = RecordJob(run, record, progress=None, maybe_sent_before=maybe_sent_before)
    return await upload(target, job)
