"""The run directory's output files, written so a crash never leaves one corrupt.

- ``id_map.csv``          external id -> the API's invoice id (append + flush)
- ``failed.ndjson``       every rejected or failed input line, verbatim, ready to fix and re-feed
- ``failed_reasons.csv``  why: line, external id, kind, stage, field, HTTP status, message
- ``summary.json``        counts and totals (temp file, fsync, rename)

Every CSV cell is text a person opens with ``grep``, a spreadsheet or a terminal: a control
character in it (U+0000-U+001F, U+007F-U+009F: NUL, ESC, a newline...) is written as ``\\xNN``
(:func:`escape_cell`), nothing else is changed. ``failed.ndjson`` stays verbatim.

Appends are buffered and flushed + fsynced at each checkpoint, which records every file's size;
a resumed run first truncates each file back to the size its checkpoint recorded, so the
lines of records that were not checkpointed (and will be redone) never appear twice, and a
torn last line never survives. A run that stops because a write failed (disk full) does the
same on its way out: :meth:`Outputs.close` cuts each file back to its last complete flush, so
no torn row is left behind even before the next run.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, BinaryIO, TextIO

import orjson

from .errors import OutputError

__all__ = ["ID_MAP_HEADER", "LEGACY_ID_MAP_HEADER", "REASONS_HEADER", "Outputs", "atomic_writer", "escape_cell",
           "write_atomic"]

ID_MAP_HEADER = ["external_id", "invoice_id", "line", "customer_id", "status", "currency", "net", "tax", "gross",
                 "action"]
#: the ID map of bulk before ``action`` (a run directory it wrote is resumed in its own format)
LEGACY_ID_MAP_HEADER = ID_MAP_HEADER[:-1]
REASONS_HEADER = ["line", "external_id", "kind", "stage", "field", "http_status", "message"]


#: how many distinct repeating ID map cells :meth:`Outputs.created_row` remembers as plain
_PLAIN_CELLS = 4096

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _hex(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def escape_cell(value: Any) -> Any:
    """``value`` with every control character written as ``\\xNN`` (a str), else unchanged."""
    if isinstance(value, str) and _CONTROL.search(value):
        return _CONTROL.sub(_hex, value)
    return value


def _own_message(line: Any, field: Any, message: Any) -> Any:
    """The message without the ``line N: field:`` its own columns already hold."""
    if isinstance(message, str):
        prefix = f"line {line}: {field}: " if field else f"line {line}: "
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def _reason_row(reason: list[Any]) -> list[Any]:
    line, field, message = reason[0], reason[4], reason[6]
    row = [*reason[:6], _own_message(line, field, message), *reason[7:]]
    return [escape_cell(cell) for cell in row]


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file, fsync and rename (readers see old or new)."""
    with atomic_writer(path) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """Stream a file into place: a temp file beside ``path``, fsync, rename (readers see the old
    file or the whole new one). For outputs too big for :func:`write_atomic`'s one buffer."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def _csv_line(row: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(row)
    return out.getvalue()


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.readline()
    except OSError:
        return ""


def _cut_to(f: IO[Any], keep: int) -> None:
    if f.tell() != keep:
        f.truncate(keep)  # drop what the last checkpoint did not cover
        f.seek(keep)


class Outputs:
    """Appenders for the three growing files. Only the engine calls these (never a target)."""

    def __init__(self, run_dir: Path, sizes: dict[str, int] | None) -> None:
        self.dir = run_dir
        # Each file's size after its last complete flush: always a row boundary (see close()).
        self._whole = {name: (sizes or {}).get(name, 0)
                       for name in ("id_map.csv", "failed_reasons.csv", "failed.ndjson")}
        try:
            self._id_map = self._open_text("id_map.csv", sizes, ID_MAP_HEADER)
            self._reasons = self._open_text("failed_reasons.csv", sizes, REASONS_HEADER)
            self._failed = self._open_binary("failed.ndjson", sizes)
        except OSError as exc:
            raise OutputError(f"cannot write to the run directory {run_dir}: {exc.strerror or exc}") from None
        self._id_csv = csv.writer(self._id_map, lineterminator="\n")
        self._id_write = self._id_map.write
        # A run directory written before the `action` column keeps its format when resumed:
        # its rows go on without the column, so the file stays one table.
        self._legacy_id_map = _first_line(run_dir / "id_map.csv") == _csv_line(LEGACY_ID_MAP_HEADER)
        self._reasons_csv = csv.writer(self._reasons, lineterminator="\n")
        #: cells seen whole in a row written as its text: printable, no comma, no quote
        self._plain: set[str] = set()

    def _open_binary(self, name: str, sizes: dict[str, int] | None) -> BinaryIO:
        f = open(self.dir / name, "ab")  # noqa: SIM115 - an appender kept open until close()
        _cut_to(f, (sizes or {}).get(name, 0))
        return f

    def _open_text(self, name: str, sizes: dict[str, int] | None, header: list[str]) -> TextIO:
        f = open(self.dir / name, "a", encoding="utf-8", newline="")  # noqa: SIM115 - kept open until close()
        _cut_to(f, (sizes or {}).get(name, 0))
        if f.tell() == 0:
            csv.writer(f, lineterminator="\n").writerow(header)
        return f

    def created(self, row: list[Any]) -> None:
        """One ID map row, any cells (:data:`ID_MAP_HEADER`'s columns): the csv module's row."""
        # One search over the row's text cells instead of one call per cell: a control
        # character in any of them (rare) escapes the row cell by cell, as before. Every
        # control character is unprintable, so a printable text (C, one pass) skips the
        # regex search, which measured ~9,000 instructions a row (callgrind).
        text = "".join([cell for cell in row if isinstance(cell, str)])
        if not text.isprintable() and _CONTROL.search(text):
            row = [escape_cell(cell) for cell in row]
        try:
            self._id_csv.writerow(row[:-1] if self._legacy_id_map else row)
        except OSError as exc:
            raise OutputError(f"cannot append to id_map.csv: {exc.strerror or exc}") from None

    def created_row(self, external_id: str, invoice_id: str, line: int, customer_id: str, status: str,
                    currency: str, net: Decimal, tax: Decimal, gross: Decimal, action: str) -> None:
        """The same row as :meth:`created` of these cells, byte for byte, for less work.

        A row whose cells joined by commas are printable (no control character, so nothing to
        escape and no line break) and hold no comma but the nine separators and no quote is
        exactly what the csv module writes (it quotes a cell only for a comma, a quote or a
        line break; it writes a number as ``str()``): it is written as that text. Any other
        row, and every row of a legacy ID map (no ``action``), takes :meth:`created`. The cells
        are as typed: ``None`` (which the csv module writes as an empty cell) only as
        ``invoice_id``, where it also takes :meth:`created`. The
        csv path cost ~14,700 instructions a row more (callgrind, Recorder.created per
        invoice: 105,258 before, 90,597 after): the row list, the text join, the writer's
        conversion and cell-by-cell scan.
        """
        # The row's text with its line end (written as it is: no second string for the "\n"); a
        # printability test of the whole row leaves the "\n" out (it is not printable).
        line_text = (f"{external_id!s},{invoice_id!s},{line!s},{customer_id!s},{status!s},{currency!s},"
                     f"{net!s},{tax!s},{gross!s},{action!s}\n")
        # The printability test runs per character (~50 instructions each under callgrind, ~4,000 a
        # row): only the two cells new in every row take it; the four that repeat (customer, status,
        # currency, action) are looked up among the cells already seen whole in a printable row.
        # The numbers (line, net, tax, gross) are always printable. The comma and quote counts
        # stay over the whole line (a C scan each).
        plain = self._plain
        cells_str = str is type(customer_id) is type(status) is type(currency) is type(action)
        if (cells_str and customer_id in plain and status in plain and currency in plain
                and action in plain and invoice_id is not None and f"{external_id}{invoice_id}".isprintable()
                and line_text.count(",") == 9 and '"' not in line_text and not self._legacy_id_map):
            fast = True
        elif (line_text[:-1].isprintable() and line_text.count(",") == 9 and '"' not in line_text
                and invoice_id is not None and not self._legacy_id_map):
            fast = True
            if cells_str and len(plain) < _PLAIN_CELLS:  # bounded: a run with many customers checks the rest whole
                plain.update((customer_id, status, currency, action))
        else:
            fast = False
        if fast:
            try:
                self._id_write(line_text)
                return
            except OSError as exc:
                raise OutputError(f"cannot append to id_map.csv: {exc.strerror or exc}") from None
        self.created([external_id, invoice_id, line, customer_id, status, currency, net, tax, gross, action])

    def failed(self, raw: bytes, reason: list[Any]) -> None:
        try:
            self._failed.write(raw if raw.endswith(b"\n") else raw + b"\n")
            self._reasons_csv.writerow(_reason_row(reason))
        except OSError as exc:
            raise OutputError(f"cannot append to failed.ndjson: {exc.strerror or exc}") from None

    def failed_copy(self, path: str, start: int, length: int, reason: list[Any]) -> None:
        """Append bytes ``start .. start+length`` of ``path`` (an overlong line) in chunks."""
        try:
            with open(path, "rb") as src:
                src.seek(start)
                left = length
                while left > 0:
                    chunk = src.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    self._failed.write(chunk)
                    left -= len(chunk)
            self._failed.write(b"\n")
            self._reasons_csv.writerow(_reason_row(reason))
        except OSError as exc:
            raise OutputError(f"cannot append to failed.ndjson: {exc.strerror or exc}") from None

    def flush(self) -> dict[str, int]:
        """Flush Python's buffers and return each file's size (to go into the checkpoint)."""
        try:
            for f in (self._id_map, self._reasons, self._failed):
                f.flush()
            sizes = {
                "id_map.csv": self._id_map.tell(),
                "failed_reasons.csv": self._reasons.tell(),
                "failed.ndjson": self._failed.tell(),
            }
            self._whole = sizes
            return dict(sizes)
        except OSError as exc:
            raise OutputError(f"cannot write to the run directory: {exc.strerror or exc}") from None

    def sync(self) -> None:
        """fsync the files (what :meth:`flush` wrote is durable after); any thread: the loop
        may go on appending meanwhile (what lies beyond the flushed sizes is the next one's)."""
        try:
            for f in (self._id_map, self._reasons, self._failed):
                os.fsync(f.fileno())
        except OSError as exc:
            raise OutputError(f"cannot sync the run directory: {exc.strerror or exc}") from None

    @staticmethod
    def summary_bytes(summary: dict[str, Any]) -> bytes:
        """``summary.json``'s bytes (a checkpoint takes them on the loop, with its snapshot)."""
        return orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n"

    def write_summary(self, summary: dict[str, Any] | bytes) -> None:
        """``summary.json`` (temp file, fsync, rename); any thread."""
        data = summary if isinstance(summary, bytes) else self.summary_bytes(summary)
        write_atomic(self.dir / "summary.json", data)

    def close(self) -> None:
        """Close the files, then cut each back to its last complete flush.

        After a clean final checkpoint that cuts nothing. After a failed write (disk full,
        EFBIG) a file may end in a torn row: what lies past the last complete flush was never
        checkpointed, so a resumed run would drop it anyway; dropping it now leaves every
        file whole (truncating never needs free space).
        """
        for f in (self._id_map, self._reasons, self._failed):
            with contextlib.suppress(OSError):
                f.close()
        for name, size in self._whole.items():
            with contextlib.suppress(OSError):
                if os.path.getsize(self.dir / name) > size:
                    os.truncate(self.dir / name, size)
