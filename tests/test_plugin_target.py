"""A plug-in target proves itself with one test file: tests/plugin_ledger (a client adapter and
its sandbox dialect) is registered through the ``bulk.targets`` and ``bulk.sandbox`` entry
points, as an installed distribution would be, and passes bulk.testing's conformance suite.
The four built-in targets pass the same suite (their tests/support modules say what it needs).
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any

import pytest

import bulk.embedded
import bulk.sandbox
import bulk.targets
import bulk.testing
from bulk.errors import ConfigError


@pytest.fixture
def ledger_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dist-info directory on sys.path: importlib.metadata finds its entry points like pip's."""
    site = tmp_path / "site"
    info = site / "bulk_ledger-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bulk-ledger\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[bulk.targets]\nledger = plugin_ledger.client:LedgerTarget\n\n"
                                           "[bulk.sandbox]\nledger = plugin_ledger.sandbox\n")
    monkeypatch.syspath_prepend(str(site))


def _invoices(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"external_id": inv["number"], "id": str(inv["id"])} for inv in state["invoices"]]


def _refusable(doc: dict[str, Any]) -> dict[str, Any]:
    bad = copy.deepcopy(doc)  # bulk takes any positive quantity; the ledger at most 1000
    bad["lines"][0]["quantity"] = 5000
    return bad


LEDGER = bulk.testing.Support(invoices=_invoices, refusable=_refusable)


def test_the_plugin_is_found_by_name_only_once_installed(ledger_installed: None) -> None:
    assert "ledger" in bulk.targets.names() and "ledger" in bulk.sandbox.available()
    assert bulk.targets.get_target("ledger").name == "ledger"


def test_the_plugin_meets_its_dialect_through_the_default_pairing(ledger_installed: None) -> None:
    # How a client meets its sandbox dialect is bulk.embedded's, not the client contract's.
    assert not [name for name in dir(bulk.targets.Target) if name.startswith("sandbox")]
    pair = bulk.embedded.pairing(bulk.targets.get_target("ledger"))
    assert pair.credentials("tok-0123456789") == ({"LEDGER_TOKEN": "tok-0123456789"}, "tok-0123456789")
    assert pair.dialect_options() == {} and pair.client_options() == {}


def test_without_the_entry_points_the_plugin_is_unknown() -> None:
    assert "ledger" not in bulk.targets.names()
    with pytest.raises(ConfigError, match="unknown target 'ledger'"):
        bulk.targets.get_target("ledger")


@pytest.mark.parametrize("check", bulk.testing.CHECKS)
def test_the_plugin_passes_the_conformance_suite(check: str, ledger_installed: None, tmp_path: Path) -> None:
    bulk.testing.conformance("ledger", LEDGER, tmp_path, checks=[check])


def test_the_suite_fails_a_target_that_breaks_exactly_once(ledger_installed: None, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Without its Idempotency-Key, a create retried after a lost answer is a second create (the
    # ledger refuses the taken number, so the record fails): the suite must catch it (a suite
    # that cannot fail proves nothing).
    from plugin_ledger.client import LedgerTarget

    from bulk.transport import Request

    real = LedgerTarget.upload

    async def careless(self: LedgerTarget, record: Any, job: Any) -> Any:
        class NoKey:
            async def send(self, req: Request, **kw: Any) -> Any:
                req.headers = {}
                return await job.send(req, **kw)
        return await real(self, record, NoKey())  # type: ignore[arg-type]  # a Job with send only

    monkeypatch.setattr(LedgerTarget, "upload", careless)
    with pytest.raises(AssertionError, match=r"'lost_answers': exit 1, not 0: .*'failed': [1-9]"):
        bulk.testing.conformance("ledger", LEDGER, tmp_path, checks=["lost_answers"])


@pytest.mark.parametrize("target", bulk.targets.names())
def test_a_builtin_target_passes_the_same_suite(target: str, tmp_path: Path) -> None:
    support = importlib.import_module(f"support.{target}")
    options = dict(arg.split("=", 1) for arg in support.EXTRA_ARGS[1::2])
    bulk.testing.conformance(target, bulk.testing.Support(support.invoices, support.refusable, options), tmp_path)


def test_the_command_line_takes_the_plugin_and_reads_entry_points_only_for_it(
        ledger_installed: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from bulk._cli.parser import build_parser

    scans: list[int] = []
    real = bulk.targets._entry_points
    monkeypatch.setattr(bulk.targets, "_entry_points", lambda: scans.append(1) or real())
    parser = build_parser()
    assert parser.parse_args(["upload", "in.ndjson", "--target", "anny"]).target == "anny"
    assert parser.parse_args(["sandbox", "--target", "all"]).target == "all"
    assert not scans  # a built-in name (or all): no scan of the installed distributions
    assert parser.parse_args(["upload", "in.ndjson", "--target", "ledger"]).target == "ledger"
    assert parser.parse_args(["validate", "in.ndjson", "--target", "ledger"]).target == "ledger"
    assert scans
    with pytest.raises(SystemExit):
        parser.parse_args(["upload", "in.ndjson", "--target", "nope"])
    with pytest.raises(SystemExit):
        parser.parse_args(["upload", "--help"])
    assert "agiled, anny, chargeover, coperniq, ledger" in " ".join(capsys.readouterr().out.split())
