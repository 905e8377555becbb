"""Simulators ("sandboxes") of the target APIs, served over real HTTP.

Used by ``bulk sandbox --target NAME``, by the tests, the demo and the benchmarks. A sandbox
never imports ``bulk.targets``, ``bulk.records`` or ``bulk.money``: it implements each API's
documented wire contract on its own, so it can catch the client's mistakes.

Public API::

    DIALECTS                       name -> module path (imported lazily)
    available() -> list[str]       the dialects whose module is present
    build_app(target, config=None) -> aiohttp.web.Application
    serve(target, config=None, host="127.0.0.1", port=0)   async context manager -> RunningSandbox
    run_forever(target, config=None, host="127.0.0.1", port=0, ready=None)   until cancelled
    SandboxConfig, SandboxConfigError

Adding a dialect: write ``bulk/sandbox/<name>.py`` with a :class:`bulk.sandbox.core.Dialect`
subclass and ``def create_app(config: SandboxConfig) -> web.Application: return
MyDialect(config).create_app()``, and list it in ``DIALECTS``, or (a plug-in target's
dialect) name the module in the ``bulk.sandbox`` entry-point group under the target's name. See ``core`` for the request
pipeline (auth, limits, faults), ``idempotency`` for the key store, ``control`` for
``/_sandbox/*`` and ``agiled`` for a complete example.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import entry_points
from typing import Any

import orjson
from aiohttp import web

from bulk.sandbox._site import TCPSite
from bulk.sandbox.config import SandboxConfig, SandboxConfigError
from bulk.sandbox.control import CONTROLS, AllTargets, Controls, add_routes
from bulk.sandbox.wire import dumps

__all__ = [
    "DIALECTS",
    "RunningSandbox",
    "SandboxConfig",
    "SandboxConfigError",
    "available",
    "build_app",
    "run_forever",
    "serve",
]

DIALECTS = {
    "agiled": "bulk.sandbox.agiled",
    "anny": "bulk.sandbox.anny",
    "chargeover": "bulk.sandbox.chargeover",
    "coperniq": "bulk.sandbox.coperniq",
}

# How long stopping waits for requests still being handled (e.g. a slow_ms fault) before
# cancelling them. A simulator has nothing worth waiting for.
_SHUTDOWN_TIMEOUT = 0.25


def available() -> list[str]:
    """The names in :data:`DIALECTS` whose module exists (found without importing it), then
    those of the ``bulk.sandbox`` entry points (plug-in dialects)."""
    names = [name for name, module in DIALECTS.items() if importlib.util.find_spec(module)]
    return names + sorted(set(_plugins()) - set(names))


def _plugins() -> dict[str, str]:
    """Plug-in dialects: entry point name -> module path (``value`` of the entry point)."""
    return {ep.name: ep.value for ep in entry_points(group="bulk.sandbox")}


def build_app(target: str, config: SandboxConfig | None = None) -> web.Application:
    """The aiohttp application of one dialect, or of every available one for ``"all"``
    (each under ``/<name>``, with the combined control endpoints at ``/_sandbox/*``).

    Raises :class:`SandboxConfigError` (a ValueError) for an unknown or absent target,
    listing the available ones.
    """
    config = config if config is not None else SandboxConfig()
    names = available()
    if target == "all":
        root = web.Application()
        members: dict[str, Controls] = {}
        for name in names:
            sub = _create(name, config)
            root.add_subapp(f"/{name}", sub)
            members[name] = sub[CONTROLS]
        add_routes(root, AllTargets(members))
        return root
    if target not in names:
        raise SandboxConfigError(
            f"unknown sandbox target {target!r}; available: {', '.join([*names, 'all'])}"
        )
    return _create(target, config)


def _create(name: str, config: SandboxConfig) -> web.Application:
    module = DIALECTS.get(name) or _plugins()[name]
    app: web.Application = importlib.import_module(module).create_app(config)
    return app


class RunningSandbox:
    """A sandbox listening on a real socket, as yielded by :func:`serve`.

    ``base_url`` is the root a client is pointed at (``http://127.0.0.1:43123``; for
    ``target="all"`` append ``/agiled`` etc.). The methods act in-process, no HTTP.
    """

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.base_url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def state(self) -> dict[str, Any]:
        """What ``GET /_sandbox/state`` answers, as parsed JSON (amounts are strings)."""
        return orjson.loads(dumps(self.app[CONTROLS].state()))  # type: ignore[no-any-return]

    async def reset(self) -> None:
        """What ``POST /_sandbox/reset`` does."""
        self.app[CONTROLS].reset()

    async def set_faults(self, **changes: Any) -> dict[str, Any]:
        """What ``POST /_sandbox/faults`` does; raises SandboxConfigError on a bad value."""
        return self.app[CONTROLS].update_faults(changes)

    def __repr__(self) -> str:
        return f"<RunningSandbox {self.base_url}>"


@asynccontextmanager
async def serve(target: str, config: SandboxConfig | None = None, host: str = "127.0.0.1",
                port: int = 0) -> AsyncIterator[RunningSandbox]:
    """Serve ``target`` inside the running event loop until the block exits.

    ``port=0`` picks a free port (the real one is ``.port``). Give an IP address as
    ``host``: a name resolving to several addresses would bind several ports. No access log.
    """
    app = build_app(target, config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=_SHUTDOWN_TIMEOUT)
    await runner.setup()
    try:
        site = TCPSite(runner, host, port, backlog=1024)
        await site.start()
        yield RunningSandbox(app, host, runner.addresses[0][1])
    finally:
        await runner.cleanup()
        await _release_sockets()


async def _release_sockets() -> None:
    """Let the connections the shutdown closed release their sockets: a transport closes its
    socket in a callback of the loop's next iteration, and a loop that ends first leaves the
    socket to the garbage collector ("unclosed transport" ResourceWarning, seen once in a test)."""
    for _ in range(3):
        await asyncio.sleep(0)


async def run_forever(target: str, config: SandboxConfig | None = None, host: str = "127.0.0.1",
                      port: int = 0, ready: Callable[[str], None] | None = None) -> None:
    """Serve until cancelled (the standalone ``bulk sandbox`` command).

    ``ready(base_url)`` is called once, when the socket listens. Under ``asyncio.run`` a
    SIGINT cancels this coroutine (Python >= 3.11), the server closes, and ``asyncio.run``
    raises KeyboardInterrupt for the caller to treat as a normal stop.
    """
    async with serve(target, config, host, port) as sandbox:
        if ready is not None:
            ready(sandbox.base_url)
        await asyncio.Event().wait()
