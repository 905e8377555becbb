"""`bulk report RUN_DIR`: the HTML report of a real run, of a run directory in the agreed
benchmark formats (docs: README "Benchmark runs"), of an older run directory, and the page
opened in a real browser (headless Chromium, the Debian package ``chromium``)."""

from __future__ import annotations

import csv
import json
import os
import re
import struct
import subprocess
import zlib
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from harness import SECRET, SandboxServer, cli, expected_totals, read_reasons, summary, upload_args, write_input

from bulk.report import render_report
from bulk.rundata import MAX_POINTS, load_run

HOSTILE_ID = '<img src="http://evil.example/x.png" onerror="alert(1)">'
BAD_LINES = [
    b'{"external_id": "BAD-1", "customer": ',  # cut short
    b'{"external_id":"BAD-2","customer":{"external_id":"C-9","email":"not-an-email"},"currency":"EUR",'
    b'"lines":[{"title":"x","quantity":1,"unit_price":"1","tax_rate":"0"}]}',
    b'{"external_id":"BAD-3","customer":{"external_id":"C-9","email":"also-not"},"currency":"EUR",'
    b'"lines":[{"title":"x","quantity":1,"unit_price":"1","tax_rate":"0"}]}',
    json.dumps({"external_id": HOSTILE_ID, "customer": {"external_id": "C-9", "email": "c9@example.com"},
                "currency": "XXX", "lines": [{"title": "</table><script>alert(2)</script>", "quantity": 1,
                                              "unit_price": "1", "tax_rate": "0"}]}).encode(),
    b"[1, 2, 3]",
]
EXTERNAL = ('src="http', "src='http", 'href="http', "href='http", "@import", "url(http", "url(//")


class _Page(HTMLParser):
    """The parts of a page the tests look at: tags with their attributes, each table's rows
    of cell texts (by table id), the text of elements by class, and all the text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.text: list[str] = []
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "table":
            self._table = a.get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def body(self, ident: str) -> list[list[str]]:
        return self.tables[ident][1:]  # without the header row

    def counts(self) -> dict[str, str]:
        """The header's count boxes: {"read": "25", ...}."""
        return dict(re.findall(r'<div class="count (\w+)"><b>([^<]*)</b>', self.raw))

    def feed(self, data: str) -> None:
        self.raw = data
        super().feed(data)


def _assert_self_contained(html: str, page: _Page) -> None:
    for pattern in EXTERNAL:
        assert pattern not in html, pattern
    for tag, attrs in page.tags:
        assert tag not in ("script", "img", "link", "iframe", "object", "embed"), tag
        assert not ({"src", "href", "action"} & set(attrs)), (tag, attrs)
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)


def _report(run_dir: Path, env: dict[str, str]) -> str:
    done = cli(["report", str(run_dir)], env)
    assert done.returncode == 0, done.stderr
    files = [p.name for p in run_dir.iterdir() if "report" in p.name]
    assert files == ["report.html"], files  # one file, no temp file left beside it
    return (run_dir / "report.html").read_text(encoding="utf-8")


# --- a real run ------------------------------------------------------------------------------------
def test_report_of_a_real_run_has_counts_exact_totals_and_failures_by_reason(tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, 30, seed=3, extra_lines=BAD_LINES)
    done = cli(["upload", str(src), "--out", str(out), "--quiet"], {})  # the embedded sandbox
    assert done.returncode == 1, done.stderr  # finished, with the rejected lines
    html = _report(out, {})
    page = _Page(html)
    s = summary(out)

    counts = page.counts()
    for key in ("read", "created", "rejected", "failed", "uncertain"):
        assert counts[key] == str(s["records"][key]), key
    assert s["records"]["created"] == 30 and s["records"]["rejected"] == len(BAD_LINES)
    text = "".join(page.text)
    assert s["started_at"] in text and s["ended_at"] in text and str(src) in text
    assert f"30 of {30 + len(BAD_LINES)} records created; {len(BAD_LINES)} not" in text

    totals = {row[0]: {"invoices": int(row[1]), "net": row[2], "tax": row[3], "gross": row[4]}
              for row in page.body("totals")}
    assert totals == s["totals"] == expected_totals(records)  # the exact decimal strings, every currency

    reasons = read_reasons(out)
    rows = page.body("failures")
    by_reason = {(r[0], r[2], r[4]): int(r[5]) for r in rows}
    assert sum(by_reason.values()) == len(reasons) == len(BAD_LINES)
    email = [n for (kind, fld, text_), n in by_reason.items()
             if fld == "customer.email" and "is not a plausible e-mail address" in text_]
    assert email == [2]  # BAD-2 and BAD-3: one reason, counted twice
    for reason in reasons:  # every other reason once, with its field, and its line listed
        # a reason's text is the message with its quoted values shown as '…'
        mine = [n for (kind, fld, text_), n in by_reason.items() if kind == reason["kind"] and fld == reason["field"]
                and re.fullmatch(re.escape(text_).replace("'…'", "'.*'"), reason["message"])]
        assert mine == [2 if reason["field"] == "customer.email" else 1], reason
        assert any(f"line {reason['line']}" in r[6] for r in rows), reason

    _assert_self_contained(html, page)
    assert HOSTILE_ID not in html and "<script>alert(2)" not in html  # escaped...
    assert HOSTILE_ID in text  # ...and shown as text
    # The measurements, where this bulk records them (issue 15), else the report says so.
    if "latency_ms" in s:
        assert {row[0]: row[1] for row in page.body("percentiles")} == {
            kind: str(p["count"]) for kind, p in s["latency_ms"].items()}
    else:
        assert "no latency recorded" in html
    if (out / "timeline.csv").exists():
        with open(out / "timeline.csv", newline="") as f:
            seconds = len(list(csv.DictReader(f)))
        assert 0 < seconds <= MAX_POINTS and _path(html, "requests finished", 0) == (seconds, seconds)
    else:
        assert "no timeline recorded" in html


