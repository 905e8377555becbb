"""One run's calls to ChargeOver: through ``_bulk`` when batching is on, else one request each.

:class:`Calls` is the ChargeOver adapter's run state for its requests (made by
``ChargeOverTarget.start_run``, in every process that uploads): the run's
:class:`~bulk.targets.chargeover_bulk.Batcher` (None with ``--option bulk=false``, or once the
account turns out to have no ``_bulk`` endpoint), and the creates of this run found after a
lost answer (ours, not an earlier job's). Every call answers a
:class:`~bulk.targets.chargeover_bulk.Sub`, whether it went through ``_bulk`` or alone: a
create whose answer may be lost is looked up by external key before any resend, and a
sub-request ``_bulk`` did not handle (429, 5xx) is sent again alone, with that recovery.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import AuthError, RecordRefused, ServerError
from ..transport import Reply, Request
from .base import RunJob
from .chargeover_bulk import Batcher, Sub, parse
from .chargeover_mapping import API, by_key

__all__ = ["Calls", "field_of"]

_FIELD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(?:\[[0-9]+\])?(?:\.[A-Za-z_][A-Za-z0-9_]*)*): ")


def field_of(message: str) -> str:
    """The field a ChargeOver message names: its envelope has no field of its own, and its
    validation messages lead with it (``line_items[0].item_id: no item 7 ...``)."""
    match = _FIELD.match(message)
    return match.group(1) if match else ""


class Calls:
    """The run's requests to ChargeOver; shared by every ``upload`` of the run (one per process)."""

    def __init__(self, batcher: Batcher | None, auth_hint: str) -> None:
        self.batcher = batcher
        self.auth_hint = auth_hint
        self.recovered: set[tuple[str, str]] = set()  # (kind, key) made by this run, answer lost

    async def create(self, job: RunJob, kind: str, body: dict[str, Any], key: str) -> tuple[str, bool, Any]:
        """POST ``body`` as a new ``kind``: ``(id, existed, object if it was looked up)``."""
        lookup = by_key(kind, key)
        sub = await self.batched(job, "POST", f"{API}/{kind}", body, lookup)
        if sub is not None and (sub.code == 429 or sub.code >= 500 or sub.code < 200):
            sub = None  # not handled, or maybe committed: once more alone, with recovery
        if sub is None:
            sub = await self.direct(job, "POST", f"{API}/{kind}", body, lookup, stage=kind)
        if sub.recovered:
            self.recovered.add((kind, key))  # our own create, its answer lost
            return str(sub.response[f"{kind}_id"]), True, sub.response
        made = 200 <= sub.code < 300
        if made and isinstance(sub.response, dict) and sub.response.get("id") is not None:
            return str(sub.response["id"]), False, None
        if made or sub.code == 400:  # made without saying its id; or the key is taken: by us, or not
            found = await self.get(job, lookup, stage=kind)
            if isinstance(found, dict):
                return str(found[f"{kind}_id"]), not made, found
        raise self.refused(sub, kind)

    async def get(self, job: RunJob, uri: str, *, stage: str, direct: bool = False) -> Any:
        """The ``response`` of a GET, or None for a 404."""
        sub = None if direct else await self.batched(job, "GET", uri, None, None)
        if sub is not None:
            if 200 <= sub.code < 300 or sub.code == 404:
                return sub.response if sub.code != 404 else None
            if 400 <= sub.code < 500 and sub.code != 429:
                raise self.refused(sub, stage)
        sub = await self.direct(job, "GET", uri, None, None, stage=stage)
        if sub.code == 404:
            return None
        if not 200 <= sub.code < 300:
            raise self.refused(sub, stage)
        return sub.response

    async def batched(self, job: RunJob, method: str, uri: str, payload: Any, lookup: str | None) -> Sub | None:
        """The call's answer through ``_bulk``; None when batching is off or the account has no
        ``_bulk`` endpoint (404/405: nothing was run, batching stops for this run)."""
        if self.batcher is None:
            return None
        try:
            return await self.batcher.call(job, method, uri, payload, lookup=lookup)
        except RecordRefused as exc:
            if exc.stage != "bulk" or exc.status not in (404, 405):
                raise
            self.batcher = None
            return None

    async def direct(self, job: RunJob, method: str, uri: str, payload: Any, lookup: str | None,
                     *, stage: str) -> Sub:
        """One request outside ``_bulk``; a lost create is looked up by key before a resend."""
        found: Any = None

        async def recover() -> Reply | None:
            nonlocal found
            assert lookup is not None
            found = await self.get(job, lookup, stage=stage)
            return Reply(200, {}, b"") if isinstance(found, dict) else None

        req = Request(method, uri, json=payload, kind="read" if method == "GET" else "write")
        try:
            reply = await job.send(req, stage=stage, recover=recover if lookup else None)
        except RecordRefused as exc:
            return Sub(exc.status, exc.api_message, None)
        if isinstance(found, dict):
            return Sub(200, "", found, recovered=True)
        data = parse(reply.content)
        return Sub(reply.status, "", data.get("response") if isinstance(data, dict) else None)

    def refused(self, sub: Sub, stage: str) -> Exception:
        message = sub.message or f"HTTP {sub.code}"
        if sub.code in (401, 403):
            return AuthError(sub.code, message, self.auth_hint)
        if 400 <= sub.code < 500:
            return RecordRefused(sub.code, message, stage=stage, field=field_of(message))
        return ServerError(sub.code, message)
