"""A small proxy for late-delivery tests: between ``bulk`` and a sandbox, independent of the
sandbox's code, run as a :class:`harness.ScriptedServer` responder (aiohttp, 127.0.0.1 port 0).

Every request is forwarded faithfully, except:

- **held**: the first request for which ``hold(method, path, body)`` is true is not forwarded
  and never answered (``holding`` is set, so the test can SIGKILL the client now). It is
  delivered later, on progress only, never on a timer: with ``release="resend"`` when the next
  request matching ``hold`` arrives (the resumed run's, which comes after its lookup): that one
  is forwarded, then the held one (its commit awaited), and only then is the newer one
  answered; with ``release="manual"`` when the test calls :meth:`release`, e.g. after the
  job ended; with ``release="stall"`` like manual, and the next matching request is forwarded
  but never answered (``stalled`` is set: the server made a second copy, and the client can
  be killed before it knows). ``held_body`` and ``held_answer`` keep what the late request carried and what
  the server said to it.
- **dropped**: the first request of each kind in ``drop`` (``kind(method, path, body)``) is
  forwarded, then the connection is cut: the server committed, the client sees no answer.
- **mangled**: the next answers of a kind in ``mangle`` (not dropped) have their bodies
  rewritten by ``mangle[kind][0](body)``, ``[1]``... in turn (e.g. a ``_bulk`` answer with a
  result missing, or one sub-result turned into a 500); a rewriter that returns None leaves
  that answer as it is and waits for the next (e.g. one with a committed create in it).

``seen``, ``dropped`` and ``mangled`` count what happened, so a test can assert each fault did.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter
from collections.abc import Callable

from aiohttp import ClientSession, web

__all__ = ["LateProxy", "path_kind"]

_FORWARDED = ("x-api-key", "authorization", "content-type", "accept")
_ANSWERED = ("content-type", "date", "x-ratelimit-limit", "x-ratelimit-remaining", "retry-after", "location")


def path_kind(method: str, path: str, body: bytes) -> str:
    """``POST /invoices``, ``GET /projects/{id}/invoices``...: numbers in the path are ids."""
    return f"{method} {re.sub(r'/[0-9]+', '/{id}', path)}"


class LateProxy:
    def __init__(self, upstream: str, *, hold: Callable[[str, str, bytes], bool], release: str,
                 drop: set[str] = frozenset(), mangle: dict[str, list[Callable[[bytes], bytes | None]]] | None = None,  # type: ignore[assignment]
                 kind: Callable[[str, str, bytes], str] = path_kind) -> None:
        assert release in ("resend", "manual", "stall")
        self.upstream, self.hold, self.release_mode, self.kind = upstream, hold, release, kind
        self.drop, self.mangle = set(drop), {k: list(v) for k, v in (mangle or {}).items()}
        self.holding = threading.Event()
        self.stalled = threading.Event()
        self.seen: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.mangled: Counter[str] = Counter()
        self.held_body: bytes | None = None  # what the held request carried
        self.held_answer: tuple[int, bytes] | None = None
        self._held: tuple[str, str, bytes, dict[str, str]] | None = None
        self._was_held = False
        self._session: ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _forward(self, method: str, path_qs: str, body: bytes,
                       headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        if self._session is None:
            self._session = ClientSession(auto_decompress=False)
        async with self._session.request(method, self.upstream + path_qs, data=body or None, headers=headers,
                                         allow_redirects=False) as resp:
            answer = {k: v for k, v in resp.headers.items() if k.lower() in _ANSWERED}
            return resp.status, await resp.read(), answer

    async def respond(self, request: web.Request) -> web.StreamResponse:
        self._loop = asyncio.get_running_loop()
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARDED}
        kind = self.kind(request.method, request.path, body)
        self.seen[kind] += 1
        ours = self.hold(request.method, request.path, body)
        if ours and not self._was_held:
            self._was_held = True
            self._held = (request.method, request.path_qs, body, headers)
            self.held_body = body
            self.holding.set()
            await asyncio.Event().wait()  # never answered: the client is killed meanwhile
        status, content, answer = await self._forward(request.method, request.path_qs, body, headers)
        if ours and self.release_mode == "resend" and self._held is not None:
            await self._release()
        if ours and self.release_mode == "stall" and not self.stalled.is_set():
            self.stalled.set()
            await asyncio.Event().wait()  # committed, never answered
        if kind in self.mangle and self.mangle[kind] and kind not in self.drop:
            rewritten = self.mangle[kind][0](content)
            if rewritten is not None:  # None: not this answer (nothing to rewrite), the next one
                self.mangle[kind].pop(0)
                content = rewritten
                self.mangled[kind] += 1
        if kind in self.drop:
            self.drop.discard(kind)
            self.dropped[kind] += 1
            assert request.transport is not None
            request.transport.abort()  # committed upstream; the client sees a dead connection
        return web.Response(status=status, body=content, headers=answer)

    async def _release(self) -> None:
        assert self._held is not None
        held, self._held = self._held, None
        status, content, _ = await self._forward(*held)
        self.held_answer = (status, content)

    def release(self) -> None:
        """Deliver the held request now (from the test's thread); returns once it was answered."""
        assert self._loop is not None and self._held is not None
        asyncio.run_coroutine_threadsafe(self._release(), self._loop).result(30)

    def close(self) -> None:
        """Close the upstream session (from the test's thread, before the server stops)."""
        if self._session is not None and self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._session.close(), self._loop).result(30)
