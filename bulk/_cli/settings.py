"""From parsed arguments to settings: ``--option``/``--limit`` pairs, the upload's
:class:`~bulk.config.UploadConfig`, and the checks that make a bad one a usage error (exit 2)
before anything is created or sent."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from ..config import Shard, UploadConfig
from ..errors import ConfigError
from ..refs import OPTION as CREATE_MISSING
from ..source import directory_message
from ..targets.base import Target
from ..thresholds import parse_threshold

__all__ = ["check_options", "check_paths", "parse_options", "upload_config"]


def parse_options(pairs: Sequence[str]) -> dict[str, str]:
    """``--option KEY=VALUE`` pairs as a dict (a pair without ``=`` or key is a usage error)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {pair!r}: write it as KEY=VALUE")
        out[key] = value
    return out


def _limits(pairs: Sequence[str]) -> dict[str, float]:
    """``--limit KIND=RATE`` pairs as a dict of requests per second."""
    out = {}
    for pair in pairs:
        kind, sep, value = pair.partition("=")
        try:
            out[kind] = float(value) if sep and kind else float("nan")
        except ValueError:
            out[kind] = float("nan")
        if out[kind] != out[kind]:
            raise ConfigError(f"--limit {pair!r}: write it as KIND=RATE, e.g. write=2 (requests per second)")
    return out


def _default_out(input_path: str, shard: Shard | None) -> Path:
    """``runs/<input name>`` (``-shardKofN`` for a shard) when no ``--out`` is given."""
    if input_path == "-":
        raise ConfigError("reading stdin needs --out: the run directory is how a re-run resumes")
    name = Path(input_path).name
    for suffix in (".gz", ".ndjson", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return Path("runs") / (name + (f"-shard{shard.index}of{shard.count}" if shard else ""))


def upload_config(args: argparse.Namespace, base_url: str | None) -> UploadConfig:
    """The run's settings from ``bulk upload``'s arguments (``base_url``: the flag's or the environment's)."""
    shard = Shard.parse(args.shard) if args.shard else None
    return UploadConfig(
        input=args.input,
        out=Path(args.out) if args.out else _default_out(args.input, shard),
        target=args.target,
        base_url=base_url,
        rate=args.rate,
        limits=_limits(args.limit),
        concurrency=args.concurrency,
        item_concurrency=args.item_concurrency,
        timeout=args.timeout,
        attempts=args.retries + 1,
        give_up_after=args.give_up_after,
        max_wait=args.max_wait,
        checkpoint_every=args.checkpoint_every,
        max_line_bytes=args.max_line_bytes,
        dry_run=args.dry_run,
        allow_insecure_http=args.allow_insecure_http,
        shard=shard,
        processes=args.processes,
        options={**parse_options(args.option),
                 **({CREATE_MISSING: args.create_missing} if args.create_missing is not None else {})},
        arrival_rate=args.arrival_rate,
        thresholds=tuple(parse_threshold(t) for t in args.threshold),
        on_existing=args.on_existing,
    )


def check_options(cls: type[Target], options: dict[str, str]) -> None:
    """Refuse an --option key the target does not read (it would be ignored silently)."""
    unknown = sorted(set(options) - set(cls.option_keys))
    if unknown:
        keys = ", ".join(cls.option_keys) or "none"
        raise ConfigError(f"--option {', '.join(unknown)}: not an option of the {cls.name} target "
                          f"(its options: {keys})")


def check_paths(config: UploadConfig) -> None:
    """The input and --out problems that are usage errors: found before anything is created."""
    if config.input != "-":
        if os.path.isdir(config.input):
            raise ConfigError(directory_message(config.input))
        if not os.path.exists(config.input):
            raise ConfigError(f"input {config.input!r} does not exist")
    for path in (config.out, *config.out.parents):
        if path.exists():
            if not path.is_dir():
                raise ConfigError(f"--out {str(config.out)!r}: {str(path)!r} is a file, not a directory: "
                                  "give a new directory (or an earlier run's) for the run")
            break
