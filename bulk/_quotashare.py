"""One quota's counts shared by the processes of one job (``--processes N``).

A :class:`~bulk.spacing.QuotaGate` keeps the requests in flight within what the API last said
is left (``X-RateLimit-Remaining``). That is sound in one process, which sees every request in
flight. N shard workers of one job spend one API key's quota, but each sees only its own: two
gates that each read "5 left, 3 of mine in flight" send 4 together. So with ``--processes N``
the gates count the job's in flight and read the least of the processes' last Remaining, from one
file of the job, ``<out>/quota.bin``: N records, one a process, each written only by its
own process, all read and changed under an ``flock`` of the file, so a check and its count are
one step across the processes::

    pid, its requests in flight, its last answer's Remaining (-1: none seen)

The parent writes the file anew (zeros) before it starts the workers (:func:`reset`), so a
killed run's counts never reach its resume; a record whose process is gone counts nothing in
flight. Each worker binds its record for its run (:func:`bind`, a context variable the gate
reads when it is made, in the target's ``start_run``). ``--shard K/N`` runs, which may run
on other machines or one after another, share nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import os
import struct
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError
from .outputs import write_atomic

__all__ = ["QuotaShare", "bind", "current", "reset"]

_RECORD = struct.Struct("<qqq")  # pid, in flight, remaining (-1: none)
_CURRENT: contextvars.ContextVar[QuotaShare | None] = contextvars.ContextVar("bulk_quota_share", default=None)


def reset(path: Path, processes: int) -> None:
    """The job's file, every count zero (the parent, before it starts the workers)."""
    write_atomic(path, _RECORD.pack(0, 0, -1) * processes)


def current() -> QuotaShare | None:
    """The running worker's share, None in one process (or a ``--shard K/N`` run)."""
    return _CURRENT.get()


@contextlib.contextmanager
def bind(path: Path, index: int) -> Iterator[QuotaShare]:
    """Within: this process's gates share the job's counts as record ``index`` of ``path``
    (:class:`~bulk.errors.OutputError`, a resumable stop, when that file cannot be used)."""
    try:
        share = QuotaShare(path, index)
    except (OSError, ValueError) as exc:
        raise OutputError(f"cannot use the job's quota file {path}: {getattr(exc, 'strerror', None) or exc}; "
                          "run the same command again") from None
    token = _CURRENT.set(share)
    try:
        yield share
    finally:
        _CURRENT.reset(token)
        share.close()


class QuotaShare:
    """This process's record in the job's quota file, and the job's counts read from it."""

    def __init__(self, path: Path, index: int) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self._index = index
        self._pid = os.getpid()
        self._inflight = 0
        size = os.fstat(self._fd).st_size
        if size % _RECORD.size or not 0 <= index < size // _RECORD.size:
            os.close(self._fd)
            raise ValueError(f"{path} has no record {index}")
        self._count = size // _RECORD.size

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[tuple[int, int, int]]]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # held for a read and a write of a few bytes
        try:
            data = os.pread(self._fd, _RECORD.size * self._count, 0)
            yield [_RECORD.unpack_from(data, i * _RECORD.size) for i in range(self._count)]
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _write(self, remaining: int) -> None:
        os.pwrite(self._fd, _RECORD.pack(self._pid, self._inflight, remaining), self._index * _RECORD.size)

    @staticmethod
    def _left(records: list[tuple[int, int, int]]) -> int | None:
        """The least of the processes' last Remaining, None before any: answers reach the
        processes in an order of their own, so the last one any process saw may be older
        than another's lower count (within a window Remaining only falls)."""
        seen = [remaining for _, _, remaining in records if remaining >= 0]
        return min(seen) if seen else None

    def remaining(self) -> int | None:
        """What is left by the job's processes' last answers (:meth:`_left`), None before any."""
        with self._locked() as records:
            return self._left(records)

    def observe(self, remaining: int) -> None:
        """An answer's Remaining, seen now by this process."""
        with self._locked():
            self._write(remaining)

    def enter(self) -> tuple[bool, int]:
        """Count one more request in flight if what is left (:meth:`_left`) covers the job's in flight
        (or none was seen); return (counted, the job's requests in flight before it)."""
        with self._locked() as records:
            inflight = sum(n for i, (pid, n, _) in enumerate(records)
                           if n > 0 and (i == self._index or _alive(pid)))
            left = self._left(records)
            if left is not None and left <= inflight:
                return False, inflight
            self._inflight += 1
            self._write(records[self._index][2])
            return True, inflight

    def leave(self) -> None:
        """One of this process's requests is no longer in flight (its answer, if any, was observed)."""
        with self._locked() as records:
            self._inflight -= 1
            self._write(records[self._index][2])


def _alive(pid: int) -> bool:
    """Whether the process of a record still runs (a killed worker's in flight ended with it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
