"""What an anny handler works with: one organization's stored data (:class:`Org`), and the
few things it uses of the dialect (:class:`Api`). Handlers are plain functions of type
:data:`Handler`, wrapped by ``AnnySandbox._api``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import web

from bulk.sandbox._anny_hold import CrashPoints
from bulk.sandbox.durable import DurableStore

__all__ = ["Api", "Handler", "Org", "now"]


class Org:
    """One organization's data (durable tables named after it). Invoices keep their item ids
    in creation order."""

    def __init__(self, durable: DurableStore, org_id: str) -> None:
        def table(kind: str) -> Any:
            return durable.table(f"{org_id}:{kind}")

        self.customers: dict[str, dict[str, Any]] = table("customers")
        self.addresses: dict[str, dict[str, Any]] = table("addresses")
        self.invoices: dict[str, dict[str, Any]] = table("invoices")
        self.items: dict[str, dict[str, Any]] = table("items")
        self.numbers: dict[str, str] = table("numbers")  # invoice number -> id


class Api(Protocol):
    """The dialect as a handler sees it (``AnnySandbox`` is one)."""

    #: the Decimal rounding of the money rule (option ``rounding``)
    rounding: str
    #: report each commit: ``crash.committed(request, step)``
    crash: CrashPoints

    def respond(self, data: Any, status: int = 200) -> web.Response:
        """``data`` as the dialect's JSON answer."""
        ...

    def new_id(self, kind: str) -> str:
        """A fresh UUID-shaped id for a resource of ``kind`` (``"invoices"``)."""
        ...


Handler = Callable[[Api, web.Request, Org, Any], web.Response]


def now() -> str:
    """A ``created_at`` timestamp: UTC, microseconds, ``Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
