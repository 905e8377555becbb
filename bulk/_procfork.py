"""The shard workers of ``bulk upload --processes N``, forked before the event loop starts.

A worker started with ``python -c`` (:mod:`bulk.procs`' fallback) pays a new interpreter and
every import again (~0.25 s on 2 vCPUs, aiohttp alone ~0.11 s) after the parent has paid them:
that start-up was what two processes lost against one on a short run. The CLI decides the
job's number of processes before ``anyio.run`` (``bulk._cli.upload.planned_processes``) and,
where it is more than one, :func:`fork_workers` forks them while the process is still one thread
with no event loop, no run directory open and no connection: each is a copy of the parent with
everything imported, and starts in about a millisecond.

A forked worker waits, idle, on its own pipe for its :class:`~bulk._procworker.WorkerTask`,
which :mod:`bulk.procs` hands it (:meth:`ForkedWorker.hand`) once the job is planned; from there
it is the same worker as a spawned one (``bulk.cli.run_task``): SIGINT/SIGTERM blocked from its
first instruction until its run handles them, its own session, dead with its parent
(``PR_SET_PDEATHSIG``), its exit code its run's. A pool not used (a usage error, a dry run, an
interruption before the run) is closed (:meth:`Pool.close`): each idle worker reads the end of
its pipe and exits 0 at once. Where fork or ``os.pidfd_open`` (how the parent's event loop waits
for a child it did not spawn) is missing, or another thread runs, there is no pool and
bulk.procs spawns its workers. Either way a signal the parent forwards to a worker that does not
block or handle it yet waits for it to (:func:`signal_when_ready`): its default action would kill it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn

import anyio

__all__ = ["ForkedWorker", "Pool", "fork_workers", "forkable", "signal_when_ready", "takes_signals"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ForkedWorker:
    """One idle forked worker, as :mod:`bulk.procs` supervises it (``pid``, ``returncode``,
    :meth:`send_signal`, :meth:`wait`, like anyio's Process) and hands it its task."""

    def __init__(self, pid: int, task_fd: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._fd: int | None = task_fd

    async def hand(self, data: bytes) -> None:
        """Write the worker's task and close its pipe (its end of input). A worker that died
        meanwhile is not an error here: its exit code says so."""
        fd, self._fd = self._fd, None
        if fd is None:
            raise RuntimeError("a forked worker is handed one task")
        try:
            await anyio.to_thread.run_sync(_write_all, fd, data)  # a pipe holds 64 KiB; a task may be larger
        except OSError:
            pass  # EPIPE: it died at once
        finally:
            os.close(fd)

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)  # ProcessLookupError if it has ended (the caller allows for it)

    async def wait(self) -> int:
        """Its exit code (a negative signal number if a signal killed it), as anyio's Process gives it."""
        if self.returncode is None:
            try:
                pidfd = os.pidfd_open(self.pid)  # readable once the process has ended
            except ProcessLookupError:  # gone already: reaped by someone else
                pidfd = None
            if pidfd is not None:
                try:
                    await anyio.wait_readable(pidfd)
                finally:
                    os.close(pidfd)
            self._reap(0)
        assert self.returncode is not None
        return self.returncode

    def _reap(self, flags: int) -> None:
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:  # reaped by someone else (SIGCHLD ignored): how it ended is unknown
            self.returncode = 255 if self.returncode is None else self.returncode  # asyncio's code for that
            return
        if pid:
            self.returncode = os.waitstatus_to_exitcode(status)

    def _close_idle(self) -> bool:
        """Close the pipe of a worker never handed a task (it exits at once); True if it was idle."""
        fd, self._fd = self._fd, None
        if fd is None:
            return False
        os.close(fd)
        return True


class Pool:
    """The workers :func:`fork_workers` forked; :meth:`take` gives them to a run of N processes once."""

    def __init__(self, workers: list[ForkedWorker]) -> None:
        self._workers = workers
        self._taken = False

    def take(self, n: int) -> list[ForkedWorker] | None:
        """The N workers, if the pool has exactly N and they were not taken; else None (spawn instead)."""
        if self._taken or len(self._workers) != n:
            return None
        self._taken = True
        return list(self._workers)

    def close(self) -> None:
        """End the idle workers (their pipes closed, they exit 0 at once) and reap every worker
        that has ended; one still running dies with this process (``PR_SET_PDEATHSIG``)."""
        for w in self._workers:
            idle = w._close_idle()
            if w.returncode is None:
                w._reap(0 if idle else os.WNOHANG)


def forkable() -> bool:
    """Whether :func:`fork_workers` can fork here: fork, and a pidfd the kernel gives (Linux 5.3+;
    a seccomp profile may refuse it), so the parent's event loop can wait for its children.
    Whether another thread runs is known only at the fork itself."""
    if not (hasattr(os, "fork") and hasattr(os, "pidfd_open")):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    return True


def _one_thread() -> bool:
    """No other thread runs (Linux: /proc counts native ones too; elsewhere the threading module's)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return threading.active_count() == 1


def fork_workers(n: int, run: Callable[[int], int]) -> Pool | None:
    """Fork ``n`` idle workers; each runs ``run(task_fd)`` in the child and exits with its code.
    None where this process cannot fork them safely (see the module)."""
    if not (forkable() and _one_thread()):
        return None
    sys.stdout.flush()
    sys.stderr.flush()  # a buffered line would be written by every child too
    workers: list[ForkedWorker] = []
    # Blocked for the whole loop: each child has them blocked from its first instruction, and a
    # Ctrl-C now is raised only once every forked worker is in the pool (closed if it is raised).
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        for _ in range(n):
            r, w = os.pipe()
            try:
                pid = os.fork()
            except OSError:
                os.close(r)
                os.close(w)
                Pool(workers).close()
                return None
            if pid == 0:
                _child(r, w, workers, run)  # never returns
            os.close(r)
            workers.append(ForkedWorker(pid, w))
    finally:
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a pending signal's handler runs here
        except BaseException:
            Pool(workers).close()
            raise
    return Pool(workers)


def _child(r: int, w: int, siblings: list[ForkedWorker], run: Callable[[int], int]) -> NoReturn:
    """The forked worker: ``run(r)``, then exit with its code, as Python itself would exit."""
    code = 1
    try:
        os.close(w)
        for other in siblings:  # the siblings' pipes: their write ends must be the parent's alone
            if other._fd is not None:
                os.close(other._fd)
        os.setsid()  # its own session: a terminal's Ctrl-C reaches it through the parent only
        code = run(r)
    except SystemExit as exc:  # as the interpreter exits on it
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            with contextlib.suppress(BaseException):
                print(exc.code, file=sys.stderr)
    except BaseException:  # a traceback, then 1, as the interpreter; never back into the parent's code
        with contextlib.suppress(BaseException):
            import traceback

            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def takes_signals(pid: int) -> bool:
    """Whether the worker blocks or handles SIGTERM yet (Linux: /proc; elsewhere assumed)."""
    term = 1 << (signal.SIGTERM - 1)
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(int(ln.split()[1], 16) & term for ln in f if ln.startswith(("SigBlk:", "SigCgt:")))
    except (OSError, ValueError, IndexError):
        return True  # no /proc, or it is gone: send (ProcessLookupError is handled)


async def signal_when_ready(proc: Any, sig: signal.Signals) -> None:
    """Forward ``sig`` once the worker's first line has blocked it (a few ms after its start).
    A poll: another process's signal mask changes without any event this one could wait on."""
    while proc.returncode is None and not takes_signals(proc.pid):  # noqa: ASYNC110
        await anyio.sleep(0.005)
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
