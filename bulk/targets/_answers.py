"""How the engine reads an API's error answer by default: the bodies of
:meth:`Target.error_message <bulk.targets.base.Target.error_message>`,
:meth:`~bulk.targets.base.Target.error_detail` and :meth:`~bulk.targets.base.Target.classify`
(:func:`error_for`).

The contract (what each hook must do, and when a target overrides it) is the Target's, in
:mod:`bulk.targets.base`; this module is only the default behaviour, kept apart so the contract
stays readable in one place. Private: a target calls ``super()``, never these functions.
"""

from __future__ import annotations

from ..errors import AbortRun, AuthError, BulkError, RecordRefused, ServerError, Throttled
from ..pacing import parse_retry_after
from ..transport import Reply

__all__ = ["error_detail", "error_for", "error_message"]


def error_message(reply: Reply) -> str:
    """The first of ``message``, ``error``, ``detail``, ``title`` that is a non-empty string in
    the answer's JSON object, else the body's text, else ``HTTP <status>``."""
    data = reply.json()
    if isinstance(data, dict):
        for key in ("message", "error", "detail", "title"):
            if isinstance(data.get(key), str) and data[key]:
                return str(data[key])
    return reply.text() or f"HTTP {reply.status}"


def error_detail(reply: Reply, message: str) -> tuple[str, str]:
    """``(field, message)`` from a Laravel-style ``{"message", "errors": {field: [messages]}}``
    (at most 10 fields, each with its own messages) or a top-level ``{"message", "field"}``;
    ``("", message)`` for any other shape. ``message`` is the target's ``error_message``."""
    data = reply.json()
    if isinstance(data, dict):
        errors = data.get("errors")
        if isinstance(errors, dict) and errors:
            pairs = [(str(name), "; ".join(str(m) for m in (msgs if isinstance(msgs, list) else [msgs])))
                     for name, msgs in list(errors.items())[:10]]
            detail = "; ".join(f"{name}: {text}" if text else name for name, text in pairs)
            return ", ".join(name for name, _ in pairs), f"{message} ({detail})"
        if isinstance(data.get("field"), str) and data["field"]:
            return str(data["field"]), message
    return "", message


def error_for(reply: Reply, stage: str, detail: tuple[str, str], auth_hint: str) -> BulkError:
    """The error a non-2xx ``reply`` means, by its status (``detail`` is the target's
    ``error_detail(reply)``, ``auth_hint`` its :attr:`~bulk.targets.base.Target.auth_hint`)."""
    status = reply.status
    field, message = detail
    if status in (401, 403):
        return AuthError(status, message, auth_hint)
    if status == 429:
        return Throttled(message, retry_after=parse_retry_after(reply.headers.get("Retry-After")))
    if status >= 500:
        return ServerError(status, message)
    if 300 <= status < 400:
        return AbortRun(
            f"HTTP {status}: the API redirected to {reply.headers.get('Location', '?')}; "
            "check --base-url (credentials are never forwarded across redirects)"
        )
    return RecordRefused(status, message, stage=stage, field=field)