def test_a_run_with_a_credential_in_the_environment_yields_a_report_without_it(tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    write_input(src, 12, seed=4, extra_lines=BAD_LINES[:2])
    with SandboxServer("agiled") as sb:
        assert SECRET in sb.env.values()  # the client authenticates with it, from the environment
        done = cli(upload_args(sb, src, out), sb.env)
        assert done.returncode == 1, done.stderr
        assert sb.state()["invoices"], "nothing was created: the credential was not used"
    html = _report(out, sb.env)
    assert SECRET not in html
    assert SECRET[4:16] not in html  # nor a piece of it
    assert "agiled" in html and "12" in _Page(html).counts()["created"]


# --- the agreed benchmark formats (synthetic until the metrics branch writes them) -----------------
TIMELINE_HEADER = "time,elapsed_s,requests_started,requests_finished,invoices_created,throttled,errors,p50_ms,p99_ms"


def _benchmark_dir(tmp_path: Path, seconds: tuple[int, ...] = (40, 20), gap_at: int = 7) -> Path:
    """A run directory as a benchmark run writes it: two runs (the second resumed) of
    ``seconds``; in second ``gap_at`` of each run no request finished (empty p50/p99)."""
    run = tmp_path / "bench"
    run.mkdir()
    s: dict[str, Any] = {
        "version": "0.1.0", "started_at": "2026-12-01T13:40:00+00:00", "ended_at": "2026-12-01T13:46:20+00:00",
        "target": "agiled", "input": "big.ndjson", "shard": None, "complete": True, "processes": 1,
        "records": {"read": 600, "created": 590, "existing": 0, "already_done": 0, "rejected": 6, "failed": 3,
                    "uncertain": 1},
        "totals": {"EUR": {"invoices": 590, "net": "100.10", "tax": "19.02", "gross": "119.12"}},
        "mismatches": {"count": 0, "first": []},
        "requests": 640, "retries": 12, "throttled": 9, "elapsed_seconds": 60.5, "invoices_per_second": 9.75,
        "latency_ms": {
            "read": {"count": 40, "p50": 21.2, "p90": 25.1, "p99": 40.3, "p999": 55.0, "max": 61.25, "mean": 22.7},
            "write": {"count": 600, "p50": 31.5, "p90": 48.0, "p99": 123.456, "p999": 300.5, "max": 412.0,
                      "mean": 38.1},
        },
        "status_codes": {"read": {"200": 40}, "write": {"201": 590, "429": 9, "500": 1, "reset": 1, "timeout": 0}},
        "late_starts": 3, "arrival_rate": 10.0,
        "thresholds": [{"expr": "write.p99<800ms", "value": "123.456ms", "met": True},
                       {"expr": "errors<0.1%", "value": "0.3%", "met": False}],
    }
    (run / "summary.json").write_text(json.dumps(s))
    lines = [TIMELINE_HEADER]
    for r, n in enumerate(seconds):
        for i in range(n):
            lat = ("", "") if i == gap_at else (f"{30 + i % 5}.5", f"{100 + i}.25")
            finished = 10 if i != gap_at else 0
            lines.append(f"2026-12-01T13:{40 + 5 * r}:{i:02d}Z,{i},10,{finished},9,1,0,{lat[0]},{lat[1]}")
    (run / "timeline.csv").write_text("\n".join(lines) + "\n")
    with open(run / "failed_reasons.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["line", "external_id", "kind", "stage", "field", "http_status", "message"])
        for line in range(3):
            w.writerow([line + 1, f"INV-{line}", "failed", "invoice", "email", 422,
                        "The email has already been taken."])
        w.writerow([9, "INV-9", "uncertain", "invoice", "", "timeout", '</td></table><script>alert(3)</script>'])
    return run


def _path(html: str, series: str, chart: int) -> tuple[int, int]:
    """(data-points, points actually in d) of the ``series`` path in the ``chart``-th chart."""
    svg = re.findall(r"<svg.*?</svg>", html, re.S)[chart]
    m = re.search(rf'<path class="line" data-series="{re.escape(series)}" data-points="(\d+)" [^>]*d="([^"]*)"', svg)
    assert m, (series, chart)
    return int(m.group(1)), len(re.findall(r"[ML]-?[\d.]+,-?[\d.]+", m.group(2)))


def test_benchmark_sections_percentiles_status_codes_thresholds_and_timeline(tmp_path: Path) -> None:
    run = _benchmark_dir(tmp_path)
    html = _report(run, {})
    page = _Page(html)

    pct = {row[0]: row[1:] for row in page.body("percentiles")}
    assert pct["write"] == ["600", "38.1 ms", "31.5 ms", "48 ms", "123.456 ms", "300.5 ms", "412 ms"]
    assert pct["read"][0] == "40" and pct["read"][4] == "40.3 ms"

    head = page.tables["status-codes"][0]
    assert head == ["kind", "200", "201", "429", "500", "reset", "timeout"]  # codes in order, transport after
    codes = {row[0]: row[1:] for row in page.body("status-codes")}
    assert codes["write"][1].startswith("590") and codes["write"][2].startswith("9") and codes["write"][4] == "1 0.2 %"
    assert codes["read"] == ["40 100.0 %", "0", "0", "0", "0", "0"]

    thresholds = {row[0]: row[1:] for row in page.body("thresholds")}
    assert thresholds == {"write.p99<800ms": ["123.456ms", "met"], "errors<0.1%": ["0.3%", "not met"]}
    assert "1 of 2 thresholds not met" in html

    # 60 seconds over two runs: every second a point; the two seconds without a finished request
    # are gaps in the latency lines (not zeros), and the resumed run is marked on both charts.
    assert _path(html, "requests finished", 0) == (60, 60)
    assert _path(html, "invoices created", 0) == (60, 60)
    assert _path(html, "p50", 1) == (58, 58)
    assert _path(html, "p99", 1) == (58, 58)
    p99_d = re.search(r'data-series="p99"[^>]*d="([^"]*)"', html)
    assert p99_d and p99_d.group(1).count("M") == 3  # broken by the gap in each run (not by the resume)
    assert html.count('class="mark"') == 2 and "resumed 2026-12-01T13:45:00Z" in html
    assert "open loop at 10.0 records/s, 3 late starts" in "".join(page.text)

    failures = {(r[0], r[4]): int(r[5]) for r in page.body("failures")}
    assert failures == {("failed", "The email has already been taken."): 3,
                        ("uncertain", "</td></table><script>alert(3)</script>"): 1}
    assert "<script" not in html
    _assert_self_contained(html, page)


def test_a_long_timeline_is_drawn_in_buckets_of_seconds(tmp_path: Path) -> None:
    run = _benchmark_dir(tmp_path, seconds=(2 * MAX_POINTS + 10,), gap_at=-1)
    files = load_run(run)
    assert files.timeline is not None and files.timeline.bucket == 3
    html = render_report(files)
    points = -(-(2 * MAX_POINTS + 10) // 3)
    assert points <= MAX_POINTS
    assert _path(html, "requests finished", 0) == (points, points)
    assert _path(html, "p99", 1) == (points, points)
    assert "each point covers 3 s" in html


def test_an_older_run_directory_says_what_it_lacks(tmp_path: Path) -> None:
    run = _benchmark_dir(tmp_path)
    s = json.loads((run / "summary.json").read_text())
    for key in ("latency_ms", "status_codes", "thresholds", "late_starts", "arrival_rate"):
        del s[key]
    (run / "summary.json").write_text(json.dumps(s))
    (run / "timeline.csv").unlink()
    (run / "failed_reasons.csv").unlink()
    html = _report(run, {})
    for said in ("no latency recorded", "no status codes recorded", "no timeline recorded",
                 "no thresholds were set", "no failed_reasons.csv", "closed loop"):
        assert said in html, said
    assert "<svg" not in html
    assert _Page(html).body("totals") == [["EUR", "590", "100.10", "19.02", "119.12"]]


def test_usage_errors_exit_2_and_write_nothing(tmp_path: Path) -> None:
    not_json = tmp_path / "broken"
    not_json.mkdir()
    (not_json / "summary.json").write_text("{cut")
    a_file = tmp_path / "summary.json.txt"
    a_file.write_text("{}")
    for target, said in ((tmp_path / "missing", "does not exist"), (tmp_path, "not a bulk run directory"),
                         (not_json, "not valid JSON"), (a_file, "not a directory")):
        done = cli(["report", str(target)], {})
        assert done.returncode == 2, (target, done.stderr)
        assert said in done.stderr and "Traceback" not in done.stderr
    assert not list(tmp_path.rglob("report.html"))
    done = cli(["report"], {})
    assert done.returncode == 2 and "RUN_DIR" in done.stderr


# --- in a real browser -------------------------------------------------------------------------------
CHROMIUM = "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                                    reason="headless Chromium missing: install the Debian package chromium "
                                    "(apt-get install -y chromium; .ci/run does)")


def _chromium(page: Path, tmp_path: Path, name: str) -> tuple[bytes, list[str]]:
    """Screenshot ``page`` in headless Chromium; return the PNG and the console messages it logged."""
    png = tmp_path / f"{name}.png"
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / f'profile-{name}'}", "--enable-logging=stderr", "--v=0",
         f"--screenshot={png}", "--window-size=1200,2000",
         # the page laid out at 1200 x 2000 CSS pixels, shot at half scale: a quarter of the
         # pixels for the pure-Python PNG decoder below
         "--force-device-scale-factor=0.5", page.as_uri()],
        capture_output=True, text=True, timeout=180, env={**os.environ, "HOME": str(tmp_path)})
    assert done.returncode == 0 and png.exists(), done.stderr[-2000:]
    # Chromium logs every console message of the page (errors, CSP violations, failed loads) as
    # 'INFO:CONSOLE...] "message", source: <url> (line)'.
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return png.read_bytes(), console


