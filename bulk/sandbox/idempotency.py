"""The ``Idempotency-Key`` store, shared by every sandbox dialect.

Semantics (API-NOTES.md section 5: the vendor docs where they say something, the IETF draft
draft-ietf-httpapi-idempotency-key-header where they do not):

* **Key syntax.** The draft makes the header an RFC 8941 sf-string (``"abc"``); vendors'
  examples send it bare (``abc``). Both are accepted and mean the same key. A key is 1 to 255
  visible ASCII characters; anything else is invalid (the dialect answers 400).
* **Scope.** A slot is ``(scope, method, path, key)``; the dialect chooses ``scope`` (the
  organisation or the credential), so two callers never see each other's answers.
* **Only successes are stored.** The first 2xx answer is kept with a fingerprint of the
  canonical request body (parsed JSON, keys sorted, whitespace ignored). A failed attempt
  (4xx, 5xx, a crash) releases the key, so the client may retry with it.
* **Replay.** Same slot, same fingerprint: the stored status and body, byte for byte.
* **Mismatch.** Same slot, another fingerprint: a conflict (Agiled: 409, the draft: 422).
* **In flight.** Same slot while the first request is still being handled: a conflict
  (409 in the draft), whatever the body.
* **Expiry.** A stored answer lives ``ttl`` seconds (30 days); after that the key is new again.
* **Durability.** The stored answers live in the mapping given as ``done`` (the dialect's
  durable table, see ``bulk.sandbox.durable``), as plain tuples; the in-flight slots only in
  memory (a restarted server has nothing in flight).
"""

from __future__ import annotations

import enum
import hashlib
import re
import time
from collections.abc import Callable, Hashable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson

from bulk.sandbox.wire import json_default

__all__ = ["TTL_SECONDS", "Claim", "IdempotencyStore", "StoredResponse", "Verdict",
           "fingerprint", "parse_key"]

TTL_SECONDS = 30 * 24 * 3600.0
MAX_KEY_LENGTH = 255

_BARE = re.compile(r"[\x21-\x7e]{1,255}")
_QUOTED = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
_ESCAPE = re.compile(r'\\(["\\])')


def parse_key(raw: str) -> str | None:
    """The key of an ``Idempotency-Key`` header value (quoted or bare), or None if invalid."""
    value = raw.strip(" \t")
    if value.startswith('"'):
        match = _QUOTED.fullmatch(value)
        if match is None:
            return None
        key = _ESCAPE.sub(r"\1", match.group(1))
        return key if 0 < len(key) <= MAX_KEY_LENGTH else None
    return value if _BARE.fullmatch(value) and '"' not in value else None


def fingerprint(body: Any) -> bytes:
    """A digest of the canonical form of a parsed JSON body (key order and spacing ignored)."""
    canonical = orjson.dumps(body, default=json_default, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=16).digest()


class Verdict(enum.Enum):
    """What :meth:`IdempotencyStore.begin` decided."""

    PROCEED = "proceed"  # new key: handle the request, then finish() or release()
    REPLAY = "replay"  # answer with ``claim.stored``
    MISMATCH = "mismatch"  # key already used with another body
    IN_FLIGHT = "in_flight"  # the first request with this key is still being handled


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: bytes
    content_type: str
    fingerprint: bytes
    expires_at: float


@dataclass(frozen=True, slots=True)
class Claim:
    verdict: Verdict
    slot: Hashable
    fingerprint: bytes
    stored: StoredResponse | None = None


class IdempotencyStore:
    """Stored answers by slot (in ``done``: a plain dict unless given), plus the slots being
    handled now. ``clock`` is wall time (expiry survives a restart)."""

    __slots__ = ("_clock", "_done", "_in_flight", "ttl")

    def __init__(self, done: MutableMapping[Hashable, tuple[Any, ...]] | None = None, *,
                 ttl: float = TTL_SECONDS, clock: Callable[[], float] = time.time) -> None:
        self.ttl = ttl
        self._clock = clock
        # StoredResponse fields as a tuple: plain data, so a durable table can keep it.
        self._done: MutableMapping[Hashable, tuple[Any, ...]] = {} if done is None else done
        self._in_flight: set[Hashable] = set()

    def begin(self, slot: Hashable, body_fingerprint: bytes) -> Claim:
        """Decide what to do with a request under ``slot``. A PROCEED claim marks the slot in
        flight: the caller must end it with :meth:`finish` or :meth:`release`."""
        if slot in self._in_flight:
            return Claim(Verdict.IN_FLIGHT, slot, body_fingerprint)
        row = self._done.get(slot)
        if row is not None:
            stored = StoredResponse(*row)
            if stored.expires_at > self._clock():
                same = stored.fingerprint == body_fingerprint
                return Claim(Verdict.REPLAY if same else Verdict.MISMATCH, slot,
                             body_fingerprint, stored)
            del self._done[slot]
        self._in_flight.add(slot)
        return Claim(Verdict.PROCEED, slot, body_fingerprint)

    def finish(self, claim: Claim, status: int, body: bytes, content_type: str) -> None:
        """End a PROCEED claim with the answer given: stored if it is a 2xx, else released."""
        self._in_flight.discard(claim.slot)
        if 200 <= status < 300:
            self._done[claim.slot] = (status, body, content_type, claim.fingerprint,
                                      self._clock() + self.ttl)

    def release(self, claim: Claim) -> None:
        """End a PROCEED claim without storing anything (the request failed)."""
        self._in_flight.discard(claim.slot)

    def clear(self) -> None:
        self._done.clear()
        self._in_flight.clear()

    def __len__(self) -> int:
        """The number of stored, unexpired keys."""
        now = self._clock()
        return sum(1 for row in self._done.values() if row[4] > now)
