"""Issue 2 end to end through the CLI against the Agiled sandbox: the parts the conformance
suite does not cover (input handling, exact totals, single-flight customers, auth, dry run)."""

from __future__ import annotations

import contextlib
import gzip
import json
import subprocess
import sys
from dataclasses import replace
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import IO

import pytest
from harness import (
    REPO,
    SandboxServer,
    assert_exactly_once,
    cli,
    client_env,
    created_count,
    read_id_map,
    read_reasons,
    signalled,
    summary,
    upload_args,
    wait_until,
    write_input,
)

from bulk.errors import InvalidRecord, RecordError
from bulk.generate import generate
from bulk.records import Record, parse_record
from bulk.targets.agiled import invoice_body, invoice_json
from bulk.transport import dumps


def _rec(ext: str, currency: str, prices: str, lines: list[tuple[str, str, str]], cust: str = "C-1") -> bytes:
    return json.dumps({
        "external_id": ext, "customer": {"external_id": cust, "email": f"{cust.lower()}@example.com"},
        "currency": currency, "prices": prices, "status": "draft",
        "lines": [{"title": f"line {i}", "quantity": q, "unit_price": p, "tax_rate": t}
                  for i, (q, p, t) in enumerate(lines)],
    }).encode()


def test_totals_follow_the_money_rule_exactly(tmp_path: Path) -> None:
    src, out = tmp_path / "money.ndjson", tmp_path / "run"
    lines = [
        _rec("JPY-1", "JPY", "net", [("3", "333.5", "10")]),  # net 1000.5 -> 1001, tax 100.1 -> 100
        _rec("KWD-1", "KWD", "gross", [("1", "10.000", "5")]),  # net 9.5238.. -> 9.524, tax 0.476
        # a negative line, half away from zero
        _rec("EUR-1", "EUR", "net", [("2", "19.995", "19"), ("1", "-5.005", "19")]),
        _rec("EUR-2", "EUR", "gross", [("1", "1.19", "19")]),
    ]
    src.write_bytes(b"\n".join(lines) + b"\n")
    with SandboxServer("agiled") as sb:
        done = cli(upload_args(sb, src, out), sb.env)
        assert done.returncode == 0, done.stderr
        totals = {inv["invoice_number"]: inv["total"] for inv in sb.state()["invoices"]}
    assert summary(out)["totals"] == {
        "EUR": {"invoices": 2, "net": "35.98", "tax": "6.84", "gross": "42.82"},
        "JPY": {"invoices": 1, "net": "1001", "tax": "100", "gross": "1101"},
        "KWD": {"invoices": 1, "net": "9.524", "tax": "0.476", "gross": "10.000"},
    }
    assert totals == {"JPY-1": "1101", "KWD-1": "10.000", "EUR-1": "41.63", "EUR-2": "1.19"}
    assert summary(out)["mismatches"]["count"] == 0


def test_customers_are_resolved_once_however_many_invoices_share_them(tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, 120, seed=21)
    customers = {r.customer.external_id for r in records}
    assert len(customers) < len(records) / 3
    with SandboxServer("agiled", latency_ms=5) as sb:
        done = cli(upload_args(sb, src, out, "--concurrency", "64"), sb.env)
        assert done.returncode == 0, done.stderr
        state = sb.state()
        assert_exactly_once(sb, out, records)
    assert len(state["contacts"]) == len(customers)
    # one auth check + one lookup and one create per customer + one create per invoice
    assert state["requests"]["total"] == 1 + 2 * len(customers) + len(records)


