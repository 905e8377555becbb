"""bulk: fast, exact, resumable bulk invoice uploads to invoicing APIs.

Library use::

    import anyio, bulk
    config = bulk.UploadConfig(input="invoices.ndjson", out=Path("runs/x"), base_url="https://...")
    result = anyio.run(bulk.run_upload, config)   # credentials from the environment

Everything not named in ``__all__`` is private and may change.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .config import Shard, UploadConfig
from .errors import (
    AbortRun,
    ApiUnavailable,
    AuthError,
    BulkError,
    ConfigError,
    InvalidRecord,
    OutputError,
    QuotaExhausted,
    RecordError,
    RecordRefused,
    RetryableError,
    ServerError,
    Throttled,
    TransportError,
)
from .pipeline import RunResult
from .targets import Created, Job, Target, available_targets, get_target

__all__ = [
    "AbortRun", "ApiUnavailable", "AuthError", "BulkError", "ConfigError", "Created", "InvalidRecord", "Job",
    "OutputError", "QuotaExhausted", "RecordError", "RecordRefused", "RetryableError", "RunResult", "ServerError",
    "Shard", "Target", "Throttled", "TransportError", "UploadConfig", "available_targets", "get_target",
    "run_upload",
]

__version__ = "0.1.0"


async def run_upload(config: UploadConfig, *, env: Mapping[str, str] | None = None) -> RunResult:
    """Run (or resume) one upload against ``config.base_url`` with credentials from ``env``.

    Signals are left to the caller. Returns the :class:`RunResult` (exit code, summary, error).
    """
    from .pipeline import Run

    if config.base_url is None:
        raise ConfigError("run_upload needs config.base_url (the embedded sandbox is a CLI feature)")
    cls = get_target(config.target)
    target = cls(base_url=config.base_url, credentials=cls.credentials_from_env(env if env is not None else os.environ),
                 options=config.options)
    return await Run(config, target).execute(handle_signals=False)
