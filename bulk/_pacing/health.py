"""Retry backoff, and the run's health: stop when nothing has succeeded for too long.

:class:`Health` is the part of the Pacer that watches successes and failures: when no request
has succeeded for ``give_up_after`` seconds while errors keep coming, the run stops
resumably (:class:`ApiUnavailable`) instead of retrying forever. It reads
``time.monotonic()`` (real time, also under a virtual loop clock).
"""

from __future__ import annotations

import random
import time

from ..errors import ApiUnavailable

__all__ = ["Backoff", "Health"]


class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And Jitter")."""

    def __init__(self, base: float = 0.2, cap: float = 10.0, rng: random.Random | None = None) -> None:
        self.base, self.cap = base, cap
        self._rng = rng or random.Random()

    def delay(self, attempt: int) -> float:
        return self._rng.uniform(0, min(self.cap, self.base * 2 ** (attempt - 1)))


class Health:
    """Successes and retryable failures of a run (a base of :class:`bulk.pacing.Pacer`)."""

    def __init__(self, give_up_after: float) -> None:
        self.give_up_after = give_up_after
        self._last_ok = time.monotonic()
        self.last_error = ""
        #: monotonic time of the first retryable failure since the last success (None: healthy)
        self.failing_since: float | None = None

    def ok(self) -> None:
        self._last_ok = time.monotonic()
        self.failing_since = None

    def ok_at(self, now: float) -> None:
        """:meth:`ok` for an answer received at ``now`` (``time.monotonic()``, already read).
        ``bulk._send.send`` does the same inline (keep the two alike)."""
        self._last_ok = now
        self.failing_since = None

    @property
    def last_ok(self) -> float:
        """Monotonic time of the last success (the run's start before any): the health
        check gives up ``give_up_after`` seconds after it."""
        return self._last_ok

    def succeeded_since(self, moment: float) -> bool:
        """Has any request succeeded after ``moment`` (a ``time.monotonic()`` value)?"""
        return self._last_ok > moment

    def failed(self, message: str) -> None:
        """Note a retryable failure; stop the run if nothing has succeeded for too long."""
        self.last_error = message
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        self._check_health(message)

    def _check_health(self, message: str) -> None:
        silent = time.monotonic() - self._last_ok
        if silent > self.give_up_after:
            raise ApiUnavailable(
                f"no successful answer from the API for {silent:.0f} s (last: {message}); "
                "stopped so you can check it: run the same command again to resume"
            )
