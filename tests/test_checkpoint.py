"""The resume file: duplicate detection across runs, resolved values, atomic commit."""

from __future__ import annotations

from pathlib import Path

from bulk.checkpoint import StateStore
from bulk.outputs import Outputs


def test_duplicates_are_seen_across_reopen_only_when_committed(tmp_path: Path) -> None:
    s = StateStore(tmp_path)
    assert s.first_line("INV-1", 1) == 1
    assert s.first_line("INV-2", 2) == 2
    assert s.first_line("INV-1", 7) == 1
    assert s.first_line("INV-1", 1) == 1  # the same record read again (resume) is not a duplicate
    s.commit({"n": 1})
    assert s.first_line("INV-3", 9) == 9  # not committed
    s.close()
    s = StateStore(tmp_path)
    assert s.load() == {"n": 1}
    assert s.first_line("INV-2", 30) == 2
    assert s.first_line("INV-3", 31) == 31  # lost with the uncommitted transaction
    s.close()


def test_resolved_values_survive_and_cache_is_bounded(tmp_path: Path) -> None:
    s = StateStore(tmp_path, cache_size=10)
    for i in range(100):
        s.put("customer", f"C{i}", str(i * 10))
    assert s.get("customer", "C3") == "30"
    assert s.get("customer", "nope") is None
    s.commit({})
    s.close()
    s = StateStore(tmp_path)
    assert s.get("customer", "C99") == "990"
    s.close()


def test_outputs_truncate_to_the_checkpointed_sizes(tmp_path: Path) -> None:
    o = Outputs(tmp_path, None)
    o.created(["INV-1", "1", 1, "", "draft", "EUR", "1.00", "0.19", "1.19"])
    sizes = o.flush()
    o.created(["INV-2", "2", 2, "", "draft", "EUR", "1.00", "0.19", "1.19"])  # after the checkpoint
    o.failed(b'{"bad"', [3, "", "rejected", "parse", "(line)", "", "malformed"])
    o.close()
    o = Outputs(tmp_path, sizes)
    o.close()
    rows = (tmp_path / "id_map.csv").read_text().splitlines()
    assert rows[0].startswith("external_id,invoice_id") and rows[1:] == ["INV-1,1,1,,draft,EUR,1.00,0.19,1.19"]
    assert (tmp_path / "failed.ndjson").read_bytes() == b""
    assert len((tmp_path / "failed_reasons.csv").read_text().splitlines()) == 1  # header only
