"""Upload processes: the network side of a run spread over several processes (``--processes``).

One process of ``bulk`` spends about two thirds of its CPU inside aiohttp, one core's worth
at a few thousand requests a second. When the API allows more than that (a local or
self-hosted API, a load test, a high rate limit), ``--processes N`` spreads the uploading
over the parent and N-1 child processes, and keeps everything that makes the run directory
*the job* in the parent:

    parent: read -> parse, validate, dedupe, shard -> route ─┬─> its own workers: target.upload
            watermark, outputs, tally, checkpoints           └─> child k: parse -> target.upload
                                        <── outcomes, progress, resolved ids ──┘

- **Routing.** A record goes to the process its ``target.affinity(record)`` hashes to (see
  :class:`Router`): every record of one customer goes to the same process, so a customer is
  still resolved (looked up or created) once, by one single-flight resolver, never raced.
- **Budget.** The parent also does the bookkeeping of every record, so it takes half a child's
  share (:func:`shares`) of the records, of every rate limit and of ``--concurrency``:
  together the processes stay within what one process would send. A 429 pauses the process
  that got it.
- **The parent stays the only writer** of the run directory. A child reports each record's
  outcome, its ``job.progress`` while in flight (so checkpoints keep the step a multi-step
  workflow reached) and what it resolved (kept in ``state.db``). It reads earlier runs'
  resolved ids from ``state.db`` read-only.
- **Stopping.** End of input: the parent closes its side of the socket; a child finishes its
  records and says ``bye``. SIGINT/SIGTERM to the parent: it sends SIGTERM to the children,
  which start nothing new (a record not started stays unfinished for the next run) and
  finish what is in flight. A child dies with its parent (Linux ``PR_SET_PDEATHSIG``), so no
  child of a killed run is still sending when the run is resumed. A child that ends without
  ``bye`` stops the run, resumable (exit 3).

Wire: frames over a socketpair. A frame is two big-endian u32 (header and payload lengths),
an orjson header, raw payload bytes. Parent -> child: first the settings (credentials travel
here, never in argv or the environment), then batches ``[[line, maybe_sent_before,
progress | null, size], ...]`` whose payload is the lines' bytes. Child -> parent: ``{"e":
events, "t": [requests, retries, throttled]}`` with events ``["ok", line, invoice_id,
customer_id, status, gross | null, existed]``, ``["fail", line, kind, stage, field, status,
message]``, (at most once a second, and in the last frame, ``"m"``: the requests' latency and
status counts since the last report, a :meth:`bulk.latency.Latency.to_json` delta), ``["progress", line, {...}]``, ``["resolved", ns, key, value]``,
``["abort", error]``, ``["bye"]``. A child has at most 4x its concurrency outstanding (sent,
not yet reported): the rest waits in the parent's bounded feed, not in socket buffers. As
that limit is above what a child can hold queued, the records it finishes on a stop always
make room for the parent to hand over the end of the input.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, Generic, TypeVar

import anyio
import orjson
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from . import errors
from .errors import AbortRun, BulkError, RecordError, RetryableError, find_bulk_error
from .feed import Feed
from .job import RecordJob, Session, failure, upload
from .pacing import Pacer
from .records import parse_record
from .targets.base import Created
from .transport import Transport

__all__ = ["Child", "ChildOutcome", "Router", "shares", "encode", "receive", "error_to_wire", "error_from_wire", "child"]

T = TypeVar("T")
_HEAD = struct.Struct(">II")
_CHILD = "from bulk.fanout import child; child()"


# --- the wire ---------------------------------------------------------------------------------
def encode(header: Any, payload: bytes = b"") -> bytes:
    head = orjson.dumps(header)
    return _HEAD.pack(len(head), len(payload)) + head + payload


async def receive(reader: BufferedByteReceiveStream) -> tuple[Any, bytes] | None:
    """The next frame, or None at the end of the stream."""
    try:
        head_len, payload_len = _HEAD.unpack(await reader.receive_exactly(8))
        header = orjson.loads(await reader.receive_exactly(head_len))
        payload = await reader.receive_exactly(payload_len) if payload_len else b""
    except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        return None
    return header, payload


def error_to_wire(exc: BulkError) -> list[Any]:
    attrs = {k: v for k, v in vars(exc).items() if v is None or isinstance(v, (str, int, float, bool))}
    return [type(exc).__name__, str(exc), attrs]


def error_from_wire(wire: list[Any]) -> BulkError:
    """The same error class, message and attributes the child raised."""
    name, message, attrs = wire
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, BulkError)):
        cls = AbortRun
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.__dict__.update(attrs)
    return exc


# --- the parent's side ---------------------------------------------------------------------------
class ChildOutcome:
    """What the parent does with a child's events (implemented by the run)."""

    def created(self, line: int, created: Created) -> None: ...
    def failed(self, line: int, kind: str, stage: str, field: str, status: int | str, message: str) -> None: ...
    def progress(self, line: int, progress: dict[str, Any]) -> None: ...
    def resolved(self, ns: str, key: str, value: str) -> None: ...
    def latency(self, delta: dict[str, Any]) -> None: ...