def test_bad_lines_are_rejected_with_line_numbers_and_the_rest_is_created(tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    good = list(generate(6, seed=22))
    dup = good[1]
    lines = [good[0], b"{not json\n", good[1], b"[1,2]\n", b"\xff\xfe bad utf8\n", good[2], dup,
             good[3].replace(b'"quantity":', b'"quantity":-', 1), good[4], good[5].rstrip(b"\n")[:40]]
    src.write_bytes(b"".join(lines))
    with SandboxServer("agiled") as sb:
        done = cli(upload_args(sb, src, out), sb.env)
        assert done.returncode == 1, done.stderr
        created = sorted(inv["invoice_number"] for inv in sb.state()["invoices"])
    assert len(created) == 4
    reasons = {int(r["line"]): r for r in read_reasons(out)}
    assert sorted(reasons) == [2, 4, 5, 7, 8, 10]
    assert reasons[7]["field"] == "external_id" and "duplicate of line 3" in reasons[7]["message"]
    assert reasons[8]["field"].endswith("quantity")
    assert all(r["kind"] == "rejected" for r in reasons.values())
    failed = (out / "failed.ndjson").read_bytes().split(b"\n")
    assert failed[:-1] == [lines[i].rstrip(b"\n") for i in (1, 3, 4, 6, 7, 9)]
    s = summary(out)["records"]
    assert (s["read"], s["created"], s["rejected"]) == (10 - 0, 4, 6)


def test_a_changed_input_is_refused(tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    write_input(src, 10, seed=23)
    with SandboxServer("agiled") as sb:
        assert cli(upload_args(sb, src, out), sb.env).returncode == 0
        write_input(src, 11, seed=23)
        again = cli(upload_args(sb, src, out), sb.env)
    assert again.returncode == 2
    assert "different input" in again.stderr and "--out" in again.stderr


def test_auth_refused_stops_at_once_before_any_write(tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    write_input(src, 10, seed=24)
    with SandboxServer("agiled") as sb:
        done = cli(upload_args(sb, src, out), {"AGILED_API_TOKEN": "wrong-token"})
        assert done.returncode == 3, done.stderr
        assert "HTTP 401" in done.stderr and "AGILED_API_TOKEN" in done.stderr
        assert sb.state()["requests"]["total"] == 1 and sb.state()["invoices"] == []
    missing = cli(upload_args(sb, src, out), {})
    assert missing.returncode == 2 and "AGILED_API_TOKEN" in missing.stderr


def test_stdin_and_gzip_inputs(tmp_path: Path) -> None:
    src = tmp_path / "in.ndjson"
    records = write_input(src, 15, seed=25)
    gz = tmp_path / "in.ndjson.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    with SandboxServer("agiled") as sb:
        piped = subprocess.run([sys.executable, "-m", "bulk", *upload_args(sb, Path("-"), tmp_path / "stdin")],
                               input=src.read_bytes(), env=client_env(sb.env), capture_output=True, cwd=REPO,
                               timeout=60)
        assert piped.returncode == 0, piped.stderr
        assert_exactly_once(sb, tmp_path / "stdin", records)
        zipped = cli(upload_args(sb, gz, tmp_path / "gz"), sb.env)
        assert zipped.returncode == 0, zipped.stderr
        assert_exactly_once(sb, tmp_path / "gz", records)  # same keys: replayed, not duplicated


def test_validate_and_dry_run_send_nothing(tmp_path: Path) -> None:
    hostile = REPO / "fixtures" / "hostile.ndjson"
    expected = json.loads((REPO / "fixtures" / "hostile_expected.json").read_text())
    checked = cli(["validate", str(hostile)], {})
    assert checked.returncode == 1
    bad = {int(k): v["field"] for k, v in expected.items() if v["outcome"] != "ok"}
    reported = {int(line.split(":")[0].removeprefix("line ")): line for line in checked.stdout.splitlines()}
    assert sorted(reported) == sorted(bad)
    for n, field in bad.items():
        assert f"line {n}: {field}:" in reported[n]
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    write_input(src, 12, seed=26)
    plan = cli(["upload", str(src), "--dry-run", "--out", str(out)], {})
    assert plan.returncode == 0 and "create 12" in plan.stderr and not (out / "state.db").exists()
    with SandboxServer("agiled") as sb:
        assert cli(upload_args(sb, src, out), sb.env).returncode == 0
        before = sb.state()["requests"]["total"]
        plan = cli(["upload", str(src), "--dry-run", "--out", str(out)], {})
        assert sb.state()["requests"]["total"] == before
    assert plan.returncode == 0 and "skip 12 already done" in plan.stderr and "create 0" in plan.stderr


def test_embedded_sandbox_demo_needs_no_setup(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = cli(["upload", "fixtures/invoices.ndjson", "--out", str(out), "--quiet"], {})
    assert done.returncode == 0, done.stderr
    assert "embedded agiled sandbox" in done.stderr and "nothing leaves this machine" in done.stderr
    s = summary(out)
    assert s["records"]["created"] == 500 and s["complete"]


def _records() -> list[Record]:
    """Every valid record of the fixtures and of a generated input (extras, dates, odd text)."""
    records = []
    for path in (REPO / "fixtures" / "invoices.ndjson", REPO / "fixtures" / "hostile.ndjson"):
        for i, line in enumerate(path.read_bytes().splitlines()):
            with contextlib.suppress(InvalidRecord):  # the invalid ones: not records
                records.append(parse_record(line, i + 1))
    return records


def test_invoice_json_is_dumps_of_invoice_body_byte_for_byte() -> None:
    # The create's body is encoded by msgspec (invoice_json); the documented mapping stays
    # invoice_body, which the existing-invoice comparison uses: the two must never drift.
    records = _records()
    assert len(records) > 10
    base = records[0]
    line = base.lines[0]
    odd = [
        replace(base, extra={"po_number": "PO-1", "notes": "never overrides", "amount": Decimal("1.50"),
                             "nested": {"a": [1, 2.5, None, True]}, "currency": "XXX"}),
        replace(base, extra={"currency": "only mapped keys"}),
        replace(base, issue_date=date(2026, 1, 2), due_date=date(2026, 2, 3), status="sent", prices="gross"),
        replace(base, lines=(replace(line, quantity=Decimal("1E+2"), unit_price=Decimal("-0.000001"),
                                     tax_rate=Decimal("0E-7")),)),
    ]
    # every code point but the lone surrogates (which the parser refuses), in a title and a note
    text = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    chunks = [text[i:i + 4096] for i in range(0, len(text), 4096)]
    odd += [replace(base, notes=chunk, lines=(replace(line, title=chunk),)) for chunk in chunks]
    for record in records + odd:
        assert invoice_json(record, "42") == dumps(invoice_body(record, "42")), record.external_id


def test_invoice_json_refuses_a_contact_id_orjson_cannot_encode_as_dumps_does() -> None:
    # msgspec encodes any int; orjson (dumps, the documented body) only -2^63 .. 2^64-1: the
    # fast body must refuse what the reference refuses, with the same error, and keep the edges.
    # The refusal fails the record (a RecordError naming the API's id), never the run.
    record = _records()[0]
    for contact_id in ("-9223372036854775808", "18446744073709551615", "0", "0", " 7", "7", "+7", "07", "7"):
        assert invoice_json(record, contact_id) == dumps(invoice_body(record, contact_id))
    for contact_id in ("18446744073709551616", "-9223372036854775809", str(10**40), "c-17") * 2:  # twice:
        # a refused id is never remembered as accepted (invoice_json keeps the ints it made)
        with pytest.raises(RecordError) as reference:
            dumps(invoice_body(record, contact_id))
        with pytest.raises(RecordError) as fast:
            invoice_json(record, contact_id)
        assert str(fast.value) == str(reference.value)
        assert repr(contact_id) in str(fast.value) and fast.value.stage == "customer"


def _piped_in(sb: SandboxServer, args: list[str], records: list[bytes],
              grace_s: float | None = None) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """``bulk upload -`` started with ``records`` written to its stdin, the pipe left open, once
    the sandbox has created them all (or the process ended). The pipe is the caller's to close:
    ``proc.stdin`` is None, so ``communicate()`` does not close it. ``grace_s`` replaces the
    first signal's grace (bulk._signals.GRACE_S) in that process."""
    start = ["-m", "bulk"] if grace_s is None else [
        "-c", f"import sys, bulk._signals, bulk.cli; bulk._signals.GRACE_S = {grace_s!r}; sys.exit(bulk.cli.main())"]
    proc = subprocess.Popen([sys.executable, *start, *args], env=client_env(sb.env), cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pipe, proc.stdin = proc.stdin, None
    assert pipe is not None
    try:
        pipe.write(b"".join(records))
        pipe.flush()
        wait_until(lambda: created_count(sb) == len(records) or proc.poll() is not None, timeout=60,
                   what=f"the {len(records)} piped invoices created while the pipe is open")
    except BaseException:
        proc.kill()
        with contextlib.suppress(BrokenPipeError):
            pipe.close()
        proc.communicate()
        raise
    return proc, pipe


def test_lines_piped_in_are_sent_as_they_come_not_when_a_chunk_fills(tmp_path: Path) -> None:
    # A slow exporter piped into `bulk upload -`: its first lines are created while the pipe is
    # still open (a buffered read(1 MiB) of a pipe waited for the whole MiB, or the pipe's end).
    out = tmp_path / "run"
    records = list(generate(5, seed=3))
    with SandboxServer("agiled") as sb:
        proc, pipe = _piped_in(sb, upload_args(sb, Path("-"), out), records)
        try:
            assert proc.poll() is None and created_count(sb) == 5
        finally:
            pipe.close()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert len(read_id_map(out)) == 5


def test_a_sigterm_while_a_piped_input_stalls_ends_the_run_at_once(tmp_path: Path) -> None:
    # `zcat export.gz | bulk upload -`, the exporter stalled with the pipe open: a SIGTERM stops
    # the run (what was created is recorded, the job resumable) and the process exits, its read
    # still pending (an anyio worker thread blocked in read() is not a daemon: the interpreter
    # waited for it, that is for the writer, for good). The first signal's grace (10 s, then the
    # work is cancelled) is made an hour here: the run must end because the stop cancels the
    # pending read, not because the grace ran out (it waited the whole grace before; the 60 s
    # hang guard below then fails the test).
    import signal

    out = tmp_path / "run"
    records = list(generate(5, seed=3))
    with SandboxServer("agiled") as sb:
        args = upload_args(sb, Path("-"), out)
        proc, pipe = _piped_in(sb, args, records, grace_s=3600)
        try:
            err = signalled(proc, signal.SIGTERM, "it should end while its piped input is still open")
        finally:
            with contextlib.suppress(BrokenPipeError):
                pipe.close()
        assert proc.returncode == 130, err
        assert "interrupted: run the same command again to resume" in err.decode()
        assert len(read_id_map(out)) == 5  # the created five are recorded: a resumed run skips them
        again = subprocess.run([sys.executable, "-m", "bulk", *args], env=client_env(sb.env), cwd=REPO,
                               input=b"".join(records), capture_output=True, timeout=120)
        assert again.returncode == 0, again.stderr
        assert created_count(sb) == 5 and len(read_id_map(out)) == 5
