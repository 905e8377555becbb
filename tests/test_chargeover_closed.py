"""ChargeOver refuses to change a closed invoice (API-NOTES §3: ``invoice_status_state`` ``c``,
``closed-paid`` / ``closed-void``; the sandbox's ``PUT /invoice/{id}`` answers 400): under
``--on-existing update`` bulk reports each such record as failed with the API's status, field
and message, and nothing changes at the server. The invoices are closed the way a ChargeOver
user closes them, through the API's documented void action (O-void).
"""

from __future__ import annotations

import base64
import copy
import json
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

from harness import SandboxServer, cli, read_id_map, read_reasons, summary, upload_args

from bulk.generate import generate

N, CORRECTED = 4, (1, 3)


def _api(sb: SandboxServer, method: str, path: str) -> tuple[int, Any]:
    """One call to the sandbox's ChargeOver API with its Basic credentials."""
    auth = base64.b64encode(sb.config.token.encode()).decode()
    req = urllib.request.Request(f"{sb.base_url}/api/v3{path}", method=method, data=b"" if method == "POST" else None,
                                 headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _write(path: Path, docs: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(json.dumps(d).encode() + b"\n" for d in docs))


def test_the_void_action_refuses_an_unknown_invoice_and_a_read() -> None:
    with SandboxServer("chargeover") as sb:
        status, body = _api(sb, "POST", "/invoice/999999/_action/void")
        assert (status, body["status"], body["response"]) == (404, "Error", False), body
        status, body = _api(sb, "GET", "/invoice/999999/_action/void")
        assert status == 405, body


def test_a_closed_invoice_fails_with_the_apis_answer_and_stays_as_it_is(tmp_path: Path) -> None:
    docs = [json.loads(line) for line in generate(N, seed=1401)]
    fixed = copy.deepcopy(docs)
    for i in CORRECTED:  # a corrected amount: the update would change the invoice
        first = fixed[i]["lines"][0]
        first["unit_price"] = str(Decimal(str(first["unit_price"])) + Decimal("1.25"))
    first_path, second_path = tmp_path / "first.ndjson", tmp_path / "second.ndjson"
    _write(first_path, docs)
    _write(second_path, fixed)
    corrected = {fixed[i]["external_id"] for i in CORRECTED}
    with SandboxServer("chargeover") as sb:
        done = cli(upload_args(sb, first_path, tmp_path / "run1"), sb.env)
        assert done.returncode == 0, done.stderr
        ids = {row["external_id"]: row["invoice_id"] for row in read_id_map(tmp_path / "run1")}
        for invoice_id in ids.values():
            status, body = _api(sb, "POST", f"/invoice/{invoice_id}/_action/void")
            assert (status, body["response"]) == (200, True), body
        status, body = _api(sb, "POST", f"/invoice/{ids[docs[0]['external_id']]}/_action/void")
        assert status == 400 and "a closed invoice cannot be voided" in body["message"], body
        before = sb.state()["invoices"]
        assert {inv["invoice_status_str"] for inv in before} == {"closed-void"}
        assert all(Decimal(str(inv["balance"])) == 0 for inv in before)
        refused = cli(upload_args(sb, second_path, tmp_path / "run2", "--on-existing", "update"), sb.env)
        assert refused.returncode == 1, refused.stderr
        after = sb.state()["invoices"]
    assert after == before, "a closed invoice was changed"
    reasons = {r["external_id"]: r for r in read_reasons(tmp_path / "run2")}
    assert set(reasons) == corrected, reasons
    for ext, r in reasons.items():
        message = f"invoice_status_str: Invoice {ids[ext]} is closed-void: a closed invoice cannot be changed."
        assert (r["kind"], r["stage"], r["http_status"], r["field"]) == ("failed", "update", "400",
                                                                           "invoice_status_str"), r
        assert r["message"] == message, r
    # the invoices the export did not correct are found equal: closed or not, nothing to change
    assert {row["external_id"]: row["action"] for row in read_id_map(tmp_path / "run2")} == {
        d["external_id"]: "unchanged" for d in fixed if d["external_id"] not in corrected}
    s = summary(tmp_path / "run2")["records"]
    assert (s["created"], s["updated"], s["unchanged"], s["failed"]) == (0, 0, N - len(CORRECTED), len(CORRECTED)), s