def _unfilter(f: int, line: bytearray, prev: bytearray, n: int) -> bytearray:
    """Undo one scanline's PNG filter ``f`` (``n`` bytes per pixel)."""
    if f == 2:  # Up, the most common: bytewise (line + prev) mod 256 on whole rows as integers
        size = len(line)
        a, b = int.from_bytes(line, "big"), int.from_bytes(prev, "big")
        low, high = int.from_bytes(b"\x7f" * size, "big"), int.from_bytes(b"\x80" * size, "big")
        return bytearray((((a & low) + (b & low)) ^ ((a ^ b) & high)).to_bytes(size, "big"))
    for i in range(len(line)):
        left = line[i - n] if i >= n else 0
        if f == 1:
            line[i] = (line[i] + left) & 255
        elif f == 3:
            line[i] = (line[i] + (left + prev[i]) // 2) & 255
        elif f == 4:
            up, corner = prev[i], prev[i - n] if i >= n else 0
            p = left + up - corner
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
            line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
    return line


def _pixels(png: bytes) -> tuple[int, int, Counter[tuple[int, int, int]]]:
    """Decode an 8-bit RGB/RGBA, non-interlaced PNG (what Chromium writes): width, height and
    how many pixels have each RGB colour."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, n = 8, b"", 0, 0, 3
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        data = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
            n = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += data
        pos += 12 + length
    raw, stride = zlib.decompress(idat), width * n
    prev: bytearray = bytearray(stride)
    colours: Counter[tuple[int, int, int]] = Counter()
    for y in range(height):
        row = raw[y * (stride + 1):(y + 1) * (stride + 1)]
        prev = _unfilter(row[0], bytearray(row[1:]), prev, n)
        colours.update(zip(prev[0::n], prev[1::n], prev[2::n], strict=False))
    return width, height, colours


def _looks_blank(png: bytes) -> bool:
    """Fewer than 1 % of the pixels differ from white, or fewer than 16 colours in all."""
    width, height, colours = _pixels(png)
    inked = width * height - colours[(255, 255, 255)]
    return inked < width * height // 100 or len(colours) < 16


@needs_chromium
def test_the_report_opens_in_headless_chromium_without_console_errors_and_is_not_blank(tmp_path: Path) -> None:
    run = _benchmark_dir(tmp_path)
    _report(run, {})
    png, console = _chromium(run / "report.html", tmp_path, "report")
    assert console == []
    width, height, _ = _pixels(png)
    assert (width, height) == (600, 1000)
    assert not _looks_blank(png)

    # The checks can fail: a broken script is logged (and refused: the page allows no script),
    # and an empty page is blank.
    broken = tmp_path / "broken.html"
    broken.write_text((run / "report.html").read_text().replace("</body>", "<script>undefinedFn()</script></body>"))
    _, console = _chromium(broken, tmp_path, "broken")
    assert console and all(broken.as_uri() in line for line in console), console
    empty = tmp_path / "empty.html"
    empty.write_text("<!doctype html><html><body></body></html>")
    png, console = _chromium(empty, tmp_path, "empty")
    assert console == [] and _looks_blank(png)

