"""id_map.csv rows: a control character in any text cell is written as \\xNN, other text as it is."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from bulk.outputs import Outputs


def _rows(tmp_path: Path, *rows: list[object]) -> list[str]:
    out = Outputs(tmp_path, None)
    for row in rows:
        out.created(list(row))
    out.flush()
    out.close()
    return (tmp_path / "id_map.csv").read_text(encoding="utf-8").splitlines()[1:]


def test_control_characters_in_any_cell_are_escaped_and_the_rest_is_kept(tmp_path: Path) -> None:
    money = [Decimal("10.00"), Decimal("1.90"), Decimal("11.90")]
    rows = _rows(
        tmp_path,
        ["INV-1", "42", 1, "7", "sent", "EUR", *money, "created"],
        ["INV-2", "4\x1b[31m3", 2, "8\x85", "sent", "EUR", *money, "created"],  # ESC and a C1 control
        ["INV-3", "44", 3, "9\u00a0x", "sent", "EUR", *money, "created"],  # unprintable, not a control: kept
    )
    assert rows == [
        "INV-1,42,1,7,sent,EUR,10.00,1.90,11.90,created",
        "INV-2,4\\x1b[31m3,2,8\\x85,sent,EUR,10.00,1.90,11.90,created",
        "INV-3,44,3,9\u00a0x,sent,EUR,10.00,1.90,11.90,created",
    ]
