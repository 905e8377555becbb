"""Frozen, keyword-only settings for one upload run, validated on construction.

Per-run objects (the HTTP session, limiters, streams, task groups) are *not* here: they are
created inside the run and die with it (see ``bulk.pipeline``).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError

__all__ = ["Shard", "UploadConfig", "check_base_url", "loop_options"]


@dataclass(frozen=True, slots=True)
class Shard:
    """``--shard K/N``: this process handles the records whose stable hash falls in shard K."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        try:
            k, n = (int(part) for part in text.split("/", 1))
        except ValueError:
            raise ConfigError(f"--shard {text!r}: write it as K/N, e.g. 0/4") from None
        if n < 1 or not 0 <= k < n:
            raise ConfigError(f"--shard {text!r}: K must be in 0..N-1 and N >= 1")
        return cls(k, n)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def check_base_url(url: str, *, allow_insecure_http: bool) -> str:
    """Return ``url`` without a trailing slash; refuse plain http to a non-loopback host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--base-url {url!r}: give a full http(s) URL such as https://api.example.com")
    if parts.username or parts.password:
        raise ConfigError("--base-url must not carry credentials: put them in the environment")
    if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(parts.hostname):
        raise ConfigError(
            f"--base-url {url!r} is plain http to a non-loopback host: use https, "
            "or pass --allow-insecure-http if you really mean it"
        )
    return url.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadConfig:
    """Everything one ``bulk upload`` run needs to know. No secrets live here."""

    input: str  # a path, a .gz path, or "-" for stdin
    out: Path
    target: str = "agiled"
    base_url: str | None = None  # None: the embedded sandbox
    rate: float | None = None  # requests per second for the whole run; None = the target's default
    limits: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))  # per kind, over the target's
    concurrency: int = 64
    item_concurrency: int = 4
    timeout: float = 30.0
    attempts: int = 6  # per request, for 5xx / timeouts / connection errors
    give_up_after: float = 120.0  # no successful answer for this long: stop, resumable
    max_wait: float = 900.0  # a Retry-After longer than this stops the run, resumable
    window: int = 0  # max records between the watermark and the newest started one (0 = auto)
    checkpoint_every: float = 1.0  # seconds between durable checkpoints
    max_line_bytes: int = 1 << 20
    dry_run: bool = False
    allow_insecure_http: bool = False
    shard: Shard | None = None
    processes: int = 1  # upload processes (bulk.procs); 0 = auto (see processes_for)
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    arrival_rate: float | None = None  # open loop: records started per second (bulk.arrivals); None = closed loop
    thresholds: tuple[Any, ...] = ()  # bulk.thresholds.Threshold, parsed by the CLI
    on_existing: str = "skip"  # --on-existing: see bulk.existing

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.concurrency > 4096:
            raise ConfigError("--concurrency must be between 1 and 4096")
        if self.item_concurrency < 1:
            raise ConfigError("--item-concurrency must be at least 1")
        if self.rate is not None and self.rate <= 0:
            raise ConfigError("--rate must be a positive number of requests per second")
        for kind, value in self.limits.items():
            if not kind or not value > 0:
                raise ConfigError(f"--limit {kind}={value}: give a kind (read, write) and a positive rate")
        if self.timeout <= 0 or self.give_up_after <= 0 or self.max_wait < 0:
            raise ConfigError("--timeout and --give-up-after must be positive, --max-wait >= 0")
        if self.attempts < 1:
            raise ConfigError("--retries must be at least 0")
        if not 0 <= self.processes <= 64:
            raise ConfigError("--processes must be between 1 and 64, or auto")
        if self.arrival_rate is not None:
            if not self.arrival_rate > 0:
                raise ConfigError("--arrival-rate must be a positive number of records per second")
            if self.processes > 1:
                # The schedule lives in one process: upload processes would each need a share of it.
                raise ConfigError("--arrival-rate runs in one process: drop --processes (or give --processes 1)")
        if self.thresholds and self.processes > 1:
            raise ConfigError("--threshold is judged in one process: drop --processes (or give --processes 1)")
        if self.max_line_bytes < 1024:
            raise ConfigError("--max-line-bytes must be at least 1024")
        if self.base_url is not None:
            object.__setattr__(
                self, "base_url", check_base_url(self.base_url, allow_insecure_http=self.allow_insecure_http)
            )
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        object.__setattr__(self, "limits", MappingProxyType(dict(self.limits)))

    def pacing_limits(self, documented: Mapping[str, float]) -> dict[str, float]:
        """Requests per second by kind for this process: the target's ``documented`` limits,
        or ``--rate`` for everything, then any ``--limit KIND=R``; a shard takes 1/N of each,
        so N shards sharing one API key together stay within its limits."""
        limits = {"*": self.rate} if self.rate else dict(documented)
        limits.update(self.limits)
        share = self.shard.count if self.shard else 1
        return {kind: rate / share for kind, rate in limits.items()}

    def processes_for(self) -> int:
        """How many upload processes this run uses (``bulk.procs``: one shard worker each).

        ``--processes N`` gives N (at most ``--concurrency``, so each has a worker). ``auto``
        (0) gives 1 on every machine: a second process only pays where a measurement on the
        machine shows it, and the one made (2 vCPUs, README "Processes") shows it does not:
        each shard worker parses and dedupes the whole input, so 2 processes execute 1.25-1.30x
        the instructions per invoice of one (callgrind, ``benchmarks/instructions.py
        --processes 1,2``), above the 1.93x the bare loop's at which two would beat it on two
        cores shared with the server. Pass ``--processes N`` where ``benchmarks/run.py``
        shows a gain.
        """
        if self.processes:
            return min(self.processes, self.concurrency)
        return 1

    @property
    def effective_window(self) -> int:
        return self.window or max(10_000, 16 * self.concurrency)


def loop_options() -> dict[str, Any]:
    """Event loop for anyio.run: uvloop when it is installed (``pip install 'bulk[fast]'``),
    unless ``BULK_LOOP=asyncio``.

    Measured on the no-latency benchmark: about 25 % less CPU per request (the aiohttp client's
    socket and callback work runs in uvloop's C loop). Nothing else changes.
    """
    if os.environ.get("BULK_LOOP", "").lower() == "asyncio":
        return {}
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}
