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

# auto takes 2 processes from an input this big (processes_for): forked (bulk._procfork), their
# start-up is won back by ~2,000 invoices; 4 MiB is ~4,800 of `bulk generate`'s 870-byte invoices,
# ~14,000 of 300 bytes. Spawned (no fork here), after ~6,000: 16 MiB, ~19,000 of 870 bytes.
_TWO_PAY_BYTES = 4 << 20
_TWO_PAY_SPAWNED_BYTES = 16 << 20
# ... and only where the run may go faster than this many invoice writes a second: one process
# made >= 2,128 invoices/s at no latency in every measurement on 2 vCPUs (README, Performance),
# so at a pace of at most this (every real target's documented limit: Agiled 0.5 writes/s,
# anny 1.7, ChargeOver 2, Coperniq 100) a second process adds its start-up and nothing else.
_ONE_KEEPS_UP = 1_000.0


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

    def invoice_pace(self, documented: Mapping[str, float]) -> tuple[str, float | None]:
        """The kind whose limit paces the invoices' creates (``write``, else ``*``) and that
        limit for this process (:meth:`pacing_limits`), None when nothing limits it."""
        limits = self.pacing_limits(documented)
        kind = "write" if "write" in limits else "*"
        return kind, limits.get(kind)

    def processes_for(self) -> int:
        """How many upload processes this run uses (``bulk.procs``: one shard worker each).

        ``--processes N`` gives N (at most ``--concurrency``, so each has a worker). ``auto``
        (0) gives 2 only where the measurement (2 vCPUs, README "Processes") shows a second
        process pays, and 1 everywhere else. It pays when each shard worker skips the other
        shard's lines without parsing them (``bulk._intake``: a plain file, not stdin or
        ``.gz``; the target's default customer key): 2 processes then execute ~867,000-909,000
        instructions per invoice summed (callgrind, ``benchmarks/instructions.py --processes
        1,2``), 1.67-1.75x the bare loop's, below the 1.93x at which two beat it on two cores
        shared with the server (ceiling 1.10-1.15x, one process 0.69x). Forked before the event
        loop (``bulk._procfork``), the two start about as fast as one: at no latency they were
        even with one process at 2,000 invoices and 0.74-0.94x its wall time at 5,000 (both
        rounds of 3, 2026-12-06): auto takes 2 from a 4 MiB input (16 MiB where they are spawned:
        their start-up, ~1.8 G instructions more, is won back after ~6,000). What two processes cannot do (a
        threshold, an arrival rate, items created by several processes) keeps 1, and so does a
        pace one process keeps up with: the invoices' limit (``write``, else ``*``: the target's
        documented one against a real API, ``--rate``/``--limit``) at most 1,000 a second.
        """
        if self.processes:
            return min(self.processes, self.concurrency)
        return 2 if self._two_pay() else 1

    def _two_pay(self) -> bool:
        """True where the measurement says a second process pays (see :meth:`processes_for`)."""
        if (self.shard is not None or self.thresholds or self.arrival_rate is not None or self.dry_run
                or self.concurrency < 2 or self.input == "-" or self.input.endswith(".gz")):
            return False
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        try:
            if cores < 2:
                return False
            from ._procfork import forkable

            if os.path.getsize(self.input) < (_TWO_PAY_BYTES if forkable() else _TWO_PAY_SPAWNED_BYTES):
                return False
        except OSError:
            return False  # the run says what is wrong with the input
        from .refs import OPTION as CREATE_MISSING
        from .targets import get_target
        from .targets.base import Target

        if CREATE_MISSING in self.options:
            return False
        try:
            cls = get_target(self.target)
        except ConfigError:  # an unknown target: the run says so
            return False
        if cls.affinity is not Target.affinity:
            return False
        # The embedded sandbox (no --base-url) has no limit unless --rate sets one (bulk._cli.upload).
        _, pace = self.invoice_pace({} if self.base_url is None else cls.default_limits)
        return pace is None or pace > _ONE_KEEPS_UP

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
