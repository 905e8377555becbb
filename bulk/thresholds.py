"""``--threshold EXPR``: pass/fail conditions on a benchmark run (issue 15).

Parsed when the command line is read (a bad expression is a usage error, exit 2, before
anything starts); evaluated on the run's summary. The forms::

    KIND.STAT OP N[ms|s]    latency of a request kind or stage: write.p99<800ms, item.max<=2s
                            (STAT: p50 p90 p99 p999 max mean; no unit: ms)
    errors OP N[%]          5xx answers and transport errors (reset, timeout, refused):
                            a share of all requests with %, else a count
    throttled OP N[%]       429 answers, likewise
    failed OP N[%]          records failed or uncertain: a share of the records read with %
    rate OP N/s|N/min       invoices created per second of the job (the summary's
                            invoices_per_second)

OP is one of < <= > >=. A condition on a kind the run never sent is not met.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = ["FORMS", "Threshold", "evaluate", "parse_threshold"]

FORMS = ("KIND.STAT<N[ms|s] (e.g. write.p99<800ms; STAT: p50 p90 p99 p999 max mean), "
         "errors<N[%], throttled<N[%], failed<N[%], rate>=N/s (or N/min); operators < <= > >=")

_STATS = ("p50", "p90", "p99", "p999", "max", "mean")
_EXPR = re.compile(r"^\s*([A-Za-z_][\w-]*)(?:\.(\w+))?\s*(<=|>=|<|>)\s*([0-9]*\.?[0-9]+)\s*(ms|s|%|/s|/min)?\s*$")
_OPS = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}


@dataclass(frozen=True, slots=True)
class Threshold:
    expr: str
    metric: str  # a kind/stage for latency, else errors / throttled / failed / rate
    stat: str | None  # p50 ... mean for latency
    op: str
    value: float  # in ms for latency, per second for rate, a fraction for %
    share: bool  # a % form


def parse_threshold(text: str) -> Threshold:
    """The parsed ``--threshold`` or a :class:`ConfigError` naming it and the accepted forms."""
    m = _EXPR.match(text)

    def bad(why: str) -> ConfigError:
        return ConfigError(f"--threshold {text!r}: {why}; accepted forms: {FORMS}")

    if m is None:
        raise bad("not a condition")
    name, stat, op, number, unit = m.groups()
    value = float(number)
    if stat is not None:
        if stat not in _STATS:
            raise bad(f"{stat!r} is not one of {', '.join(_STATS)}")
        if unit not in (None, "ms", "s"):
            raise bad("a latency is in ms or s")
        return Threshold(text, name, stat, op, value * 1000 if unit == "s" else value, False)
    if name == "rate":
        if unit not in ("/s", "/min"):
            raise bad("a rate is N/s or N/min")
        return Threshold(text, name, None, op, value / 60 if unit == "/min" else value, False)
    if name in ("errors", "throttled", "failed"):
        if unit not in (None, "%"):
            raise bad(f"{name} is a count or a share in %")
        return Threshold(text, name, None, op, value / 100 if unit == "%" else value, unit == "%")
    raise bad(f"{name!r} is not a metric (a kind such as write.p99, or errors, throttled, failed, rate)")


def _observed(t: Threshold, s: dict[str, Any], kinds: list[str]) -> tuple[float | None, str]:
    if t.stat is not None:
        kind = (s.get("latency_ms") or {}).get(t.metric)
        if not kind or not kind.get("count"):
            return None, "no requests"
        v = float(kind[t.stat])
        return v, f"{v:g}ms"
    if t.metric == "rate":
        v = float(s.get("invoices_per_second") or 0.0)
        return v, f"{v:g}/s"
    if t.metric == "failed":
        r = s.get("records") or {}
        count, total = int(r.get("failed", 0)) + int(r.get("uncertain", 0)), int(r.get("read", 0))
    else:
        codes = s.get("status_codes") or {}
        count = total = 0
        for kind in kinds:
            for code, n in (codes.get(kind) or {}).items():
                total += n
                if (t.metric == "throttled" and code == "429") or (
                        t.metric == "errors" and (not code.isdigit() or int(code) >= 500)):
                    count += n
    if t.share:
        v = count / total if total else 0.0
        return v, f"{v * 100:.3g}%"
    return float(count), str(count)


def evaluate(thresholds: tuple[Threshold, ...], summary: dict[str, Any],
             kinds: list[str] | None = None) -> list[dict[str, Any]]:
    """``[{"expr", "value" (observed, as text), "met"}, ...]`` for ``summary``. ``kinds``: the
    keys of its ``status_codes`` that are request kinds (each request counted once; the
    others are stages); default read and write."""
    kinds = list(kinds) if kinds is not None else ["read", "write"]
    out = []
    for t in thresholds:
        observed, text = _observed(t, summary, kinds)
        met = observed is not None and _OPS[t.op](observed, t.value)
        out.append({"expr": t.expr, "value": text, "met": bool(met)})
    return out
