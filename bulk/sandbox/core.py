"""The dialect framework: what every simulated API shares, and the few hooks a dialect fills.

A dialect subclasses :class:`Dialect`, sets ``name`` and ``problems`` (its error bodies), and
implements ``add_routes``, ``snapshot`` and ``clear``; it keeps its data in tables of
``self.durable`` (``self.durable.table(name)``, dicts) and names its counters in
``durable_values``, so the framework can keep them in ``config.state`` (see ``durable``); its
module exposes
``create_app(config)`` returning ``MyDialect(config).create_app()``. Everything else is
engine-owned (marked ``@final``): one aiohttp middleware runs this pipeline for every API
request, so a handler only ever sees authenticated, admitted, un-faulted requests::

    /_sandbox/* control route        -> handled, nothing else (no auth, faults, limits, counts)
    unknown path / method            -> problem NOT_FOUND (404) / METHOD_NOT_ALLOWED (405)
    credential() missing or refused  -> problem UNAUTHORIZED (401)
    read-only credential on a write  -> problem FORBIDDEN (403)
    rate limiter bucket empty        -> problem THROTTLED (429) + Retry-After
    throttle_rate hit                -> the same 429 (Retry-After: retry_after_override or 1)
    fail_rate hit                    -> problem SERVER_ERROR (500)
    drop_rate hit                    -> connection closed, no answer
    latency_ms (+ slow_ms if slow_rate hits)
                                     -> asyncio.sleep; for a write carrying an Idempotency-Key
                                        the sleep runs inside the key's in-flight window
                                        (see idempotent()), so a client that times out and
                                        retries meets the 409 "in progress"
    handler (raise SandboxProblem(kind) for a framework-shaped error)
    (every stored change saved, group commit: durable.committed(), before anything is answered)
    lose_rate hit on a 2xx POST      -> committed, then connection closed, no answer

Writes are POST/PUT/PATCH/DELETE; reads and writes have separate buckets per credential.
A slow request is still handled after its delay even if the client has gone away (aiohttp
does not cancel handlers), like a real server that commits after the client's timeout.

This module owns :class:`Dialect` (its hooks and engine methods); the pipeline above is built
by ``_pipeline``, and :class:`Problem`, :class:`SandboxProblem` and ``WRITE_METHODS`` live in
``_problem`` (all three importable from here, as before).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, final

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from bulk.sandbox import control
from bulk.sandbox._pipeline import DELAY as _DELAY
from bulk.sandbox._pipeline import pipeline_middleware
from bulk.sandbox._problem import WRITE_METHODS, Problem, SandboxProblem
from bulk.sandbox.config import SandboxConfig
from bulk.sandbox.durable import DurableStore
from bulk.sandbox.faults import Faults, RequestCounters
from bulk.sandbox.idempotency import IdempotencyStore, Verdict, fingerprint, parse_key
from bulk.sandbox.wire import MalformedJSON, dumps, loads_exact

__all__ = ["WRITE_METHODS", "Dialect", "Problem", "SandboxProblem"]

class Dialect:
    """One simulated API. Subclasses fill the hooks; the engine methods are final.

    Class attributes a dialect sets:
        name: the target name (``"agiled"``), reported by the state endpoint.
        problems: ``{Problem: (status, json_body)}`` for every :class:`Problem`; checked at
            construction, serialised once. Override :meth:`problem` for per-request bodies.
        content_type: of every JSON answer (``"application/json"``).
        idempotency_header: the request header carrying the key.
        durable_values: names of small attributes (id counters) kept with the tables; set
            by ``clear``, restored from ``config.state`` when the app is created.
    """

    name: ClassVar[str]
    problems: ClassVar[Mapping[Problem, tuple[int, Any]]]
    content_type: ClassVar[str] = "application/json"
    idempotency_header: ClassVar[str] = "Idempotency-Key"
    durable_values: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: SandboxConfig) -> None:
        missing = [kind.name for kind in Problem if kind not in self.problems]
        if missing:
            raise TypeError(f"{type(self).__name__}.problems lacks {', '.join(missing)}")
        self.config = config
        self.faults = Faults(config)
        self.counters = RequestCounters()
        self.durable = DurableStore(config.state, self.name)
        self.idempotency = IdempotencyStore(self.durable.table("idempotency"))
        self._problem_bodies = {kind: (status, dumps(body))
                                for kind, (status, body) in self.problems.items()}

    # --- hooks -------------------------------------------------------------------------

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Register the API's routes (paths relative to the dialect's root)."""
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        """Everything stored, JSON-ready (Decimals allowed), for ``GET /_sandbox/state``."""
        raise NotImplementedError

    def clear(self) -> None:
        """Set up the empty state (at construction, and at ``POST /_sandbox/reset``). Data goes
        into ``self.durable`` tables; ``self.durable.restored`` is true when they already hold
        a previous run's data: then seed nothing."""
        raise NotImplementedError

    def credential(self, request: web.Request) -> str | None:
        """The caller's secret, or None when absent. Default: ``Authorization: Bearer <x>``."""
        header = request.headers.get("Authorization")
        if header is None or header[:7].lower() != "bearer ":
            return None
        return header[7:].strip() or None

    def problem(self, kind: Problem, request: web.Request) -> web.Response:
        """The answer for ``kind``. Default: the ``problems`` table."""
        status, body = self._problem_bodies[kind]
        return web.Response(body=body, status=status, content_type=self.content_type)

    # --- engine ------------------------------------------------------------------------

    @final
    def create_app(self) -> web.Application:
        """The aiohttp app: the pipeline middleware, the control routes, the dialect's routes."""
        app = web.Application(middlewares=[self._middleware()])
        control.add_routes(app, self)
        self.add_routes(app.router)
        self.durable.restore_values(self, self.durable_values)
        self.commit()

        async def close(app: web.Application) -> None:
            self.durable.close()

        app.on_cleanup.append(close)
        return app

    @final
    def commit(self) -> None:
        """Save every stored change now (one transaction)."""
        self.durable.save_values(self, self.durable_values)
        self.durable.flush()

    @final
    async def committed(self) -> None:
        """Return once every stored change so far is saved (a group commit, see ``durable``);
        the pipeline awaits it after each request, before the answer goes out."""
        self.durable.save_values(self, self.durable_values)
        await self.durable.committed()

    @final
    def state(self) -> dict[str, Any]:
        with self.durable.reading():
            data = self.snapshot()
        return {
            "target": self.name,
            **data,
            "requests": self.counters.snapshot(),
            "idempotency_keys": len(self.idempotency),
            "faults": self.faults.settings.as_dict(),
        }

    @final
    def reset(self) -> None:
        """Forget data, counters and keys; refill the rate buckets; re-seed the fault RNG.
        Fault settings stay as they are."""
        self.durable.wipe()
        self.clear()
        self.counters.clear()
        self.idempotency.clear()
        self.commit()
        self.faults.limiter.refill()
        self.faults.rng.seed(self.config.seed)

    def delete_object(self, collection: str, ident: Any, *, recreate: bool) -> Any:
        """``POST /_sandbox/delete``: remove one stored object (``KeyError`` when there is none),
        or with ``recreate`` give it a new id; returns the new id or None. ``ValueError`` for a
        collection the dialect does not support (the default: none)."""
        raise ValueError(f"the {self.name} sandbox cannot delete {collection!r}")

    def update_faults(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        return self.faults.update(changes)

    @final
    def respond(self, data: Any, status: int = 200) -> web.Response:
        """A JSON answer in the dialect's content type."""
        return web.Response(body=dumps(data), status=status, content_type=self.content_type)

    @final
    async def read_json(self, request: web.Request, *, exact: bool = True) -> Any:
        """The parsed body; raises SandboxProblem(MALFORMED_JSON). ``exact``: numbers with a
        fraction become Decimal (use it for money); otherwise orjson (floats), faster."""
        body = await request.read()
        try:
            return loads_exact(body) if exact else orjson.loads(body)
        except (MalformedJSON, orjson.JSONDecodeError):
            raise SandboxProblem(Problem.MALFORMED_JSON) from None

    @final
    async def idempotent(self, request: web.Request, scope: str, body: Any,
                         create: Callable[[], web.Response]) -> web.Response:
        """Run ``create`` under the request's Idempotency-Key (see bulk.sandbox.idempotency).

        ``scope`` isolates callers (the organisation or credential); ``body`` is the parsed
        request body, fingerprinted. ``create`` validates and commits synchronously and
        returns the answer; only a 2xx is stored. Without the header, ``create`` just runs.
        Raises SandboxProblem for an invalid key, a mismatch or a key in flight.
        """
        raw = request.headers.get(self.idempotency_header)
        key = None if raw is None else parse_key(raw)
        if raw is not None and key is None:
            raise SandboxProblem(Problem.INVALID_IDEMPOTENCY_KEY)
        delay = request.pop(_DELAY, 0.0)
        if key is None:
            if delay:
                await asyncio.sleep(delay)
            return create()
        store = self.idempotency
        claim = store.begin((scope, request.method, request.path, key), fingerprint(body))
        if claim.verdict is Verdict.PROCEED:
            try:
                if delay:
                    await asyncio.sleep(delay)
                response = create()
            except BaseException:
                store.release(claim)
                raise
            body_bytes = response.body
            store.finish(claim, response.status,
                         body_bytes if isinstance(body_bytes, bytes) else b"",
                         response.content_type)
            return response
        if delay:
            await asyncio.sleep(delay)
        if claim.verdict is Verdict.REPLAY and claim.stored is not None:
            stored = claim.stored
            return web.Response(body=stored.body, status=stored.status,
                                content_type=stored.content_type)
        raise SandboxProblem(Problem.IDEMPOTENCY_IN_FLIGHT if claim.verdict is Verdict.IN_FLIGHT
                             else Problem.IDEMPOTENCY_MISMATCH)

    def _middleware(self) -> Middleware:
        return pipeline_middleware(self)
