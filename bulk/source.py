"""Streaming NDJSON reader: a path, a ``.gz`` path or ``-`` (stdin), never loaded whole.

Yields one :class:`RawLine` per line with its 1-based number and byte offsets (offsets are in
the *decompressed* stream), so a resumed run can seek straight to the checkpoint's watermark
instead of re-reading finished work. A line longer than ``max_line_bytes`` is not kept in
memory: it is skipped up to its newline and reported as overlong (``data is None``).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import BinaryIO

import anyio.to_thread
import msgspec

from ._daemonread import DaemonReads
from .errors import ConfigError

__all__ = ["InputFile", "RawLine", "directory_message", "estimate_records", "fingerprint"]

#: what an input is read from: stdin's or a file's binary stream, or a gzip decompressor over one
_Raw = BinaryIO | gzip.GzipFile
_CHUNK = 1 << 20
# Lines a batch holds at most (InputFile.batches): 64 lines of ~1.5 kB, ~100 kB held at once
# beside the read's chunk, and 1/64 of the generator's per-step cost left a line.
_BATCH = 64


class RawLine(msgspec.Struct, gc=False):
    """One line of the input. A msgspec struct, not a dataclass: built in C, ~300 instructions
    against ~1,400 for a slotted dataclass's ``__init__`` (callgrind), once per line read
    (:meth:`InputFile.batches`). Same fields, positional or by keyword; not tracked by the
    garbage collector (it holds no container)."""

    line_no: int
    start: int  # offset of the line's first byte
    end: int  # offset just past its newline (or end of input)
    data: bytes | None  # the line without "\n"; None when longer than the limit
    length: int  # bytes in the line without "\n"


class InputFile:
    """One opened input. ``size`` is the decompressed size when known cheaply, else None.

    ``position`` is how many (decompressed) bytes have been read so far; :meth:`estimated_size`
    is the progress bar's total: the size of a file, an estimate for a ``.gz`` file from how
    far through the compressed bytes it is, the size of a file redirected to stdin, and None
    for a pipe.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.is_stdin = path == "-"
        self.position = 0
        self._gz_size = 0  # compressed size of a .gz input
        self._gz_read = 0  # compressed bytes consumed so far
        if not self.is_stdin and os.path.isdir(path):
            raise ConfigError(directory_message(path))
        try:
            if self.is_stdin:
                self._raw: _Raw = sys.stdin.buffer
                self.size: int | None = _regular_size(self._raw)
            elif path.endswith(".gz"):
                self._raw = gzip.open(path, "rb")  # noqa: SIM115 - closed in close()
                self.size = None
                self._gz_size = os.path.getsize(path)
            else:
                self._raw = open(path, "rb")  # noqa: SIM115
                self.size = _regular_size(self._raw)  # None for a FIFO (``<(zcat export.gz)``)
        except OSError as exc:
            raise ConfigError(f"cannot read input {path!r}: {exc.strerror or exc}") from None
        # A pipe (stdin, a FIFO) is read as its lines come: ``read(n)`` of a buffered pipe waits
        # for all n bytes (1 MiB: ~700 invoices of a slow exporter sat unsent until then);
        # ``os.read`` of its descriptor returns what one read gives, in a daemon thread
        # (bulk._daemonread), and takes no lock of the file object that the interpreter's exit
        # would wait for. A file is read whole chunks at a time, in anyio's worker threads.
        self._read: Callable[[int], Awaitable[bytes]] = (
            functools.partial(anyio.to_thread.run_sync, self._raw.read) if self.size is not None or self._gz_size
            else DaemonReads(functools.partial(os.read, self._raw.fileno())))

    def estimated_size(self) -> int | None:
        """The input's (decompressed) size in bytes: exact for a file, estimated for ``.gz``
        (bytes read so far over the fraction of the compressed file consumed), None when
        nothing tells (a pipe)."""
        if self.size is not None:
            return self.size
        if self._gz_size and self._gz_read:
            return max(self.position, round(self.position * self._gz_size / self._gz_read))
        return None

    def close(self) -> None:
        if not self.is_stdin:
            self._raw.close()

    async def lines(self, *, start: int = 0, first_line: int = 1, max_line_bytes: int) -> AsyncIterator[RawLine]:
        """Yield the lines from byte ``start`` (which must begin a line) numbered from ``first_line``."""
        async for batch in self.batches(start=start, first_line=first_line, max_line_bytes=max_line_bytes):
            for raw in batch:
                yield raw

    async def batches(self, *, start: int = 0, first_line: int = 1,
                      max_line_bytes: int) -> AsyncIterator[list[RawLine]]:
        """The lines of :meth:`lines`, in order, in lists of at most ``_BATCH``: one step of this
        async generator for many lines, not one a line (a step costs ~2,000 instructions, the
        producer's hot path). A list never spans two reads (each read's lines are handed on
        before the next read), so :attr:`position` is as :meth:`lines` leaves it."""
        f = self._raw
        batch: list[RawLine] = []
        add = batch.append
        if start:
            if self.is_stdin or isinstance(f, gzip.GzipFile):
                await _discard(self._read, start)  # cannot seek: read past finished work once
            else:
                f.seek(start)
        offset, line_no = start, first_line
        buf = b""
        skipping = -1  # >= 0 while discarding an overlong line: bytes discarded so far
        while True:
            chunk = await self._read(_CHUNK)
            if not chunk:
                break
            self.position = offset + len(buf) + len(chunk) + max(skipping, 0)
            if self._gz_size:
                self._gz_read = _compressed_position(f)
            buf = buf + chunk if buf else chunk
            pos = 0
            while True:
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    break
                if skipping >= 0:
                    length = skipping + nl - pos
                    add(RawLine(line_no, offset, offset + length + 1, None, length))
                    skipping = -1
                else:
                    length = nl - pos
                    data = buf[pos:nl] if length <= max_line_bytes else None
                    add(RawLine(line_no, offset, offset + length + 1, data, length))
                offset += length + 1
                line_no += 1
                pos = nl + 1
                if len(batch) >= _BATCH:
                    yield batch
                    batch = []
                    add = batch.append
            if batch:
                yield batch
                batch = []
                add = batch.append
            buf = buf[pos:]
            if skipping >= 0:
                skipping += len(buf)
                buf = b""
            elif len(buf) > max_line_bytes:
                skipping, buf = len(buf), b""
        if skipping >= 0:
            yield [RawLine(line_no, offset, offset + skipping, None, skipping)]
        elif buf:
            yield [RawLine(line_no, offset, offset + len(buf), buf, len(buf))]


