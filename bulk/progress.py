"""What a run shows while it runs: the progress bar and the notes above it; tqdm lives only here.

The engine calls a :class:`ProgressSink` four times a second with the tally, the traffic and
a :class:`Status` (how far through the input the finished records reach, request health).
:class:`Console` is the CLI's sink; it prints to stderr and never sees a credential (counts,
byte offsets and already redacted error messages only):

- the bar, only when stderr is a terminal and ``--quiet`` was not given: a percentage and an
  ETA by bytes of the input finished (the watermark's offset over the input's size, which is
  exact for a file and estimated for ``.gz``; a pipe has no total, so no percentage): the
  invoice total is the lines read so far scaled by their bytes to the whole input, and the rate
  of *this* run (the records earlier runs of the job finished are the bar's starting point, not part of its speed);
- notes (``bulk: ...``) on their own lines above the bar, also without one (``--quiet``, a
  log file), e.g. ``requests are failing since ...`` once requests have failed for a second
  with none succeeding, and when they succeed again;
- :meth:`Console.finish`: the last frame shows the summary's own counts.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .tally import Tally

__all__ = ["Console", "ProgressSink", "Status", "make_progress"]

#: failing for this long with no success before the note (one 5xx among successes is no news)
FAILING_NOTE_AFTER = 1.0


@dataclass(frozen=True, slots=True)
class Status:
    """The engine's state besides the tally. Times are ``time.monotonic()`` values."""

    done_bytes: int  # input bytes before the watermark: every record in them is finished
    done_lines: int  # the lines in them
    total_bytes: int | None  # the input's size (estimated for .gz); None when unknown (a pipe)
    read_bytes: int = 0  # input bytes read so far (a contiguous prefix, finished or not)
    read_lines: int = 0  # the lines in them
    failing_since: float | None = None  # the first retryable failure since the last success
    give_up_at: float | None = None  # when the run stops (resumably) if nothing succeeds
    last_error: str = ""
    share: float = 1.0  # of the input's records this run handles (1/N with --shard K/N)


class ProgressSink(Protocol):
    def update(self, tally: Tally, traffic: dict[str, int], status: Status) -> None: ...
    def note(self, message: str) -> None: ...
    def close(self) -> None: ...


def _clock(moment: float) -> str:
    """A monotonic ``moment`` as a UTC wall-clock time, e.g. ``10:31:02 UTC``."""
    wall = time.time() + (moment - time.monotonic())
    return time.strftime("%H:%M:%S UTC", time.gmtime(wall))


class Console:
    """The CLI's sink: notes on stderr, and the bar when ``bar`` is true."""

    def __init__(self, *, bar: bool, desc: str) -> None:
        self._bar: Any = None
        if bar:
            from tqdm import tqdm

            # smoothing=0: the rate is (n - initial) / elapsed, this run's average.
            self._bar = tqdm(desc=desc, unit="inv", file=sys.stderr, dynamic_ncols=True, smoothing=0,
                             mininterval=0)
        self._started = False
        self._failing: float | None = None  # failing_since of the episode a note was printed for

    def note(self, message: str) -> None:
        text = f"bulk: {message}"
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)  # clears the bar, prints, redraws it below
        else:
            print(text, file=sys.stderr, flush=True)

    def update(self, tally: Tally, traffic: dict[str, int], status: Status) -> None:
        self._health(status)
        bar = self._bar
        if bar is None:
            return
        if not self._started:
            self._started = True
            bar.initial = tally.read  # earlier runs' records: where the bar starts, not speed
            bar.start_t = bar.last_print_t = bar._time()  # close() redraws only after start_t
        total = None
        if status.total_bytes and status.read_bytes:
            # The lines read per byte read, over the whole input: the largest contiguous
            # sample (the watermark can lag far behind one slow record, leaving a handful of
            # lines to judge by), and the count of records finished is not a share of bytes.
            lines = status.read_lines * status.total_bytes / status.read_bytes
            total = max(tally.read, round(lines * status.share))
        self._show(tally.read, total, tally.created, tally.rejected + tally.failed + tally.uncertain,
                   traffic["throttled"])

    def _health(self, status: Status) -> None:
        since = status.failing_since
        if since is None:
            if self._failing is not None:
                self._failing = None
                self.note("requests succeed again")
            return
        if since == self._failing or time.monotonic() - since < FAILING_NOTE_AFTER:
            return
        self._failing = since
        last = f" (last: {status.last_error})" if status.last_error else ""
        until = f"; giving up at {_clock(status.give_up_at)} unless one succeeds (--give-up-after)" \
            if status.give_up_at is not None else ""
        self.note(f"requests are failing since {_clock(since)}{last}{until}")

    def _show(self, n: int, total: int | None, created: int, bad: int, throttled: int) -> None:
        bar = self._bar
        bar.total = total
        bar.n = n
        bar.set_postfix_str(f"created={created} failed={bad} 429s={throttled}", refresh=False)
        bar.refresh()

    def finish(self, summary: dict[str, Any]) -> None:
        """Show the summary's counts as the last frame (the ticker's last one may be stale)."""
        if self._bar is None:
            return
        r = summary["records"]
        total = r["read"] if summary.get("complete") else self._bar.total
        self._show(r["read"], max(total, r["read"]) if total is not None else None, r["created"],
                   r["rejected"] + r["failed"] + r["uncertain"], summary["throttled"])

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def make_progress(*, quiet: bool, desc: str) -> Console:
    """The CLI's console: a bar only when stderr is a terminal and not ``quiet``."""
    return Console(bar=not quiet and sys.stderr.isatty(), desc=desc)
