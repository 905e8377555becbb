"""Redaction never changes the data the program acts on (issue 10).

With a ChargeOver key pair ``a``/``b``, every ``a`` and ``b`` of the API's answers used to
become ``***`` before they were parsed, and every record ended uncertain. Now:

- the answers reach the target byte for byte, whatever the secrets are (library API: a run
  with credentials ``a``/``b`` against a sandbox whose answers are full of those letters
  creates every record);
- the CLI refuses a credential too short to redact safely (exit 2, before anything is sent,
  naming the variable, never the value): one that short cannot be kept out of messages and
  files without mangling them.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
from harness import SandboxServer, cli, read_id_map, write_input

from bulk.config import UploadConfig
from bulk.embedded import pairing
from bulk.pipeline import Run
from bulk.sandbox.config import SandboxConfig
from bulk.targets import get_target


def _chargeover_sandbox(token: str) -> SandboxServer:
    sb = SandboxServer("chargeover")
    sb.config = SandboxConfig(token=token, options=sb.config.options)
    return sb


def test_answers_are_parsed_unredacted_whatever_the_secrets(tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, 30, seed=901)
    cls = get_target("chargeover")
    creds = {"CHARGEOVER_PUBLIC_KEY": "a", "CHARGEOVER_PRIVATE_KEY": "b"}
    with _chargeover_sandbox("a:b") as sb:
        config = UploadConfig(input=str(src), out=out, target="chargeover", base_url=sb.base_url, attempts=3,
                              give_up_after=10)
        target = cls(base_url=sb.base_url, credentials=creds, options=pairing(cls).client_options())
        result = anyio.run(lambda: Run(config, target).execute(handle_signals=False))
        state = sb.state()
    assert result.error is None and result.exit_code == 0, (result.error, result.summary["records"])
    assert result.summary["records"]["created"] == len(records) and result.summary["records"]["uncertain"] == 0
    # The answers held the letters (names, "bulk", amounts...): they were parsed as sent.
    assert b"a" in json.dumps(state).encode() and b"b" in json.dumps(state).encode()
    assert len(state["invoices"]) == len(records)
    assert {row["invoice_id"] for row in read_id_map(out)} == {str(i["invoice_id"]) for i in state["invoices"]}


def test_the_cli_refuses_a_credential_too_short_to_redact(tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    write_input(src, 5, seed=902)
    env = {"CHARGEOVER_PUBLIC_KEY": "a", "CHARGEOVER_PRIVATE_KEY": "b-but-long-enough"}
    with _chargeover_sandbox("a:b-but-long-enough") as sb:
        done = cli(["upload", str(src), "--target", "chargeover", "--base-url", sb.base_url, "--out", str(out),
                    "--option", "default_item=ADJUSTMENT", "--quiet"], env, timeout=60)
        requests = sb.state()["requests"]["total"]
    assert done.returncode == 2, done.stderr
    assert "CHARGEOVER_PUBLIC_KEY is shorter than 8 characters" in done.stderr, done.stderr
    assert "CHARGEOVER_PRIVATE_KEY" not in done.stderr and "b-but-long-enough" not in done.stderr
    assert requests == 0, "something was sent before the refusal"
    assert not out.exists(), "the run directory was made before the refusal"
