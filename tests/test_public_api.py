"""The façade is the contract for library users: pin it (httpx's test_exported_members habit)."""

from __future__ import annotations

import bulk
from bulk.errors import AbortRun, BulkError, ConfigError, RecordError, RetryableError

EXPECTED = {
    "AbortRun", "ApiUnavailable", "AuthError", "BulkError", "ConfigError", "Created", "InvalidRecord", "Job",
    "OutputError", "QuotaExhausted", "RecordError", "RecordRefused", "RetryableError", "RunResult", "ServerError",
    "Shard", "Target", "Throttled", "TransportError", "UploadConfig", "available_targets", "get_target",
    "run_upload",
}


def test_public_names_are_pinned() -> None:
    assert set(bulk.__all__) == EXPECTED
    for name in bulk.__all__:
        assert getattr(bulk, name) is not None


def test_every_error_is_grouped_by_what_the_caller_must_do() -> None:
    groups = (ConfigError, RecordError, RetryableError, AbortRun)
    for name in bulk.__all__:
        obj = getattr(bulk, name)
        if isinstance(obj, type) and issubclass(obj, BulkError) and obj not in (BulkError, *groups):
            assert sum(issubclass(obj, g) for g in groups) == 1, name


def test_targets_are_found_by_name_with_a_helpful_error() -> None:
    assert bulk.available_targets() == ["agiled", "anny", "chargeover", "coperniq"]
    for name in bulk.available_targets():
        assert issubclass(bulk.get_target(name), bulk.Target)
    try:
        bulk.get_target("stripe")
    except ConfigError as exc:
        assert "agiled, anny, chargeover, coperniq" in str(exc)
    else:
        raise AssertionError("an unknown target must be a ConfigError")
