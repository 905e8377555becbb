"""Coperniq's daily quota, its ``X-RateLimit-Limit`` / ``X-RateLimit-Remaining`` headers, and
the exchange recorder (option ``record_exchanges``), as the outermost middleware of the app.

The quota is ``daily_quota`` requests per key in any ``quota_window`` seconds (rolling; a
deque of admission times per key, in the dialect's ``usage``). Beyond it: 429
``RATE_LIMIT_EXCEEDED`` with Remaining 0 and no Retry-After. Refused requests do not count,
nor do requests the framework's per-second limiter refused (their 429 takes the time back).

Kept hand-written rather than the ``limits`` package's moving window: that counts in whole
seconds (``quota_window`` is any positive number of seconds, tests use 2.5) and has no way to
take back a hit, which the per-second 429 needs.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from bulk.sandbox.config import SandboxConfigError
from bulk.sandbox.core import Problem

if TYPE_CHECKING:
    from bulk.sandbox.coperniq import CoperniqSandbox

__all__ = ["quota_middleware", "quota_options"]

_MAX_EXCHANGES = 50_000


def quota_options(options: Mapping[str, Any]) -> tuple[int | None, float]:
    """``(daily_quota or None, quota_window seconds)``; SandboxConfigError for a bad value."""
    raw, window = options.get("daily_quota", 5000), options.get("quota_window", 86_400)
    try:
        quota = None if raw is None or str(raw).lower() in ("off", "none", "") else int(str(raw))
        seconds = float(str(window))
    except ValueError:
        quota, seconds = 0, 0.0
    if (quota is not None and quota < 1) or not 0 < seconds < 10**9:
        raise SandboxConfigError(f"coperniq sandbox options: daily_quota must be >= 1 or off (got {raw!r}) "
                                 f"and quota_window seconds > 0 (got {window!r})")
    return quota, seconds


def quota_middleware(sandbox: CoperniqSandbox) -> Middleware:
    """The outermost middleware of the Coperniq app: the daily quota (a rolling window of
    timestamps per key), the ``X-RateLimit-*`` headers, and the exchange recorder."""
    token, readonly = sandbox.config.token, sandbox.config.readonly_token
    counters = sandbox.counters

    @web.middleware
    async def quota(request: web.Request, handler: Handler) -> web.StreamResponse:
        if getattr(request.match_info.handler, "sandbox_control", False):
            return await handler(request)
        # Read the body before the framework's latency/slow delay: a create whose client gave
        # up during the delay must still commit afterwards, as a real server does.
        body = await request.read()
        key = sandbox.credential(request)
        known = key is not None and (token is None or key in (token, readonly))
        if not known or sandbox.quota is None or key is None:
            response = await handler(request)
        else:
            now = time.monotonic()
            used = sandbox.usage.setdefault(key, deque())
            while used and used[0] <= now - sandbox.quota_window:
                used.popleft()
            if len(used) >= sandbox.quota:
                counters.total += 1
                counters.by_status[429] = counters.by_status.get(429, 0) + 1
                response = sandbox.problem(Problem.THROTTLED, request)
            else:
                used.append(now)
                response = await handler(request)
                if response.status == 429:  # the per-second limit: not counted
                    used.remove(now)
            response.headers["X-RateLimit-Limit"] = str(sandbox.quota)
            response.headers["X-RateLimit-Remaining"] = str(max(0, sandbox.quota - len(used)))
        if sandbox.recording and len(sandbox.exchanges) < _MAX_EXCHANGES:
            _record(sandbox, request, body, response)
        return response

    return quota


def _record(sandbox: CoperniqSandbox, request: web.Request, body: bytes, response: web.StreamResponse) -> None:
    transport = request.transport
    answered = transport is not None and not transport.is_closing()
    content = response.body if isinstance(response, web.Response) else None
    sandbox.exchanges.append({
        "method": request.method, "path": request.path, "query": list(request.query.items()),
        "headers": {str(k): v for k, v in request.headers.items()},
        "body": body.decode("utf-8", "replace") if body else None,
        "status": response.status if answered else None,
        "response_headers": {str(k): v for k, v in response.headers.items()} if answered else {},
        "response_body": content.decode("utf-8", "replace") if answered and isinstance(content, bytes) else None,
    })
