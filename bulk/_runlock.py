"""One uploading process per run directory of ``--processes N``: a lock the kernel drops when its holder dies.

:func:`hold_dir` takes an exclusive ``flock`` on ``<dir>/upload.lock`` for as long as the
returned file stays open (the process's life: the kernel releases it however the process ends,
SIGKILL and the OOM killer included, so a stale lock cannot outlive its holder). The parent of
``--processes N`` holds the job's directory, each shard worker its shard's: a second run of the
same command, or a resumed run while a killed run's worker still lives (a platform without
``PR_SET_PDEATHSIG``, say), would send a record that process may be sending too, and a settle
wait (anny's) counts only from the requests of processes that are gone. It waits
:data:`WAIT_S` for the holder to end (a killed run's worker dies a moment after its parent),
then refuses with a :class:`~bulk.errors.ConfigError` before anything is sent. Without
``fcntl`` (Windows) there is no lock.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import IO

from .errors import ConfigError

__all__ = ["LOCK_NAME", "WAIT_S", "hold_dir"]

LOCK_NAME = "upload.lock"
#: how long a run waits for another process's lock on its directory before it refuses
WAIT_S = 5.0


def hold_dir(run_dir: Path, *, wait: float = WAIT_S) -> IO[bytes] | None:
    """Lock ``run_dir`` for this process (keep the returned file open); None without ``fcntl``."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks of this kind
        return None
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        f = open(run_dir / LOCK_NAME, "a+b")  # noqa: SIM115 (held open for the process's life)
    except OSError as exc:
        raise ConfigError(f"cannot create the run directory {run_dir}: {exc.strerror or exc}") from None
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                f.close()
                raise ConfigError(f"another bulk process is still uploading into {run_dir}: let it finish "
                                  "(or stop it), then run the same command again") from None
            time.sleep(0.05)  # the holder's exit is no event this process could wait on
    f.truncate(0)
    f.write(f"{os.getpid()}\n".encode())
    f.flush()
    return f
