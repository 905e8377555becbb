"""SIGINT/SIGTERM during an upload run: the first stops reading, a second (or a 10 s grace) stops now.

:func:`watch` is one task of a run (:class:`bulk.pipeline.Run`): on the first signal it sets
``run.stopping`` and calls ``stop_reading`` (the producer reads no more, a read waiting for a
stalled pipe included; the workers start nothing new, records in flight finish) and notes it;
a second signal, or 10 s without one, calls ``cancel_work`` (the run's work is cancelled: what
is unfinished stays unfinished, the next run does it). Exit 130 is the run's to decide.

:func:`taken` is the command's (``bulk upload``): it takes both signals for the event loop from
the command's first moment on the loop to its last, so that no signal meets the handlers a run's
own watcher would leave around it. Without it a signal before the run's watcher was up met
asyncio.Runner's SIGINT handler (the whole task cancelled; a second SIGINT raised
KeyboardInterrupt in whatever code ran, cleanup included) or SIGTERM's default action (the
process killed, nothing said); and one after the watcher's end met Python's default handlers
again (``remove_signal_handler`` restores ``default_int_handler`` / ``SIG_DFL``, not the Runner's:
a KeyboardInterrupt in the middle of the last checkpoint). Under :func:`taken`, a signal before
the run (while the command checks, starts the embedded sandbox, waits for the run directory's
lock) stops the command at its next await (:attr:`Hub.interrupted`); one from
:meth:`Hub.to_run` on is the run's, queued until its watcher takes it (a signal just before the
run stops it as soon as it starts, gracefully: summary, outputs, exit 130); one after the
watcher's end is ignored (what is left is the run's own bounded end: its checkpoint and report),
and a second one then exits at once (``os._exit(130)``: a hung final fsync must not need SIGKILL,
and the run's files survive SIGKILL by design).
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from contextvars import ContextVar

import anyio
from anyio import CancelScope
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._worker import Stoppable
from .progress import ProgressSink

__all__ = ["GRACE_S", "Hub", "current", "taken", "watch"]

#: after the first signal, how long records in flight may take before the run stops anyway
GRACE_S = 10

SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: the exit code of a command stopped by a second signal after its run's watcher ended (EXIT_INTERRUPTED)
_EXIT_NOW = 130


class Hub:
    """Where the command's signals go (see the module docstring): made by :func:`taken`."""

    def __init__(self, scope: CancelScope) -> None:
        self._scope = scope
        #: a signal came before the run: the command was stopped (its scope cancelled)
        self.interrupted = False
        self._for_run = False
        self._pending: list[signal.Signals] = []
        self._watcher: MemoryObjectSendStream[signal.Signals] | None = None
        #: the run's watcher has ended; then how many signals came since
        self._ended = False
        self._after_end = 0

    def to_run(self) -> None:
        """From now on a signal is the run's: queued until its watcher takes it (call it when
        nothing stands between the command and :meth:`bulk.pipeline.Run.execute`)."""
        self._for_run = True
        self._ended = False

    def deliver(self, sig: signal.Signals) -> None:
        if self._watcher is not None:
            self._watcher.send_nowait(sig)
        elif self._ended:
            # The run is finishing (its checkpoint, merge, report: bounded, unless a disk hangs):
            # the first signal is ignored; a second means it, and nothing here needs a clean exit.
            self._after_end += 1
            if self._after_end >= 2:
                os._exit(_EXIT_NOW)
        elif self._for_run:
            self._pending.append(sig)  # for the watcher still to come
        else:
            self.interrupted = True
            self._scope.cancel()

    @contextmanager
    def attached(self) -> Iterator[MemoryObjectReceiveStream[signal.Signals]]:
        """The run's signals, those queued for it first, while the ``with`` lasts."""
        send, receive = anyio.create_memory_object_stream[signal.Signals](math.inf)
        with send, receive:
            for sig in self._pending:
                send.send_nowait(sig)
            self._pending.clear()
            self._watcher = send
            try:
                yield receive
            finally:
                self._watcher = None
                self._ended = True


_HUB: ContextVar[Hub | None] = ContextVar("bulk_signal_hub", default=None)


def current() -> Hub | None:
    """The hub of the command's :func:`taken` this task runs under, if any."""
    return _HUB.get()


@asynccontextmanager
async def taken() -> AsyncIterator[Hub]:
    """SIGINT and SIGTERM go to the event loop, then to the :class:`Hub` yielded, until the
    ``with`` ends. A signal before :meth:`Hub.to_run` cancels the body (the ``with`` then ends
    normally, ``interrupted`` set). Off the main thread (signals cannot be received there) the
    hub receives nothing: the caller handles signals."""
    with anyio.CancelScope() as scope, ExitStack() as stack:
        hub = Hub(scope)
        signals: AsyncIterator[signal.Signals] | None
        try:
            signals = stack.enter_context(anyio.open_signal_receiver(*SIGNALS))
        except (ValueError, NotImplementedError):  # not the main thread
            signals = None
        error: BaseException | None = None
        try:
            async with anyio.create_task_group() as tg:
                if signals is not None:
                    tg.start_soon(_forward, signals, hub)
                token = _HUB.set(hub)
                try:
                    yield hub
                finally:
                    _HUB.reset(token)
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The task group wraps the body's own exception (the forwarder raises none): the
            # caller gets it as the body raised it (a ConfigError is exit 2, not a group).
            if len(group.exceptions) != 1:
                raise
            error = group.exceptions[0]
        if error is not None:
            # Raised here, out of the ``except``: its __cause__ and __context__ stay the body's
            # (``raise ... from None`` inside would have overwritten them).
            raise error


async def _forward(signals: AsyncIterator[signal.Signals], hub: Hub) -> None:
    async for sig in signals:
        hub.deliver(sig)


async def watch(run: Stoppable, progress: ProgressSink | None, cancel_work: Callable[[], None],
                stop_reading: Callable[[], None] = lambda: None) -> None:
    """Until cancelled: handle SIGINT/SIGTERM as the module says, from the command's
    :func:`taken` when there is one. Off the main thread (signals cannot be received there) it
    only waits: the caller handles signals."""
    hub = current()
    if hub is not None:
        with hub.attached() as received:
            await _handle(received, run, progress, stop_reading)
    else:
        try:
            with anyio.open_signal_receiver(*SIGNALS) as signals:
                # A shard worker (bulk.procs) starts with both blocked: one that came early is delivered now.
                signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
                await _handle(signals, run, progress, stop_reading)
        except (ValueError, NotImplementedError):
            await anyio.sleep_forever()  # not the main thread: the caller handles signals
            return
    cancel_work()


async def _handle(signals: AsyncIterator[signal.Signals], run: Stoppable, progress: ProgressSink | None,
                  stop_reading: Callable[[], None]) -> None:
    """Return at the second signal, or :data:`GRACE_S` after the first (which stops the reading)."""
    async for _ in signals:
        if run.stopping:
            return  # second signal: stop now
        run.stopping = True
        stop_reading()  # a read waiting for input (a stalled pipe) would hold the run for the grace
        if progress:
            progress.note("interrupted: finishing requests in flight (again to stop now)")
        with anyio.move_on_after(GRACE_S):
            async for _ in signals:
                return
        return