def directory_message(path: str) -> str:
    return f"input {path!r} is a directory: give the NDJSON file inside it (or - for stdin)"


def _regular_size(f: BinaryIO) -> int | None:
    """The size of stdin when it is a redirected regular file (``< file``), else None."""
    try:
        st = os.fstat(f.fileno())
    except (OSError, ValueError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _compressed_position(f: _Raw) -> int:
    raw = getattr(f, "fileobj", None)  # gzip.GzipFile's underlying file
    try:
        return int(raw.tell()) if raw is not None else 0
    except (OSError, ValueError):
        return 0


def estimate_records(path: str, *, exact_up_to: int = 64 << 20) -> int | None:
    """How many lines ``path`` holds: counted in its first ``exact_up_to`` bytes (exact for a
    smaller file, ~20 ms for 64 MiB), the rest scaled by size; a ``.gz`` file's count is
    scaled by the compressed bytes those bytes took. None for stdin or an unreadable file."""
    if path == "-":
        return None
    lines, read, last = 0, 0, b"\n"
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as raw:
            f: BinaryIO = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw  # type: ignore[assignment]
            while read < exact_up_to and (block := f.read(_CHUNK)):
                lines += _newlines(block)
                read += len(block)
                last = block[-1:]
            whole = not f.read(1)
            used = raw.tell()
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    if whole:
        return lines + (last != b"\n")
    return round(lines * size / used) if used else None


def _newlines(block: bytes) -> int:
    """``block.count(b"\\n")``, faster for lines of typical length: ``bytes.count`` tests every
    byte (~6 instructions a byte, ~5,000 an 870-byte invoice), ``bytes.find`` jumps to the next
    newline with memchr (~150 instructions a line). Lines shorter than ~64 bytes on average
    would make the loop slower than the count: past one newline per 64 bytes it counts the rest."""
    find, count, most = block.find, 0, len(block) >> 6
    at = find(b"\n")
    while at >= 0:
        count += 1
        if count > most:
            return count + block.count(b"\n", at + 1)
        at = find(b"\n", at + 1)
    return count


async def _discard(read: Callable[[int], Awaitable[bytes]], n: int) -> None:
    while n > 0:
        got = await read(min(n, _CHUNK))
        if not got:
            raise ConfigError("the input is shorter than the checkpoint says: it changed since the last run")
        n -= len(got)


def fingerprint(path: str) -> str:
    """A cheap identity of the input file: its size plus a hash of 64 evenly spaced samples.

    Full hashing of a multi-GB export would cost seconds on every resume; sampling catches
    appends, truncation, re-exports and edits in all but a sliver of the file. stdin cannot be
    fingerprinted ahead of reading, so its fingerprint is the constant ``"stdin"``.
    """
    if path == "-":
        return "stdin"
    if os.path.isdir(path):
        raise ConfigError(directory_message(path))
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h.update(str(size).encode())
        sample = 1 << 16
        if size <= 64 * sample:
            for block in iter(lambda: f.read(_CHUNK), b""):
                h.update(block)
        else:
            for i in range(64):
                f.seek((size - sample) * i // 63)
                h.update(f.read(sample))
    return f"{size}:{h.hexdigest()}"
