"""The request pipeline every API request of every dialect runs (drawn in :mod:`bulk.sandbox.core`'s
docstring): control routes pass straight through; then unknown route, authentication, read-only
credential, the rate limiter, the throttle/fail/drop faults, the latency and slow delays, the
handler (a :class:`SandboxProblem` becomes the dialect's error answer), the group commit before
any answer, and the lose fault. It also keeps the dialect's :class:`RequestCounters`.

:func:`pipeline_middleware` builds it for one dialect; :data:`DELAY` is the request key under
which a write carrying an idempotency key leaves its delay for ``Dialect.idempotent()`` to sleep
inside the key's in-flight window.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from bulk.sandbox._problem import WRITE_METHODS, Problem, SandboxProblem

if TYPE_CHECKING:
    from bulk.sandbox.core import Dialect

__all__ = ["DELAY", "pipeline_middleware"]

DELAY = web.RequestKey("sandbox.delay", float)


def pipeline_middleware(dialect: Dialect) -> Middleware:
    """The aiohttp middleware running the pipeline for ``dialect``."""
    config, counters, faults = dialect.config, dialect.counters, dialect.faults
    token, readonly = config.token, config.readonly_token
    problem = dialect.problem
    key_header = dialect.idempotency_header
    committed = dialect.committed

    def answer(response: web.StreamResponse) -> web.StreamResponse:
        counters.by_status[response.status] = counters.by_status.get(response.status, 0) + 1
        return response

    @web.middleware
    async def pipeline(request: web.Request, handler: Handler) -> web.StreamResponse:
        if getattr(request.match_info.handler, "sandbox_control", False):
            return await handler(request)
        counters.total += 1
        counters.in_flight += 1
        try:
            return await api_request(request, handler)
        finally:  # answered, dropped, or failed (the client went away mid-request)
            counters.in_flight -= 1

    async def api_request(request: web.Request, handler: Handler) -> web.StreamResponse:
        response: web.StreamResponse
        match = request.match_info
        http_exception = getattr(match, "http_exception", None)
        if http_exception is not None:
            if http_exception.status == 405:
                response = problem(Problem.METHOD_NOT_ALLOWED, request)
                response.headers["Allow"] = http_exception.headers.get("Allow", "")
                return answer(response)
            return answer(problem(Problem.NOT_FOUND, request))
        credential = dialect.credential(request)
        if credential is None or (token is not None and credential not in (token, readonly)):
            return answer(problem(Problem.UNAUTHORIZED, request))
        write = request.method in WRITE_METHODS
        if write and credential == readonly:
            return answer(problem(Problem.FORBIDDEN, request))
        retry_after = faults.limiter.acquire(credential, write)
        settings = faults.settings
        if retry_after or faults.hit(settings.throttle_rate):
            response = problem(Problem.THROTTLED, request)
            response.headers["Retry-After"] = faults.retry_after(retry_after or 1)
            return answer(response)
        if faults.hit(settings.fail_rate):
            return answer(problem(Problem.SERVER_ERROR, request))
        if faults.hit(settings.drop_rate):
            counters.dropped += 1
            return _drop(request)
        delay = settings.latency_ms
        if faults.hit(settings.slow_rate):
            counters.slowed += 1
            delay += settings.slow_ms
        if delay:
            if write and key_header in request.headers:
                request[DELAY] = delay / 1000  # consumed by idempotent()
            else:
                await asyncio.sleep(delay / 1000)
        try:
            response = await handler(request)
        except SandboxProblem as exc:
            response = problem(exc.kind, request)
        finally:
            await committed()  # durable before anything is answered (a failure answers 500)
        pending = request.get(DELAY)
        if pending:  # the handler answered before reaching idempotent()
            await asyncio.sleep(pending)
        if (request.method == "POST" and 200 <= response.status < 300
                and faults.hit(settings.lose_rate)):
            counters.lost += 1
            return _drop(request)
        return answer(response)

    return pipeline


def _drop(request: web.Request) -> web.Response:
    """Close the connection with no answer. aiohttp then fails to write the returned response
    and ignores that (a ConnectionError in finish_response), so nothing reaches the client."""
    transport = request.transport
    if transport is not None:
        transport.close()
    return web.Response(status=204)
