"""SIGINT/SIGTERM during an upload run: the first stops reading, a second (or a 10 s grace) stops now.

:func:`watch` is one task of a run (:class:`bulk.pipeline.Run`): on the first signal it sets
``run.stopping`` (the producer reads no more, the workers start nothing new, records in flight
finish) and notes it; a second signal, or 10 s without one, calls ``cancel_work`` (the run's
work is cancelled: what is unfinished stays unfinished, the next run does it). Exit 130 is the
run's to decide.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import anyio

from ._worker import Stoppable
from .progress import ProgressSink

__all__ = ["GRACE_S", "watch"]

#: after the first signal, how long records in flight may take before the run stops anyway
GRACE_S = 10


async def watch(run: Stoppable, progress: ProgressSink | None, cancel_work: Callable[[], None]) -> None:
    """Until cancelled: handle SIGINT/SIGTERM as the module says. Off the main thread (signals
    cannot be received there) it only waits: the caller handles signals."""
    try:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            # A shard worker (bulk.procs) starts with both blocked: one that came early is delivered now.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGINT, signal.SIGTERM))
            async for _ in signals:
                if run.stopping:
                    break  # second signal: stop now
                run.stopping = True
                if progress:
                    progress.note("interrupted: finishing requests in flight (again to stop now)")
                with anyio.move_on_after(GRACE_S):
                    async for _ in signals:
                        break
                break
    except (ValueError, NotImplementedError):
        await anyio.sleep_forever()  # not the main thread: the caller handles signals
        return
    cancel_work()
