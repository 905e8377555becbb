"""Progress reporting: a tiny sink protocol the engine calls; tqdm lives only here.

The bar counts records finished by earlier runs of the job too, and is shown only when it
helps: stderr is a TTY and ``--quiet`` was not given. It never prints a credential (it only
sees counts).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .tally import Tally

__all__ = ["ProgressSink", "TqdmProgress", "make_progress"]


class ProgressSink(Protocol):
    def update(self, tally: Tally, traffic: dict[str, int]) -> None: ...
    def note(self, message: str) -> None: ...
    def close(self) -> None: ...


class TqdmProgress:
    def __init__(self, *, total_bytes: int | None, desc: str) -> None:
        from tqdm import tqdm

        self._bar = tqdm(desc=desc, unit="inv", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
        self._initial: int | None = None
        self._total_bytes = total_bytes

    def update(self, tally: Tally, traffic: dict[str, int]) -> None:
        bar = self._bar
        if self._initial is None:
            self._initial = tally.read
            bar.n = bar.last_print_n = tally.read
        bar.n = tally.read
        bad = tally.rejected + tally.failed + tally.uncertain
        bar.set_postfix_str(f"created={tally.created} failed={bad} 429s={traffic['throttled']}", refresh=False)
        bar.refresh()

    def note(self, message: str) -> None:
        self._bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self._bar.close()


def make_progress(*, quiet: bool, total_bytes: int | None, desc: str) -> ProgressSink | None:
    if quiet or not sys.stderr.isatty():
        return None
    return TqdmProgress(total_bytes=total_bytes, desc=desc)
