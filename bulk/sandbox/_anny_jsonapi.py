"""anny's JSON:API envelope: the error answer (``{"errors": [...]}``) and its exception, and
reading a create request's resource document (the contract is in ``anny.py``).

Error objects follow JSON:API v1.1 (``status`` as a string, ``title``, ``detail``, and
``source.pointer`` / ``source.parameter`` naming what is wrong).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ApiError", "document", "error_body"]

_TITLES = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
           415: "Unsupported Media Type", 422: "Unprocessable Entity"}


def error_body(status: int, errors: list[dict[str, Any]]) -> dict[str, Any]:
    return {"errors": [{"status": str(status), "title": _TITLES.get(status, "Error"), **e}
                       for e in errors]}


class ApiError(Exception):
    """Answer ``status`` with these JSON:API error objects (raised anywhere in a handler)."""

    def __init__(self, status: int, errors: list[dict[str, Any]]) -> None:
        super().__init__(status)
        self.status, self.errors = status, errors

    @classmethod
    def one(cls, status: int, detail: str, *, pointer: str | None = None,
            parameter: str | None = None) -> ApiError:
        error: dict[str, Any] = {"detail": detail}
        if pointer is not None or parameter is not None:
            error["source"] = {"pointer": pointer} if pointer is not None else {"parameter": parameter}
        return cls(status, [error])


def document(body: Any, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(attributes, relationships)`` of a JSON:API resource document of type ``kind``."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise ApiError.one(400, "The request body must be a JSON:API document with a data object.",
                           pointer="/data")
    if data.get("type") != kind:
        raise ApiError.one(409, f"The resource type must be {kind}.", pointer="/data/type")
    if "id" in data:
        raise ApiError.one(422, "Client-generated ids are not supported.", pointer="/data/id")
    attrs, rels = data.get("attributes", {}), data.get("relationships", {})
    if not isinstance(attrs, dict) or not isinstance(rels, dict):
        raise ApiError.one(400, "attributes and relationships must be objects.", pointer="/data")
    return attrs, rels
