"""The ``/_sandbox/*`` endpoints: inspect and steer a running sandbox from tests and demos.

No auth, never faulted, limited or counted (the pipeline skips handlers marked with
:func:`control_route`). Answers are plain JSON, not a dialect's shape; errors are
``400 {"error": "<what is wrong>"}``.

``GET  /_sandbox/state``   everything stored, the request counters, the fault settings.
``POST /_sandbox/faults``  JSON object with any of latency_ms, fail_rate, drop_rate,
                           lose_rate, slow_rate, slow_ms, rate_limit, read_rate_limit, burst:
                           applied together (or not at all); answers the new settings.
``POST /_sandbox/reset``   forget stored data, counters and idempotency keys; answers the state.
``POST /_sandbox/delete``  ``{"collection": "contacts", "id": 7, "recreate": false}``: delete one
                           stored object as a user would in the vendor's UI (a contact deleted
                           between two runs); with ``recreate`` it comes back under a new id
                           (deleted and made again). Answers ``{"deleted": id, "new_id": ...}``;
                           404 when there is no such object. Each dialect says which collections
                           it supports (``Dialect.delete_object``).

With ``target="all"`` the root has the same three endpoints over every dialect (state as
``{"target": "all", "targets": {name: state}}``), and each dialect keeps its own under its
prefix (``/agiled/_sandbox/state``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import orjson
from aiohttp import web

from bulk.sandbox.config import SandboxConfigError
from bulk.sandbox.wire import json_response

__all__ = ["CONTROLS", "AllTargets", "Controls", "add_routes", "control_route"]


class Controls(Protocol):
    """What the control endpoints drive: a :class:`~bulk.sandbox.core.Dialect`, or several."""

    def state(self) -> dict[str, Any]: ...

    def reset(self) -> None: ...

    def update_faults(self, changes: Mapping[str, Any]) -> dict[str, Any]: ...

    def delete_object(self, collection: str, ident: Any, *, recreate: bool) -> Any: ...

    def commit(self) -> None: ...


CONTROLS = web.AppKey("sandbox.controls", Controls)


class AllTargets:
    """The controls of several dialects mounted side by side (``target="all"``)."""

    def __init__(self, members: Mapping[str, Controls]) -> None:
        self.members = dict(members)

    def state(self) -> dict[str, Any]:
        return {"target": "all", "targets": {name: m.state() for name, m in self.members.items()}}

    def reset(self) -> None:
        for member in self.members.values():
            member.reset()

    def commit(self) -> None:
        for member in self.members.values():
            member.commit()

    def delete_object(self, collection: str, ident: Any, *, recreate: bool) -> Any:
        raise ValueError("delete through the dialect's prefix, e.g. POST /agiled/_sandbox/delete")

    def update_faults(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        # Every member validates the same way, so an invalid change fails on the first one
        # before anything is applied.
        return {name: m.update_faults(changes) for name, m in self.members.items()}


Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


def control_route(handler: Route) -> Route:
    """Mark ``handler`` as a control route: the dialect pipeline lets it through untouched."""
    handler.sandbox_control = True  # type: ignore[attr-defined]
    return handler


def _error(message: str) -> web.Response:
    return json_response({"error": message}, status=400)


@control_route
async def _get_state(request: web.Request) -> web.StreamResponse:
    return json_response(request.app[CONTROLS].state())


@control_route
async def _post_faults(request: web.Request) -> web.StreamResponse:
    try:
        changes = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _error("body must be a JSON object of fault settings")
    if not isinstance(changes, dict):
        return _error("body must be a JSON object of fault settings")
    try:
        return json_response(request.app[CONTROLS].update_faults(changes))
    except SandboxConfigError as exc:
        return _error(str(exc))


@control_route
async def _post_reset(request: web.Request) -> web.StreamResponse:
    controls = request.app[CONTROLS]
    controls.reset()
    return json_response(controls.state())


@control_route
async def _post_delete(request: web.Request) -> web.StreamResponse:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    if not (isinstance(body, dict) and isinstance(body.get("collection"), str) and "id" in body):
        return _error('body must be {"collection": NAME, "id": ID, "recreate": false}')
    controls = request.app[CONTROLS]
    try:
        new_id = controls.delete_object(body["collection"], body["id"], recreate=bool(body.get("recreate")))
    except KeyError:
        return json_response({"error": f"no {body['collection']} {body['id']!r}"}, status=404)
    except ValueError as exc:
        return _error(str(exc))
    controls.commit()  # durable before it is answered, like every change the API makes
    return json_response({"deleted": body["id"], "new_id": new_id})


def add_routes(app: web.Application, controls: Controls) -> None:
    """Add the control endpoints to ``app``, driving ``controls``."""
    app[CONTROLS] = controls
    app.router.add_get("/_sandbox/state", _get_state)
    app.router.add_post("/_sandbox/faults", _post_faults)
    app.router.add_post("/_sandbox/reset", _post_reset)
    app.router.add_post("/_sandbox/delete", _post_delete)
