"""``bulk sandbox``: an API simulator on loopback until Ctrl-C or SIGTERM (exit 130).

The dialect accepts only the token of the target's credential variables when they are all set
(any token otherwise); ``--seed-from`` seeds it with what an input file references.
"""

from __future__ import annotations

import argparse
import os
import signal
from typing import Any

import anyio

from ..errors import ConfigError
from ..targets import get_target
from .console import EXIT_INTERRUPTED, say
from .settings import parse_options

__all__ = ["sandbox", "seed_from"]


async def sandbox(args: argparse.Namespace) -> int:
    """Serve the simulator until Ctrl-C or SIGTERM; a bad ``--state`` or ``--option`` is a usage error."""
    from ..embedded import pairing
    from ..sandbox import run_forever
    from ..sandbox.config import SandboxConfig

    token = None
    if args.target != "all":
        cls = get_target(args.target)
        values = [os.environ.get(name) for name in cls.credential_env]
        if all(values):
            _, token = pairing(cls).credentials(values[-1] or "")
            if len(values) > 1:
                token = ":".join(v or "" for v in values)
    config = SandboxConfig(
        token=token, rate_limit=args.rate_limit, read_rate_limit=args.read_rate_limit, burst=args.burst,
        latency_ms=args.latency,
        fail_rate=args.fail_rate, drop_rate=args.drop_rate, lose_rate=args.lose_rate, seed=args.seed,
        options={**parse_options(args.option), **seed_from(args)}, state=args.state,
    )

    def ready(url: str) -> None:
        say(f"{args.target} sandbox listening on {url} (token: {'from the environment' if token else 'any'}); "
            f"state at {url}/_sandbox/state{f', kept in {args.state}' if args.state else ''}; Ctrl-C stops it")

    # Ctrl-C / SIGTERM through the event loop's own signal handling: relying on asyncio.Runner's
    # KeyboardInterrupt left the server running now and then under uvloop (MagicStack/uvloop#295).
    try:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_forever, args.target, config, args.host, args.port, ready)
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    break
    except BaseExceptionGroup as group:  # the server could not start: a bad --state or --option
        refused = [exc for exc in group.exceptions if isinstance(exc, ConfigError)]
        if refused:
            raise refused[0] from None
        raise
    say("interrupted")
    return EXIT_INTERRUPTED


def seed_from(args: argparse.Namespace) -> dict[str, Any]:
    """The dialect options ``bulk sandbox --seed-from INPUT`` adds (exit 2 when unreadable)."""
    if not args.seed_from:
        return {}
    if args.target == "all":
        raise ConfigError("--seed-from seeds one dialect: give --target agiled, anny, chargeover or coperniq")
    from ..sandbox.seed_from import read_references, seed_options

    if os.path.isdir(args.seed_from) or not os.path.exists(args.seed_from):
        raise ConfigError(f"--seed-from {args.seed_from!r}: no such file (give the NDJSON export to seed from)")
    try:
        refs = read_references(args.seed_from)
    except OSError as exc:
        raise ConfigError(f"--seed-from {args.seed_from!r}: {exc.strerror or exc}") from None
    get_target(args.target)  # an unknown target is refused by argparse already
    return seed_options(args.target, refs)