def shares(processes: int) -> tuple[float, float]:
    """(the parent's share, each child's share) of the records, the rate budget and the
    concurrency, for ``processes`` in all. The parent uploads too, but it also does the run's
    bookkeeping for every record (about a third of what uploading one costs), so it takes
    half a child's share: with 2 processes, 1/3 and 2/3."""
    if processes <= 1:
        return 1.0, 0.0
    total = 0.5 + (processes - 1)
    return 0.5 / total, 1 / total


class Router(Generic[T]):
    """The producer's side of one feed per process: an item goes to the feed its key hashes to,
    ``weights[i]`` slots of the hash space for ``feeds[i]`` (the same key, the same feed)."""

    def __init__(self, feeds: list[Feed[T]], key: Callable[[T], int], weights: list[int] | None = None) -> None:
        self.feeds = feeds
        self._key = key
        self._slots = [i for i, w in enumerate(weights or [1] * len(feeds)) for _ in range(w)]

    async def put(self, item: T) -> None:
        await self.feeds[self._slots[self._key(item) % len(self._slots)]].put(item)

    def close(self) -> None:
        for feed in self.feeds:
            feed.close()


class Child:
    """One upload process, seen from the parent. Create inside the run."""

    def __init__(self, index: int, *, redact: Callable[[str], str]) -> None:
        self.index = index
        self._redact = redact  # what a child prints when it dies may quote a credential
        # Its stderr goes to an unlinked file, never a pipe: a child that writes much (a warning
        # per request) can never block on it; only the end is read, if it dies.
        self._stderr = tempfile.TemporaryFile()
        self.traffic = (0, 0, 0)  # requests, retries, throttled: this child's totals
        self._process: anyio.abc.Process | None = None
        self._stream: SocketStream | None = None
        self._reader: BufferedByteReceiveStream | None = None
        self._stopped = False
        self._closed = False
        self.outstanding = 0  # records sent and not yet reported: bounded by the sender (wait_for_room)
        self._room: anyio.Event | None = None

    async def start(self, settings: dict[str, Any]) -> None:
        mine, theirs = socket.socketpair()
        try:
            self._process = await anyio.open_process(
                [sys.executable, "-c", _CHILD, str(theirs.fileno())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
                pass_fds=(theirs.fileno(),), start_new_session=True,  # Ctrl-C reaches the parent only
            )
        finally:
            theirs.close()
        self._stream = await SocketStream.from_socket(mine)
        self._reader = BufferedByteReceiveStream(self._stream)
        await self._stream.send(encode(settings))

    async def send(self, header: list[Any], payload: bytes) -> None:
        assert self._stream is not None
        try:
            await self._stream.send(encode(header, payload))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # the child is gone: collect() reports why

    async def wait_for_room(self, limit: int) -> None:
        """Wait until fewer than ``limit`` records are outstanding: records wait in the parent's
        feed, not in socket buffers, so the parent's memory stays bounded by the feeds."""
        while self.outstanding >= limit:
            self._room = room = anyio.Event()
            await room.wait()

    async def finish(self) -> None:
        """No more records for this child."""
        assert self._stream is not None
        try:
            await self._stream.send_eof()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass

    def stop(self) -> None:
        """Start nothing new; finish what is in flight (SIGTERM)."""
        if self._process is not None and self._process.returncode is None and not self._stopped:
            self._stopped = True
            self._process.send_signal(signal.SIGTERM)

    async def collect(self, outcome: ChildOutcome) -> None:
        """Apply the child's events until it says bye; raise what it aborted with."""
        assert self._reader is not None
        while (frame := await receive(self._reader)) is not None:
            header, _ = frame
            self.traffic = tuple(header["t"])  # type: ignore[assignment]
            if (delta := header.get("m")) is not None:
                outcome.latency(delta)
            for event in header["e"]:
                tag = event[0]
                if tag in ("ok", "fail"):
                    self.outstanding -= 1
                    if self._room is not None:
                        self._room.set()
                        self._room = None
                if tag == "ok":
                    _, line, invoice_id, customer_id, status, gross, existed, *action = event
                    outcome.created(line, Created(invoice_id, customer_id, status,
                                                  None if gross is None else Decimal(gross), existed,
                                                  action[0] if action else None))
                elif tag == "fail":
                    outcome.failed(*event[1:])
                elif tag == "progress":
                    outcome.progress(event[1], event[2])
                elif tag == "resolved":
                    outcome.resolved(event[1], event[2], event[3])
                elif tag == "abort":
                    raise error_from_wire(event[1])
                elif tag == "bye":
                    return
        raise AbortRun(f"upload process {self.index} ended unexpectedly ({await self._why()}): "
                       "run the same command again to resume")

    async def _why(self) -> str:
        assert self._process is not None
        with anyio.move_on_after(5):
            await self._process.wait()
        self._stderr.seek(max(0, self._stderr.seek(0, os.SEEK_END) - 4096))
        tail = self._stderr.read().decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
        return self._redact(f"exit code {self._process.returncode}; {tail[0][:300]}")

    async def close(self) -> None:
        """Reap the child; kill it if it is still running (the run was cancelled). Idempotent."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            if self._stream is not None:
                await self._stream.aclose()
            if self._process is not None:
                if self._process.returncode is None:
                    with anyio.move_on_after(10):
                        await self._process.wait()
                if self._process.returncode is None:
                    self._process.kill()
                    await self._process.wait()
                await self._process.aclose()
            self._stderr.close()


# --- the child's side ---------------------------------------------------------------------------
class _ChildState:
    """The resolve cache of one upload process: what it resolved (reported to the parent,
    which keeps it in state.db), then what earlier runs committed to state.db (read-only)."""

    def __init__(self, db_path: Path, report: Callable[[list[Any]], None], size: int = 20_000) -> None:
        self._cache: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._size = size
        self._report = report
        self._forgotten: set[tuple[str, str]] = set()
        self._db: sqlite3.Connection | None = None
        if db_path.exists():
            self._db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, check_same_thread=False)

    def get(self, ns: str, key: str) -> str | None:
        hit = self._cache.get((ns, key))
        if hit is not None or self._db is None or (ns, key) in self._forgotten:
            return hit
        try:
            row = self._db.execute("SELECT v FROM resolved WHERE ns=? AND k=?", (ns, key)).fetchone()
        except sqlite3.Error:
            return None  # the parent's store is the truth; a miss only costs a lookup
        return None if row is None else str(row[0])

    def forget(self, ns: str, key: str) -> None:
        # The API no longer knows it: resolved again, and that value reported, replaces it in
        # the parent's state.db; until then the read-only copy of it must not be used.
        self._cache.pop((ns, key), None)
        self._forgotten.add((ns, key))

    def put(self, ns: str, key: str, value: str) -> None:
        self._forgotten.discard((ns, key))
        self._cache[(ns, key)] = value
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        self._report(["resolved", ns, key, value])


class _Outbox:
    """The child's events, sent in batches (one frame per few milliseconds, not per event)."""

    def __init__(self, stream: SocketStream, counters: Any, inflight: dict[int, RecordJob],
                 latency: Any = None) -> None:
        self._stream = stream
        self._counters = counters
        self._latency = latency
        self._latency_sent = time.monotonic()
        self._inflight = inflight
        self._events: list[Any] = []
        self._wake = anyio.Event()
        self._sent_progress: dict[int, bytes] = {}

    def put(self, event: list[Any]) -> None:
        self._events.append(event)
        self._wake.set()

    def forget(self, line: int) -> None:
        self._sent_progress.pop(line, None)

    async def run(self) -> None:
        while True:
            with anyio.move_on_after(0.2):  # progress of long workflows goes out at least this often
                await self._wake.wait()
            await anyio.sleep(0.003)  # let a few outcomes gather
            await self.flush()

    async def flush(self) -> None:
        self._wake = anyio.Event()
        for line, job in self._inflight.items():
            if job.progress:
                snapshot = orjson.dumps(job.progress)
                if self._sent_progress.get(line) != snapshot:
                    self._sent_progress[line] = snapshot
                    self._events.append(["progress", line, job.progress])
        events, self._events = self._events, []
        c = self._counters
        frame: dict[str, Any] = {"e": events, "t": [c.requests, c.retries, c.throttled]}
        now = time.monotonic()
        last = bool(events) and events[-1][0] in ("bye", "abort")
        if self._latency is not None and (last or now - self._latency_sent >= 1.0):
            self._latency_sent = now
            if (delta := self._latency.take_delta()) is not None:
                frame["m"] = delta
        await self._stream.send(encode(frame))


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the parent dies (a killed run leaves no child sending)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() == 1:  # the parent died before the call above
        os._exit(1)


def child() -> None:
    """Entry point of an upload process (``python -c 'from bulk.fanout import child; child()' FD``)."""
    _die_with_parent()
    import gc

    from .config import loop_options
    from .targets import get_target  # noqa: F401 - imported before the freeze below

    gc.freeze()  # as the CLI does: the imports' objects out of the young collections
    gc.set_threshold(20_000, 50, 100)
    fd = int(sys.argv[1])
    anyio.run(_child_main, fd, backend_options=loop_options())


async def _child_main(fd: int) -> None:
    from .targets import get_target

    stream = await SocketStream.from_socket(socket.socket(fileno=fd))
    reader = BufferedByteReceiveStream(stream)
    first = await receive(reader)
    if first is None:
        return
    s = first[0]
    target = get_target(s["target"])(base_url=s["base_url"], credentials=s["credentials"], options=s["options"])
    pacer = Pacer(limits=s["limits"], concurrency=s["concurrency"], give_up_after=s["give_up_after"],
                  max_wait=s["max_wait"])
    inflight: dict[int, RecordJob] = {}
    feed: Feed[tuple[int, bool, dict[str, Any] | None, bytes]] = Feed(2 * s["concurrency"])
    stopping = False
    async with Transport(target.base_url, headers=target.headers(), timeout=s["timeout"],
                         connections=s["concurrency"], secrets=target.secrets()) as transport:
        outbox: _Outbox
        state = _ChildState(Path(s["state_db"]), lambda event: outbox.put(event))
        session = Session(transport=transport, pacer=pacer, target=target, state=state,  # type: ignore[arg-type]
                          attempts=s["attempts"], item_concurrency=s["item_concurrency"])
        outbox = _Outbox(stream, session.counters, inflight, session.latency)

        async def read() -> None:
            try:
                while (frame := await receive(reader)) is not None:
                    header, payload = frame
                    pos = 0
                    for line, maybe, progress, size in header:
                        await feed.put((line, maybe, progress, payload[pos:pos + size]))
                        pos += size
            finally:
                feed.close()

        async def work() -> None:
            while True:
                try:
                    line, maybe, progress, data = await feed.get()
                except anyio.EndOfStream:
                    return
                if stopping:
                    continue  # not started: the parent leaves it unfinished, the next run does it
                record = parse_record(data, line)
                job = RecordJob(session, record, progress=progress, maybe_sent_before=maybe)
                inflight[line] = job
                try:
                    created = await upload(target, job)
                except (RecordError, RetryableError) as exc:
                    outbox.put(["fail", line, *failure(exc, transport.redact)])
                else:
                    gross = created.reported_gross
                    outbox.put(["ok", line, created.invoice_id, created.customer_id, created.status,
                                None if gross is None else format(gross, "f"), created.existed, created.action])
                finally:
                    del inflight[line]
                    outbox.forget(line)

        async def watch_stop() -> None:
            nonlocal stopping
            with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    stopping = True

        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(outbox.run)
                outer.start_soon(watch_stop)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(read)
                    for _ in range(s["concurrency"]):
                        tg.start_soon(work)
                outer.cancel_scope.cancel()
            outbox.put(["bye"])
        except BulkError as exc:
            outbox.put(["abort", error_to_wire(exc)])
        except BaseExceptionGroup as group:
            found = find_bulk_error(group)
            if found is None:
                raise
            outbox.put(["abort", error_to_wire(found)])
        with anyio.CancelScope(shield=True):
            try:
                await outbox.flush()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass  # the parent is gone
            await stream.aclose()

