"""One uploading process per run directory: a lock the kernel drops when its holder dies.

:func:`hold_dir` takes an exclusive ``flock`` on ``<dir>/upload.lock`` for as long as the
returned file stays open (the process's life: the kernel releases it however the process ends,
SIGKILL and the OOM killer included, so a stale lock cannot outlive its holder). A one-process
run holds its directory; the parent of ``--processes N`` holds the job's directory (and checks
every shard's is free before it starts a worker), each shard worker its shard's: a second run of the
same command, or a resumed run while a killed run's worker still lives (a platform without
``PR_SET_PDEATHSIG``, say), would send a record that process may be sending too, and a settle
wait (anny's) counts only from the requests of processes that are gone. It waits
:data:`WAIT_S` for the holder to end (a killed run's worker dies a moment after its parent),
then refuses with a :class:`~bulk.errors.ConfigError` before anything is sent. Without
``fcntl`` (Windows), or on a file system that has no ``flock`` (some NFS, FUSE), there is no
lock; a directory that cannot be created or opened is left to the run's own checks, which
report it as they always did (an unwritable ``--out`` is an :class:`~bulk.errors.OutputError`).
"""

from __future__ import annotations

import errno
import time
from pathlib import Path
from typing import IO

import anyio

from .errors import ConfigError

__all__ = ["LOCK_NAME", "WAIT_S", "hold_dir", "is_free"]

LOCK_NAME = "upload.lock"
#: how long a run waits for another process's lock on its directory before it refuses
WAIT_S = 5.0


async def hold_dir(run_dir: Path, *, wait: float = WAIT_S) -> IO[bytes] | None:
    """Lock ``run_dir`` for this process (keep the returned file open); None where no lock can
    be taken (see the module docstring)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks of this kind
        return None
    f = _open(run_dir)
    if f is None:
        return None  # the run's own checks name the unwritable directory
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.monotonic() >= deadline:
                f.close()
                raise ConfigError(f"another bulk process is still uploading into {run_dir}: let it finish "
                                  "(or stop it), then run the same command again") from None
            await anyio.sleep(0.05)  # the holder's exit is no event this process could wait on
        except OSError as exc:
            f.close()
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return None  # a file system without flock: no lock, as on Windows
            raise ConfigError(f"cannot lock the run directory {run_dir}: {exc.strerror or exc}") from None


def _open(run_dir: Path) -> IO[bytes] | None:
    """The lock file, opened (once, before anything is sent: a blocking call is fine here)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        return open(run_dir / LOCK_NAME, "a+b")
    except OSError:
        return None


async def is_free(run_dir: Path, *, wait: float = WAIT_S) -> None:
    """Wait (up to ``wait``) until no other process holds ``run_dir``, then let it go again:
    raises the :func:`hold_dir` refusal otherwise."""
    if (run_dir / LOCK_NAME).exists():
        lock = await hold_dir(run_dir, wait=wait)
        if lock is not None:
            lock.close()
