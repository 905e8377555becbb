"""The invoice record: parse and validate one NDJSON line into a frozen `Record`.

Contract of `parse_record`: it returns a `Record` or raises `InvalidRecord(line_no, field, reason, fix)` for
the FIRST problem, checked in a fixed order (external_id, customer.*, currency, status, prices, issue_date,
due_date, notes, lines[i].*, extra). ``field`` is a dotted path (``customer.email``, ``lines[0].quantity``;
line indexes are 0-based) or ``(line)`` for whole-line problems. Messages quote at most 80 characters of a
value. Duplicate external ids are the pipeline's business, not this module's.
"""

from __future__ import annotations

import json
import re

from ._record_fast import _fast_record
from ._record_general import _parse_general
from ._record_types import Address, Customer, Line, Record

__all__ = ["Address", "Customer", "Line", "Record", "parse_record", "peek_external_id"]


def parse_record(raw: bytes, line_no: int) -> Record:
    """Parse one line (its bytes without the trailing newline) into a `Record`.

    Tolerates a UTF-8 BOM at the start and a trailing ``\\r``. Raises `InvalidRecord` for anything else that
    is wrong (see the module docstring).
    """
    record = _fast_record(raw, line_no)
    return record if record is not None else _parse_general(raw, line_no)


# A JSON string or a bracket: enough to track nesting depth in a malformed or truncated line.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]]')
_COLON_STRING = re.compile(r'\s*:\s*("(?:[^"\\]|\\.)*")')


def peek_external_id(raw: bytes) -> str | None:
    """The top-level ``external_id`` string of a line, even a malformed or truncated one, cut to 100
    characters; None if there is none. For labelling rejected lines: best effort, never raises."""
    try:
        text = raw.decode("utf-8", errors="replace")
        depth = 0
        for m in _TOKEN.finditer(text):
            tok = m[0]
            if tok in ("{", "["):
                depth += 1
            elif tok in ("}", "]"):
                depth -= 1
            elif depth == 1 and tok == '"external_id"' and (value := _COLON_STRING.match(text, m.end())):
                found = json.loads(value[1])
                return found[:100] if isinstance(found, str) and found else None
        return None
    except Exception:  # labelling must never fail the run
        return None
