"""anny's crash points for tests: after the n-th commit of a step the server stops answering.

The rule (option ``hold`` or ``POST /_sandbox/hold {"after": step, "count": n, "answer":
bool}``, step in :data:`STEPS`): after the n-th commit of that step every later API request
waits, and so does the n-th unless ``answer``. Setting a rule (``{}`` clears it) releases the
waiting requests: they are dropped unhandled, so nothing commits late. The dialect's request
wrapper does the waiting (see ``AnnySandbox._api``); handlers only report their commits.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from bulk.sandbox.config import SandboxConfigError

__all__ = ["HOLD_ME", "STEPS", "CrashPoints", "drop"]

STEPS = ("customer", "address", "invoice", "item", "send", "set-paid")
#: set on the request whose commit stopped the server without answering it
HOLD_ME = web.RequestKey("anny.hold", bool)


def drop(request: web.Request) -> web.Response:
    """Close the connection unanswered (see ``core._drop``)."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=204)


class CrashPoints:
    """The crash-point rule, how many commits of its step were seen, and ``stopped``: the
    event the held requests wait on (None while the server answers)."""

    def __init__(self) -> None:
        self.stopped: asyncio.Event | None = None
        self.rule: dict[str, Any] = {}
        self.seen = 0

    def set(self, rule: Any) -> None:
        """Set (or with ``{}`` clear) the crash-point rule; releases whatever waits."""
        if not isinstance(rule, dict) or (rule and (
                rule.get("after") not in STEPS or isinstance(rule.get("count"), bool)
                or not isinstance(rule.get("count"), int) or rule["count"] < 1)):
            raise SandboxConfigError(f"hold must be {{}} or {{'after': one of {', '.join(STEPS)}, "
                                     "'count': n >= 1, 'answer': bool}}")
        if self.stopped is not None:
            self.stopped.set()  # the waiting requests are dropped, unhandled
        self.stopped, self.rule, self.seen = None, dict(rule), 0

    def state(self) -> dict[str, Any]:
        """``GET /_sandbox/hold``: ``{"rule", "seen", "stopped"}``."""
        return {"rule": self.rule, "seen": self.seen, "stopped": self.stopped is not None}

    def committed(self, request: web.Request, step: str) -> None:
        """A handler's ``step`` has committed for ``request``: stop here if the rule says so."""
        rule = self.rule
        if not rule or self.stopped is not None or rule["after"] != step:
            return
        self.seen += 1
        if self.seen >= rule["count"]:
            self.stopped = asyncio.Event()
            if not rule.get("answer"):
                request[HOLD_ME] = True
