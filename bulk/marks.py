"""Write-ahead marks: what a run began that a kill may leave unrecorded (``marks.log``).

A checkpoint makes a run's outcomes durable about once a second; what a target did after the
last checkpoint is redone by the resumed run, which finds it at the API but cannot tell that
its own job made it. A mark closes that gap: it is appended and fsynced *before* the act it
announces (``job.mark(ns, key)``), so a resumed run asks ``job.marked_before(ns, key)`` ("did
an earlier run of this job begin this?") when it finds the result. One fsync per mark: meant
for rare acts (creating a reference a thousand invoices share), never for every record.

The file is the run directory's ``marks.log``: one JSON array ``[ns, key]`` a line, only ever
appended. A kill mid-append leaves at most a torn last line, which is cut on the next open;
the marks before it are whole.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import anyio
import orjson

from .errors import OutputError

__all__ = ["FILE", "MarkLog"]

FILE = "marks.log"


class MarkLog:
    """The marks of one run directory: those of earlier runs (read at open) and this run's."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / FILE
        self._earlier: set[tuple[str, str]] = set()
        try:
            fresh = not self.path.exists()
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            with open(self.path, "rb") as f:
                data = f.read()
            whole = data.rfind(b"\n") + 1
            if whole != len(data):  # a torn last line: the mark was never complete, its act never began
                os.truncate(self.path, whole)
            for line in data[:whole].splitlines():
                ns, key = orjson.loads(line)
                self._earlier.add((str(ns), str(key)))
            if fresh:  # the file's name durable in its directory
                dir_fd = os.open(run_dir, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except (OSError, ValueError) as exc:
            raise OutputError(f"cannot use {self.path}: {getattr(exc, 'strerror', None) or exc}") from None

    def marked_before(self, ns: str, key: str) -> bool:
        """True when an earlier run of this job marked ``ns``/``key``."""
        return (ns, key) in self._earlier

    async def mark(self, ns: str, key: str) -> None:
        """Append ``[ns, key]`` and fsync it; returns once the mark survives a crash."""
        if (ns, key) in self._earlier:
            return  # already durable
        try:
            os.write(self._fd, orjson.dumps([ns, key]) + b"\n")  # O_APPEND: one whole line per write
            await anyio.to_thread.run_sync(os.fsync, self._fd)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
