"""``bulk report RUN_DIR``: one self-contained HTML page about a run, for someone who did not run it.

From the run directory's own files (read by :mod:`bulk.rundata`): what was run (target, input,
shard, start and end, counts), the thresholds met or not, the rate and the latency over time
(``timeline.csv``), the percentiles and status codes per kind (``summary.json`` ``latency_ms``,
``status_codes``), the totals per currency (exact decimal strings, shown as written) and the
failures grouped by reason (``failed_reasons.csv``). A section whose data is absent (a run
directory from before these files) says so instead of failing.

Every text taken from the run directory is HTML-escaped (messages are the API's and the
input's, hostile by assumption); the page has no script and a Content-Security-Policy that
forbids loading anything, so it opens offline and cannot reach the network. It is written
atomically (:func:`bulk.outputs.write_atomic`). The run directory holds no credential, and
neither does the report: nothing else is read.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from .outputs import write_atomic
from .rundata import MAX_REASONS, RunFiles, Timeline, load_run
from .svgchart import Series, duration_label, line_chart

__all__ = ["render_report", "write_report"]

SHOWN_REASONS = 200  # rows of the failures table

# --- rendering -----------------------------------------------------------------------------------
def _e(value: Any) -> str:
    """Any value from the run directory as escaped text (None as a dash)."""
    return "—" if value is None or value == "" else escape(str(value), quote=True)


def _table(head: list[str], rows: list[list[str]], *, cls: str = "", ident: str = "") -> str:
    """A table; ``head`` is plain text (escaped here), ``rows`` are cells already escaped."""
    attrs = (f' id="{ident}"' if ident else "") + (f' class="{cls}"' if cls else "")
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table{attrs}><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _ms(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _e(value)
    return f"{value:,.3f}".rstrip("0").rstrip(".") + " ms"


def _header(s: dict[str, Any]) -> str:
    r = s["records"]
    shard = f" (shard {_e(s['shard'])})" if s.get("shard") else ""
    state = "finished" if s.get("complete") else "not finished (resumable: run the same command again)"
    loop = (f"open loop at {_e(s['arrival_rate'])} records/s"
            if s.get("arrival_rate") not in (None, 0) else "closed loop")
    facts = [
        ("target", f"{_e(s.get('target'))}{shard}"),
        ("input", _e(s.get("input"))),
        ("started", _e(s.get("started_at"))),
        ("ended", _e(s.get("ended_at")) if s.get("ended_at") else "not yet (running, or stopped before its end)"),
        ("state", escape(state)),
        ("mode", loop + (f", {_e(s['late_starts'])} late starts" if s.get("late_starts") else "")),
        ("elapsed", f"{_e(s.get('elapsed_seconds'))} s over all runs"
                    + (f", {_e(s['invoices_per_second'])} invoices/s" if "invoices_per_second" in s else "")),
        *([("this run", f"{_e(s['this_run'].get('created'))} created in {_e(s['this_run'].get('elapsed_seconds'))} s, "
                         f"{_e(s['this_run'].get('invoices_per_second'))} invoices/s")]
          if isinstance(s.get("this_run"), dict) else []),
        ("requests", f"{_e(s.get('requests'))} requests, {_e(s.get('retries'))} retries, "
                     f"{_e(s.get('throttled'))} throttled (429)"),
        ("bulk", f"version {_e(s.get('version'))}"
                 + (f", {_e(s['processes'])} upload process(es)" if s.get("processes") else "")),
    ]
    dl = "".join(f"<dt>{escape(k)}</dt><dd>{v}</dd>" for k, v in facts)
    names: tuple[str, ...] = ("read", "created", "existing", "already_done", "rejected", "failed", "uncertain")
    if r.get("updated") or r.get("unchanged"):  # --on-existing update: counted apart from created
        names = (*names[:3], "updated", "unchanged", *names[3:])
    counts = "".join(f'<div class="count {n}"><b>{_e(r.get(n, 0))}</b>{escape(n.replace("_", " "))}</div>'
                     for n in names)
    extra = ""
    mismatches = (s.get("mismatches") or {}).get("count")
    if mismatches:
        extra += (f'<p class="warn">{_e(mismatches)} invoice totals reported by the API differ from the '
                  "money rule (see summary.json <code>mismatches</code>).</p>")
    note = (s.get("reconciled") or {}).get("note") if isinstance(s.get("reconciled"), dict) else None
    if note:
        extra += f'<p class="warn">{_e(note)}</p>'
    if isinstance(s.get("shards"), list):
        rows = [[_e(x.get("shard")), _e(x.get("dir")), _e(x.get("read")), _e(x.get("created")),
                 _e(x.get("rejected")), _e(x.get("failed")), _e(x.get("uncertain"))]
                for x in s["shards"] if isinstance(x, dict)]
        extra += "<h3>Merged shards</h3>" + _table(
            ["shard", "run directory", "read", "created", "rejected", "failed", "uncertain"], rows)
    bad = sum(r.get(n, 0) for n in ("rejected", "failed", "uncertain") if isinstance(r.get(n, 0), int))
    changed = (f', {_e(r.get("updated"))} updated, {_e(r.get("unchanged"))} unchanged'
               if r.get("updated") or r.get("unchanged") else "")
    verdict = (f'<p class="verdict">{_e(r.get("created"))} of {_e(r.get("read"))} records created{changed}'
               + (f'; <span class="unmet">{bad} not</span> (see Failures by reason)' if bad else "") + ".</p>")
    return (f'<header><h1>bulk run: {_e(s.get("target"))} ← {_e(s.get("input"))}</h1>{verdict}'
            f'<dl class="facts">{dl}</dl><div class="counts">{counts}</div>{extra}</header>')


def _thresholds(s: dict[str, Any]) -> str:
    items = s.get("thresholds")
    if not isinstance(items, list) or not items:
        return "<p class=\"none\">no thresholds were set (<code>--threshold</code>)</p>"
    rows, unmet = [], 0
    for t in items:
        if not isinstance(t, dict):
            continue
        met = t.get("met") is True
        unmet += not met
        verdict = '<span class="met">met</span>' if met else '<span class="unmet">not met</span>'
        rows.append([f"<code>{_e(t.get('expr'))}</code>", _e(t.get("value")), verdict])
    verdict = (f'<p class="unmet">{unmet} of {len(rows)} thresholds not met</p>' if unmet
               else f'<p class="met">all {len(rows)} thresholds met</p>')
    return verdict + _table(["threshold", "observed", "result"], rows, ident="thresholds")


def _totals(s: dict[str, Any]) -> str:
    totals = s.get("totals")
    if not isinstance(totals, dict) or not totals:
        return '<p class="none">no invoices created, no totals</p>'
    rows = [[_e(cur), _e(t.get("invoices")), _e(t.get("net")), _e(t.get("tax")), _e(t.get("gross"))]
            for cur, t in totals.items() if isinstance(t, dict)]
    return _table(["currency", "invoices", "net", "tax", "gross"], rows, cls="num", ident="totals")


def _latency(s: dict[str, Any]) -> str:
    lat = s.get("latency_ms")
    if not isinstance(lat, dict) or not lat:
        return '<p class="none">no latency recorded (the run predates latency_ms in summary.json)</p>'
    keys = ("count", "mean", "p50", "p90", "p99", "p999", "max")
    rows = []
    for kind, p in lat.items():
        if isinstance(p, dict):
            rows.append([_e(kind), _e(p.get("count"))] + [_ms(p.get(k)) for k in keys[1:]])
    return _table(["kind", "requests", "mean", "p50", "p90", "p99", "p99.9", "max"], rows, cls="num",
                  ident="percentiles")


def _code_order(code: str) -> tuple[int, int, str]:
    return (0, int(code), "") if code.isdigit() else (1, 0, code)


def _code_class(code: str) -> str:
    if code.startswith("2"):
        return "ok"
    if code == "429" or code.startswith("3"):
        return "slow"
    return "bad"


def _status_codes(s: dict[str, Any]) -> str:
    codes = s.get("status_codes")
    if not isinstance(codes, dict) or not codes:
        return '<p class="none">no status codes recorded (the run predates status_codes in summary.json)</p>'
    kinds = {k: v for k, v in codes.items() if isinstance(v, dict)}
    columns = sorted({str(c) for v in kinds.values() for c in v}, key=_code_order)
    head = "".join(f'<th class="{_code_class(c)}">{_e(c)}</th>' for c in columns)
    body = []
    for kind, by_code in kinds.items():
        total = sum(n for n in by_code.values() if isinstance(n, int)) or 1
        cells = []
        for c in columns:
            n = by_code.get(c)
            share = f' <small>{100 * n / total:.1f} %</small>' if isinstance(n, int) and n else ""
            cells.append(f"<td>{_e(n if n is not None else 0)}{share}</td>")
        body.append(f"<tr><td>{_e(kind)}</td>{''.join(cells)}</tr>")
    return (f'<table id="status-codes" class="num"><thead><tr><th>kind</th>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _timeline(t: Timeline | None) -> str:
    if t is None:
        return '<p class="none">no timeline recorded (the run directory has no timeline.csv: the run predates it)</p>'
    if not t.xs:
        return '<p class="none">timeline.csv has no rows yet</p>'
    per = "per second" if t.bucket == 1 else f"per second, averaged over {t.bucket} s per point"
    marks = [(x, f"resumed {when}") for x, when in t.resumes]
    rate = line_chart(f"Rate ({per})", "per s", t.xs, [
        Series("requests finished", "#2b6cb0", t.columns["requests_finished"]),
        Series("invoices created", "#2f855a", t.columns["invoices_created"]),
        Series("throttled (429)", "#d69e2e", t.columns["throttled"]),
        Series("errors", "#c53030", t.columns["errors"]),
    ], marks=marks)
    latency = line_chart("Latency (p50 and p99 of each second)", "ms", t.xs, [
        Series("p50", "#2b6cb0", t.p50),
        Series("p99", "#c53030", t.p99),
    ], marks=marks)
    notes = [f"{t.seconds} seconds of run time ({escape(duration_label(t.seconds))})"]
    if t.resumes:
        notes.append(f"{len(t.resumes)} resumed run(s), marked by dashed lines")
    if t.bucket > 1:
        notes.append(f"each point covers {t.bucket} s: counts are averaged, p50 is the median second's, "
                     "p99 the worst second's")
    if t.skipped:
        notes.append(f"{t.skipped} malformed rows skipped")
    return (f'<p>{"; ".join(notes)}.</p><figure>{rate}</figure><figure>{latency}</figure>')


def _failures(files: RunFiles) -> str:
    if files.reasons is None:
        return '<p class="none">no failed_reasons.csv in the run directory</p>'
    if not files.reasons:
        return '<p class="met">no record was rejected or failed</p>'
    rows = []
    for r in files.reasons[:SHOWN_REASONS]:
        kind, stage, fld, status, text = r.key
        examples = "<br>".join(f"line {_e(line)} {_e(ext)}" + (f": {_e(msg)}" if msg != text else "")
                               for line, ext, msg in r.examples)
        rows.append([_e(kind), _e(stage), _e(fld), _e(status), _e(text), f"<b>{r.count}</b>",
                     f'<span class="examples">{examples}</span>'])
    intro = f"<p>{files.reason_rows} rows in failed_reasons.csv, {len(files.reasons)} distinct reasons"
    if len(files.reasons) > SHOWN_REASONS:
        rest = sum(r.count for r in files.reasons[SHOWN_REASONS:])
        intro += f" (the {SHOWN_REASONS} most frequent shown; {rest} rows in the others)"
    if files.other_reasons:
        intro += f"; {files.other_reasons} more rows with reasons beyond the first {MAX_REASONS}"
    intro += (". Quoted values in messages are folded to '…' to group them; each row lists its first lines. "
              "Fix them in failed.ndjson and feed it back.</p>")
    return intro + _table(["kind", "stage", "field", "HTTP status", "reason", "count", "lines"], rows,
                          ident="failures")


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1a202c;background:#fff;
 margin:0 auto;max-width:1100px;padding:24px}
h1{font-size:22px;margin:0 0 12px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #e2e8f0}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:0 0 12px}
dt{color:#4a5568}dd{margin:0;overflow-wrap:anywhere}p.verdict{font-size:16px}
.counts{display:flex;flex-wrap:wrap;gap:8px}.count{background:#edf2f7;border-radius:6px;padding:6px 12px;
 min-width:80px;text-align:center;color:#4a5568}.count b{display:block;font-size:20px;color:#1a202c}
.count.created b{color:#2f855a}.count.rejected b,.count.failed b,.count.uncertain b{color:#c53030}
table{border-collapse:collapse;margin:6px 0;width:100%}th,td{border:1px solid #e2e8f0;padding:4px 8px;
 text-align:left;vertical-align:top}thead th{background:#f7fafc}table.num td{font-variant-numeric:tabular-nums}
th.ok{color:#2f855a}th.slow{color:#b7791f}th.bad{color:#c53030}small{color:#718096}
.examples{font-size:12px;color:#4a5568;overflow-wrap:anywhere}
.met{color:#2f855a;font-weight:600}.unmet,.warn{color:#c53030;font-weight:600}.none{color:#718096}
figure{margin:8px 0}svg.chart{width:100%;height:auto;background:#fcfcfd}
svg .grid{stroke:#e2e8f0}svg .mark{stroke:#718096;stroke-dasharray:4 4}
svg text{font-size:11px;fill:#4a5568}svg .ylab{text-anchor:end}
svg .line{fill:none;stroke-width:1.6}footer{margin-top:28px;color:#718096;font-size:12px}
"""

# Nothing may be loaded: styles inline, images inline SVG; no script at all.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def render_report(files: RunFiles) -> str:
    """The whole page as text."""
    s = files.summary
    sections = [
        ("Thresholds", _thresholds(s)),
        ("Rate and latency over time", _timeline(files.timeline)),
        ("Latency percentiles per kind", _latency(s)),
        ("Status codes per kind", _status_codes(s)),
        ("Totals per currency (created invoices, money rule)", _totals(s)),
        ("Failures by reason", _failures(files)),
    ]
    body = "".join(f"<section><h2>{escape(title)}</h2>{html}</section>" for title, html in sections)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>bulk report: {_e(s.get('target'))} {_e(s.get('input'))}</title><style>{_CSS}</style></head>"
            f"<body>{_header(s)}{body}<footer>Written by <code>bulk report</code> from summary.json, "
            "timeline.csv and failed_reasons.csv of the run directory.</footer></body></html>\n")


def write_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` atomically; return its path."""
    files = load_run(run_dir)
    out = run_dir / "report.html"
    write_atomic(out, render_report(files).encode("utf-8"))
    return out
