"""A hostile network for tests: an aiohttp reverse proxy between ``bulk`` and a sandbox.

``with HostileProxy(upstream_base_url, seed=S) as px:`` listens on 127.0.0.1 port 0 in a
background thread; point bulk's ``--base-url`` at ``px.base_url``. It knows nothing of bulk or
of the sandboxes (it imports neither): it sees HTTP only, like a network would.

Per request (``/_sandbox/*`` excepted: always forwarded untouched and uncounted) it draws one
fate from ``(seed, identity, attempt)`` where identity = method + path with query + a hash of
the body, and attempt = how many times this proxy saw that identity before. The draw does not
depend on interleaving or timing, so a seed replays the same faults for the same requests:

- ``throttle``: answers 429 with ``Retry-After: 0`` (3 in 4) or ``1``, forwards nothing;
- ``unavailable``: answers 503, forwards nothing;
- ``reset``: aborts the client's connection, forwards nothing;
- ``drop_answer``: forwards, waits for the server's answer (it committed), then aborts the
  client's connection: the client sees a dead connection for a request that took effect;
- ``delay``: waits 50-600 ms, then forwards and answers. The wait and the forward run in a
  detached task, so a client killed meanwhile does not stop the request: it reaches the
  server after its sender died (``late`` counts those);
- ``forward``: a faithful forward.

After ``max_faults`` faulty fates of one identity its later attempts are forwarded faithfully,
so a bounded number of client retries always gets through (a fault test must end by itself).

Every forward is a detached task: once the proxy has the request, it reaches the server
whatever happens to the client (as bytes already on the wire would).

Progress hooks, for kills triggered by progress instead of wall clock (requests are numbered
1, 2, ... in arrival order, over the proxy's life):

- ``hold_after(k)``: the k-th request from now is held (not forwarded) until ``release()``;
  ``hold.reached`` (a threading.Event) is set when it arrives. Kill the client then release:
  the request is delivered late (fate ``held``), and the client could not have finished
  its run meanwhile, because it waits for that answer.
- ``release_after(hold, k)``: release the hold when the k-th request from now arrives (the
  next run's k-th request, say), before that request goes on. With ``late_lands_first=True``
  (for a client whose defence is a *settle* wait, anny's), that request, and every one
  arriving until then, goes on only once the released one has landed at the server (its
  answer came back), so the late request lands before that request (and any later one)
  reaches the server: however slow the machine is.
  With ``settle=S`` (anny's contract, time-based: a late request lands before, or within
  ``S`` seconds of, the resumed run's first answer) k is no trigger: the hold is released at a moment
  drawn from ``(seed, hold)`` in [0, S) after the first answer the server gives to a request
  that arrived after ``release_after`` (the next run's first answer; each process of that
  run starts its own settle clock at its own first answer, never before this one), whether
  anything arrives then or not (a timer, and every arrival checks the moment too, so a late
  timer never lets a request overtake it), whatever the client reads: a client that looks
  before its settle window has passed can miss it. With ``read_back`` as well (an object
  saying what a request writes and what one reads back, e.g. tests/anny_reads.AnnyObjects),
  a request that reads back an object the held request writes (``read_back.reads(request)
  & read_back.writes(held)``), arriving before that moment, releases it once the server has
  answered that read: the late request lands right after the client looked, the worst moment
  for a client that looked too early, and never before the moment for one that waits its
  window out. Whichever trigger comes first releases it (``k`` without ``settle``, ``time``
  or ``read`` with it);
  ``late_log`` says, per release, what released it, when (seconds after the next run's first
  answer) and which of the next run's requests the server had answered before the held one
  landed (:class:`LateDelivery`).
- ``hold_next_after(match)``: once a request for which ``match(method, path, body)`` is true
  has been answered (forwarded, its answer passed on), the next request to arrive is held as
  by ``hold_after`` (a client that sends one request at a time sends it after reading that
  answer: kill it then, and it died between an answer and its next step).
- ``hold_when(match)``: the first request from now for which ``match(method, path, body)`` is
  true is held as by ``hold_after``.
- ``hold.abandoned`` (a threading.Event, every hold): set when the client closed the held
  request's connection while the proxy still held it (it gave up: a timeout, say); the proxy
  polls the connection every few milliseconds. Release at that moment + d, and the request
  lands d seconds after its sender stopped waiting for it.
- ``drain()``: wait until no forward is in flight (nothing more can land at the server).
- ``gate(match)``: every request for which ``match(method, path, body)`` is true is stopped
  at the proxy (fate ``held``; ``gate.reached`` is set when the first arrives) and never
  forwarded: ``gate.drop()`` aborts their connections and removes the gate (later requests
  go on). Kill the client while its request waits at the gate, then drop it: that request
  never reaches the server, however slow or fast anything is.

``stats()`` returns what it did: per fate, per request kind (method + path pattern, ids
replaced by ``{id}``) and per (kind, fate), plus ``late`` (forwards that completed after the
client's connection was gone); ``journal`` lists every request's (number, kind, identity,
attempt, fate).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

from bulk.sandbox._site import TCPSite

__all__ = ["FATES", "FAULTS", "Gate", "Hold", "HostileProxy", "LateDelivery", "ReadBack", "request_kind"]

FAULTS = ("throttle", "unavailable", "reset", "drop_answer", "delay")
FATES = (*FAULTS, "forward", "held")
DEFAULT_RATES = {"throttle": 0.06, "unavailable": 0.05, "reset": 0.05, "drop_answer": 0.06, "delay": 0.12}
_HOP = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding",
                  "upgrade", "proxy-connection", "te", "trailer"})
_ID_SEGMENT = re.compile(r"^(?:[0-9]+|[0-9a-fA-F]{8}-[0-9a-fA-F-]{27,})$")


def request_kind(method: str, path: str, query_keys: list[str] | tuple[str, ...] = ()) -> str:
    """``POST /api/v1/invoices/{id}/send``: the method, the path with ids as ``{id}`` (and
    ``external_key:...`` as ``external_key:{key}``), then the sorted query parameter names."""
    parts = []
    for seg in path.split("/"):
        if _ID_SEGMENT.match(seg):
            seg = "{id}"
        elif ":" in seg:
            seg = seg.split(":", 1)[0] + ":{key}"
        parts.append(seg)
    keys = sorted(set(query_keys))
    return f"{method} {'/'.join(parts)}" + (f"?{'&'.join(keys)}" if keys else "")


class ReadBack(Protocol):
    """What a request writes and what one reads back, as object keys (``read_back`` of
    :class:`HostileProxy`; tests/anny_reads.AnnyObjects is anny's)."""

    def writes(self, method: str, path: str, query: str, body: bytes) -> set[str]: ...

    def reads(self, method: str, path: str, query: str) -> set[str]: ...

    def observe(self, method: str, path: str, status: int, answer: bytes) -> None: ...


@dataclass
class LateDelivery:
    """One held request released into the next run by :meth:`HostileProxy.release_after`:
    ``trigger`` ``"k"`` (the next run's k-th request), ``"time"`` (the moment drawn in the
    settle window) or ``"read"`` (a read-back of what the held request writes, answered
    before that moment); ``at`` the number of the request that released it (for ``"time"``:
    of the last request seen then), ``ordinal`` its place in the next run (1 = its first),
    ``trigger_kind`` its kind (``"(timer)"`` for a timer); ``delay`` the drawn moment and
    ``after_answer`` when the release came, both in seconds after the next run's first answer
    (None: no settle window, or no answer yet); ``landed_after`` the (number, kind) of the
    next run's requests the server had answered before the held one landed, and ``status``
    the server's answer to the held one (None until it landed, or none came)."""

    hold: int
    kind: str | None
    trigger: str
    at: int
    ordinal: int
    trigger_kind: str
    delay: float | None = None
    after_answer: float | None = None
    landed_after: list[tuple[int, str]] = field(default_factory=list)
    status: int | None = None
    landed: bool = False


@dataclass
class _Timed:
    """A hold with a settle window (``settle``): released ``delay`` s after ``start``, the first
    answer to a request numbered after ``base`` (the requests seen at ``release_after``)."""

    hold: Hold
    base: int
    delay: float
    start: float | None = None


@dataclass
class Hold:
    """One request number the proxy holds until :meth:`release` (see the module docstring)."""

    number: int
    reached: threading.Event = field(default_factory=threading.Event)
    abandoned: threading.Event = field(default_factory=threading.Event)  # the client closed it while held
    kind: str | None = None  # the held request's kind, once it arrived
    request: tuple[str, str, str, bytes] | None = None  # (method, path, query string, body), once it arrived
    _proxy: HostileProxy | None = None
    _released: bool = False

    def release(self) -> None:
        """Let the request go on (from any thread; idempotent). Before it arrived: it will not wait."""
        assert self._proxy is not None
        self._proxy._release(self)


@dataclass
class Gate:
    """Requests matching ``match`` stop here, never forwarded, until :meth:`drop` (see the module docstring)."""

    match: Callable[[str, str, bytes], bool]
    reached: threading.Event = field(default_factory=threading.Event)
    stopped: int = 0  # requests stopped at the gate so far
    _proxy: HostileProxy | None = None
    _numbers: list[int] = field(default_factory=list)
    _event: asyncio.Event | None = None  # in the proxy's loop, made by the first arrival

    def drop(self) -> None:
        """Abort every request stopped at the gate (none is forwarded) and remove the gate."""
        assert self._proxy is not None
        self._proxy._drop_gate(self)


class HostileProxy:
    """See the module docstring. ``rates`` maps each fault of :data:`FAULTS` to its
    probability per attempt (the rest is ``forward``); ``{}`` forwards everything (hooks only)."""

    def __init__(self, upstream: str, *, seed: int, rates: dict[str, float] | None = None,
                 max_faults: int = 3, delay_ms: tuple[int, int] = (50, 600), cover: bool = False,
                 late_lands_first: bool = False, read_back: ReadBack | None = None,
                 settle: float | None = None) -> None:
        split = urlsplit(upstream)
        self.upstream = f"{split.scheme}://{split.netloc}"
        self._prefix = split.path.rstrip("/")
        self.seed = seed
        self.rates = dict(DEFAULT_RATES if rates is None else rates)
        unknown = set(self.rates) - set(FAULTS)
        assert not unknown and sum(self.rates.values()) <= 1, self.rates
        self.max_faults = max_faults
        # cover: a request drawn "forward" takes instead a fault of ``rates`` not injected yet,
        # so every kind happens however few requests the run sends (a _bulk target sends few,
        # and its batch bodies, hence their draws, depend on timing).
        self.cover = cover
        self.delay_ms = delay_ms
        self.late_lands_first = late_lands_first
        self.read_back = read_back
        self.settle = settle
        self._timed: dict[int, _Timed] = {}  # id(hold) -> its settle window, until released
        self.late_log: list[LateDelivery] = []  # release_after's releases, in order
        self._read_watch: dict[int, tuple[Hold, int]] = {}  # id(hold) -> (hold, requests seen at release_after)
        self._deliveries: dict[int, LateDelivery] = {}  # hold number -> its entry, until it landed
        self._answered: list[int] = []  # request numbers whose forward the server answered, in order
        self.base_url = ""
        self._lock = threading.Lock()
        self._seen = 0
        self._attempts: Counter[str] = Counter()
        self._faulted: Counter[str] = Counter()
        self._fates: Counter[str] = Counter()
        self._kinds: Counter[str] = Counter()
        self._by_kind: Counter[tuple[str, str]] = Counter()
        self._late = 0
        self.journal: list[tuple[int, str, str, int, str]] = []  # (number, kind, identity, attempt, fate)
        self._holds: dict[int, Hold] = {}  # not arrived yet
        self._unreleased: set[int] = set()  # hold numbers, arrived or not
        self._all_holds: dict[int, Hold] = {}
        self._waiting: dict[int, asyncio.Event] = {}  # hold number -> its event, in the loop
        self._watchers: dict[int, list[Hold]] = {}  # request number -> holds it releases
        self._landing: dict[int, asyncio.Event] = {}  # late_lands_first: released holds not landed yet
        self._inflight: set[asyncio.Task[Any]] = set()
        self._gates: list[Gate] = []
        self._after: list[tuple[Callable[[str, str, bytes], bool], Hold]] = []  # hold_next_after, not armed
        self._armed: list[Hold] = []  # held by the next request to arrive
        self._when: list[tuple[Callable[[str, str, bytes], bool], Hold]] = []  # hold_when, not arrived
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True, name="hostile-proxy")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._session: ClientSession | None = None
        self._error: BaseException | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> HostileProxy:
        self._thread.start()
        if not self._ready.wait(15) or self._error is not None:
            raise RuntimeError(f"hostile proxy did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.release_all()
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    def _main(self) -> None:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._session = ClientSession(connector=TCPConnector(limit=0, force_close=False),
                                          timeout=ClientTimeout(total=120), auto_decompress=True)
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.25)
            await runner.setup()
            site = TCPSite(runner, "127.0.0.1", 0, backlog=1024)
            await site.start()
            self.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}{self._prefix}"
            self._ready.set()
            try:
                await self._stop.wait()
                for event in self._waiting.values():
                    event.set()
                if self._inflight:  # let what was sent land, bounded
                    await asyncio.wait(set(self._inflight), timeout=10)
            finally:
                await runner.cleanup()
                await self._session.close()

        try:
            asyncio.run(run())
        except BaseException as exc:  # surfaced by __enter__
            self._error = exc
            self._ready.set()

    # --- hooks (any thread) ----------------------------------------------------------------------

    @property
    def seen(self) -> int:
        """Requests seen so far (``/_sandbox/*`` excepted)."""
        with self._lock:
            return self._seen

    def hold_after(self, k: int) -> Hold:
        """Hold the k-th request from now (k >= 1)."""
        assert k >= 1
        with self._lock:
            hold = Hold(self._seen + k, _proxy=self)
            self._holds[hold.number] = hold
            self._unreleased.add(hold.number)
            self._all_holds[hold.number] = hold
        return hold

    def hold_next_after(self, match: Callable[[str, str, bytes], bool]) -> Hold:
        """Hold the first request to arrive after the answer to one matching ``match`` was passed on."""
        hold = Hold(0, _proxy=self)
        with self._lock:
            self._after.append((match, hold))
        return hold

    def answered(self) -> list[int]:
        """The numbers of the requests the server answered, in the order their answers came."""
        with self._lock:
            return list(self._answered)

    def hold_when(self, match: Callable[[str, str, bytes], bool]) -> Hold:
        """Hold the first request from now for which ``match(method, path, body)`` is true."""
        hold = Hold(0, _proxy=self)
        with self._lock:
            self._when.append((match, hold))
        return hold

    def release_after(self, hold: Hold, k: int, *, delay: float | None = None) -> None:
        """Release ``hold`` when the k-th request from now arrives (k >= 1), before it goes on;
        with ``settle`` instead at a moment in the settle window after the next run's first
        answer (``delay`` s, else drawn from the seed); with ``read_back``, or right after a
        read-back of what it writes was answered, if that comes first (module docstring)."""
        assert k >= 1
        with self._lock:
            if self.settle is None:
                self._watchers.setdefault(self._seen + k, []).append(hold)
            self._read_watch[id(hold)] = (hold, self._seen)
            if self.settle is not None:
                if delay is None:
                    delay = random.Random(f"{self.seed}|late|{hold.number}").random() * self.settle
                self._timed[id(hold)] = _Timed(hold, self._seen, delay)

    def _triggered(self, number: int, kind: str) -> list[Hold]:
        """The holds request ``number``'s arrival releases (the caller holds the lock), logged:
        its k-th watchers, and every hold whose settle moment has passed."""
        fired = [(h, "k") for h in self._watchers.pop(number, [])]
        now = time.monotonic()
        fired += [(t.hold, "time") for t in self._timed.values() if t.start is not None and now >= t.start + t.delay]
        return self._log_releases(fired, number, kind)

    def _log_releases(self, fired: list[tuple[Hold, str]], number: int, kind: str) -> list[Hold]:
        """Log each release of ``fired`` not done yet (the caller holds the lock): its entry in
        ``late_log``; the holds to release."""
        released: list[Hold] = []
        now = time.monotonic()
        for hold, trigger in fired:
            if hold._released or any(h is hold for h in released):
                continue
            released.append(hold)
            _, base = self._read_watch.pop(id(hold), (hold, number - 1))
            timed = self._timed.pop(id(hold), None)
            entry = LateDelivery(hold.number, hold.kind, trigger, number, number - base, kind)
            if timed is not None:
                entry.delay = timed.delay
                entry.after_answer = None if timed.start is None else now - timed.start
            self.late_log.append(entry)
            self._deliveries[hold.number] = entry
        return released

    def _let_go(self, holds: list[Hold]) -> None:
        """Release ``holds`` (in the loop); with ``late_lands_first`` every request arriving
        from now on waits until they landed."""
        for released in holds:
            if self.late_lands_first and released.number in self._waiting:  # arrived, still held
                self._landing.setdefault(released.number, asyncio.Event())
            released.release()

    def _answered_now(self, number: int) -> None:
        """Request ``number``'s answer from the server is passed on: the first such of the next
        run starts the settle clock of every hold armed before it arrived (in the loop)."""
        with self._lock:
            starting = [t for t in self._timed.values() if t.start is None and number > t.base]
            for t in starting:
                t.start = time.monotonic()
        assert self._loop is not None
        for t in starting:
            self._loop.call_later(t.delay, self._timer, t)

    def _timer(self, timed: _Timed) -> None:
        with self._lock:
            if self._timed.get(id(timed.hold)) is not timed:
                return  # released meanwhile
            holds = self._log_releases([(timed.hold, "time")], self._seen, "(timer)")
        self._let_go(holds)

    def _read_answered(self, number: int, kind: str, method: str, path: str, query: str) -> None:
        """A read-back was answered by the server: release what it reads (``read``, in the loop)."""
        if self.read_back is None:
            return
        reads = self.read_back.reads(method, path, query)
        if not reads:
            return
        with self._lock:
            fired = [(h, "read") for h, _ in self._read_watch.values()
                     if h.request is not None and reads & self.read_back.writes(*h.request)]
            holds = self._log_releases(fired, number, kind)
        self._let_go(holds)

    def release_all(self) -> None:
        """Release every hold not released yet, whether its request arrived or not."""
        with self._lock:
            holds = [self._all_holds[n] for n in self._unreleased]
        for hold in holds:
            hold.release()

    def _release(self, hold: Hold) -> None:
        with self._lock:
            if hold._released:
                return
            hold._released = True
            self._read_watch.pop(id(hold), None)
            self._timed.pop(id(hold), None)
            self._unreleased.discard(hold.number)
            self._holds.pop(hold.number, None)  # not arrived yet: it will not wait
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake, hold.number)

    def _wake(self, number: int) -> None:
        event = self._waiting.pop(number, None)
        if event is not None:
            event.set()

    def drain(self, timeout: float = 30) -> None:
        """Wait until every forward the proxy started has completed (held requests must be released)."""
        assert self._loop is not None

        async def idle() -> None:
            # ASYNC110: polls state that several paths change; an Event would need a signal in each of them
            while self._inflight or self._waiting:  # noqa: ASYNC110
                await asyncio.sleep(0.01)

        asyncio.run_coroutine_threadsafe(idle(), self._loop).result(timeout)

    def gate(self, match: Callable[[str, str, bytes], bool]) -> Gate:
        """Stop every request for which ``match(method, path, body)`` is true (``/_sandbox/*`` excepted)."""
        gate = Gate(match, _proxy=self)
        with self._lock:
            self._gates.append(gate)
        return gate

    def _drop_gate(self, gate: Gate) -> None:
        with self._lock:
            if gate in self._gates:
                self._gates.remove(gate)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._open_gate, gate)

    def _open_gate(self, gate: Gate) -> None:
        for number in gate._numbers:
            self._waiting.pop(number, None)
        if gate._event is not None:
            gate._event.set()

    def set_rates(self, **rates: float) -> None:
        with self._lock:
            self.rates = {k: v for k, v in {**self.rates, **rates}.items() if v}

    def stats(self) -> dict[str, Any]:
        """A copy of the counters: ``fates``, ``kinds``, ``by_kind`` ({kind: {fate: n}}), ``seen``, ``late``."""
        with self._lock:
            by_kind: dict[str, dict[str, int]] = {}
            for (kind, fate), n in self._by_kind.items():
                by_kind.setdefault(kind, {})[fate] = n
            return {"seen": self._seen, "late": self._late, "fates": dict(self._fates),
                    "kinds": dict(self._kinds), "by_kind": by_kind}

    # --- the fate of one request ------------------------------------------------------------------

    def _draw(self, identity: str, attempt: int) -> tuple[str, float]:
        rng = random.Random(f"{self.seed}|{identity}|{attempt}")
        roll, extra = rng.random(), rng.random()
        if self._faulted[identity] >= self.max_faults:
            return "forward", extra
        edge = 0.0
        for fault in FAULTS:
            edge += self.rates.get(fault, 0.0)
            if roll < edge:
                return fault, extra
        if self.cover:
            missing = [f for f in FAULTS if self.rates.get(f) and not self._fates.get(f)]
            if missing:
                return missing[0], extra
        return "forward", extra

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.path.startswith("/_sandbox/"):
            return await self._answer(request, await self._forward(request, body))
        identity = f"{request.method} {request.path_qs} {hashlib.sha256(body).hexdigest()}"
        kind = request_kind(request.method, request.path, list(request.query.keys()))
        with self._lock:
            self._seen += 1
            number = self._seen
            hold = self._holds.pop(number, None)
            if hold is None:
                when = next((pair for pair in self._when if pair[0](request.method, request.path, body)), None)
                if when is not None:
                    self._when.remove(when)
                    hold = when[1]
                elif self._armed:
                    hold = self._armed.pop(0)
            if hold is not None and not hold.number:
                hold.number = number
                self._unreleased.add(number)
                self._all_holds[number] = hold
            watchers = self._triggered(number, kind)
            gate = None
            if hold is None:
                gate = next((g for g in self._gates if g.match(request.method, request.path, body)), None)
            attempt = self._attempts[identity]
            self._attempts[identity] += 1
            if hold is not None or gate is not None:
                fate, extra = "held", 0.0
            else:
                fate, extra = self._draw(identity, attempt)
                if fate != "forward":
                    self._faulted[identity] += 1
            forwarded = fate in ("forward", "delay")
            arms = [(m, h) for m, h in self._after if forwarded and m(request.method, request.path, body)]
            self._after = [pair for pair in self._after if pair not in arms]
            self._fates[fate] += 1
            self._kinds[kind] += 1
            self._by_kind[(kind, fate)] += 1
            self.journal.append((number, kind, identity, attempt, fate))
        self._let_go(watchers)
        for landed in list(self._landing.values()):  # late_lands_first: the late request goes first
            await landed.wait()
        if gate is not None:
            if gate._event is None:
                gate._event = asyncio.Event()
            event = gate._event
            with self._lock:
                dropped = gate not in self._gates  # dropped between the match and here
            if not dropped:
                gate._numbers.append(number)
                self._waiting[number] = event
                gate.stopped += 1
                gate.reached.set()
                await event.wait()
            return self._abort(request)
        if hold is not None:
            hold.kind = kind
            hold.request = (request.method, request.path, request.query_string, body)
            event = asyncio.Event()
            self._waiting[number] = event
            if hold._released:  # released between the pop and here
                self._waiting.pop(number, None)
                event.set()
            hold.reached.set()
            watch = asyncio.create_task(self._watch_abandoned(request, hold))
            try:
                await event.wait()
            finally:
                watch.cancel()
            try:
                answer = await self._detached(request, body, 0, number)
            finally:
                self._log_landing(number)
                landed = self._landing.pop(number, None)
                if landed is not None:
                    landed.set()
            return await self._answer(request, answer, number)
        if fate == "throttle":
            return web.json_response({"message": "Too Many Attempts."}, status=429,
                                     headers={"Retry-After": "0" if extra < 0.75 else "1"})
        if fate == "unavailable":
            return web.json_response({"message": "Service Unavailable"}, status=503)
        if fate == "reset":
            return self._abort(request)
        if fate == "drop_answer":
            await self._detached(request, body, 0, number)
            return self._abort(request)
        delay = 0.0
        if fate == "delay":
            lo, hi = self.delay_ms
            delay = (lo + extra * (hi - lo)) / 1000
        answer = await self._detached(request, body, delay, number)
        if answer is not None:
            self._read_answered(number, kind, request.method, request.path, request.query_string)
        if arms:
            with self._lock:
                if answer is None:  # not answered: wait for another such request
                    self._after.extend(arms)
                else:
                    self._armed.extend(h for _, h in arms)
        return await self._answer(request, answer, number)

    @staticmethod
    async def _watch_abandoned(request: web.Request, hold: Hold) -> None:
        """Set ``hold.abandoned`` once the client closed the held request's connection."""
        # ASYNC110: the transport's closing is aiohttp's state, with no event to wait on
        while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        hold.abandoned.set()

    def _log_landing(self, number: int) -> None:
        """A held request released by release_after landed: say after which of the next run's."""
        with self._lock:
            entry = self._deliveries.pop(number, None)
            if entry is None:
                return
            base = entry.at - entry.ordinal
            entry.landed_after = [(n, self.journal[n - 1][1]) for n in self._answered if n > base and n != number]
            entry.landed = True

    async def _detached(self, request: web.Request, body: bytes, delay: float,
                        number: int) -> tuple[int, list[tuple[str, str]], bytes] | None:
        """Forward in a task of its own: the client going away cannot cancel it."""
        task = asyncio.create_task(self._late_forward(request, body, delay, number))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return await asyncio.shield(task)

    async def _late_forward(self, request: web.Request, body: bytes, delay: float,
                            number: int) -> tuple[int, list[tuple[str, str]], bytes] | None:
        if delay:
            await asyncio.sleep(delay)
        answer = await self._forward(request, body)
        if answer is not None:
            with self._lock:
                self._answered.append(number)
                entry = self._deliveries.get(number)
                if entry is not None:
                    entry.status = answer[0]
        transport = request.transport
        if transport is None or transport.is_closing():
            with self._lock:
                self._late += 1
        return answer

    async def _forward(self, request: web.Request, body: bytes) -> tuple[int, list[tuple[str, str]], bytes] | None:
        assert self._session is not None
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP]
        try:
            async with self._session.request(request.method, self.upstream + request.path_qs, headers=headers,
                                             data=body or None, allow_redirects=False) as resp:
                data = await resp.read()
                if self.read_back is not None:
                    self.read_back.observe(request.method, request.path, resp.status, data)
                return resp.status, [(k, v) for k, v in resp.headers.items() if k.lower() not in _HOP], data
        except Exception:  # the server itself dropped it (its own faults): so does the proxy
            return None

    async def _answer(self, request: web.Request, answer: tuple[int, list[tuple[str, str]], bytes] | None,
                      number: int = 0) -> web.StreamResponse:
        if answer is None:
            return self._abort(request)
        if number and self._timed:
            self._answered_now(number)
        status, headers, data = answer
        response = web.Response(status=status, body=data)
        for k, v in headers:
            response.headers.add(k, v)
        return response

    @staticmethod
    def _abort(request: web.Request) -> web.StreamResponse:
        """Kill the client's connection: it sees a reset, no answer."""
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=499)  # never reaches anyone
