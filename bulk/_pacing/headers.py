"""Parsing the rate-limit headers an API answers with: ``Retry-After`` and ``X-RateLimit-Reset``.

Both return seconds to wait from now (never negative), or None when the header is missing or
not understood (the caller then uses its own default).
"""

from __future__ import annotations

import datetime as dt
import time
from email.utils import parsedate_to_datetime

__all__ = ["parse_rate_limit_reset", "parse_retry_after"]


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def parse_rate_limit_reset(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds until an ``X-RateLimit-Reset``: delta-seconds (IETF draft), or a Unix time
    (GitHub and others) when the number is too large to be a delay."""
    if not value:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if number > 1e9:  # seconds since 1970, not a delay of 31 years
        number -= time.time() if now is None else now
    return max(0.0, number)
