"""id_map.csv rows: a control character in any text cell is written as \\xNN, other text as it is."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from bulk.outputs import ID_MAP_HEADER, LEGACY_ID_MAP_HEADER, Outputs


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


# Hostile cell values: every one must come out of the fast row exactly as the csv path writes it.
_HOSTILE = [
    "plain", "", " ", " lead", "trail ", "a,b", ",", '"', 'say "hi"', '"quoted"', "a\nb", "a\r\nb", "\r",
    "tab\tin", "nul\x00", "esc\x1b[0m", "del\x7f", "c1\x85", "\x9f", "é", "東京", "😀", "nbsp\u00a0",
    "ls\u2028", "=1+2", "+1", "-1", "@SUM(A1)", "=HYPERLINK(\"x\")", "None", "\\x41", "a\\", "'", ";",
]


def _reference(row: list[object]) -> str:
    """What the csv module writes for ``row`` with every text cell escaped (escape_cell)."""
    import csv
    import io

    from bulk.outputs import escape_cell

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([escape_cell(cell) for cell in row])
    return buf.getvalue()


def test_the_fast_row_is_byte_identical_to_the_csv_row_for_hostile_values(tmp_path: Path) -> None:
    base = ["INV-1", "42", 7, "C-9", "sent", "EUR", Decimal("10.00"), Decimal("1.90"), Decimal("11.90"), "created"]
    rows: list[list[object]] = [list(base)]
    for position in (0, 1, 3, 4, 5, 9):  # every text cell
        for value in _HOSTILE:
            row = list(base)
            row[position] = value
            rows.append(row)
    rows.append([*_HOSTILE[5:11], Decimal("-0.00"), Decimal("1E+3"), Decimal("0E-8"), "x,y"])  # several at once
    rows.append(["a", "b", 10**20, "", "", "JPY", Decimal("123456789012345678901234567890"), Decimal("0"),
                 Decimal("123456789012345678901234567890"), "existing"])
    # a plugin target's non-text cells (an int invoice id, a JSON list status), each twice: the
    # second meets the remembered cells (no TypeError from a concatenation or a set lookup)
    for _ in range(2):
        rows.append(["INV-7", 77, 8, "C-9", "sent", "EUR", *base[6:9], "created"])
        rows.append(["INV-8", "88", 9, "C-9", ["sent"], "EUR", *base[6:9], "created"])
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    fast.mkdir()
    slow.mkdir()
    f_out, s_out = Outputs(fast, None), Outputs(slow, None)
    for row in rows:
        f_out.created_row(*row)  # type: ignore[arg-type]  # hostile on purpose
        s_out.created(list(row))
    f_sizes, s_sizes = f_out.flush(), s_out.flush()
    f_out.close()
    s_out.close()
    data = (fast / "id_map.csv").read_bytes()
    assert data == (slow / "id_map.csv").read_bytes()
    assert data == ("".join([_reference(ID_MAP_HEADER)] + [_reference(row) for row in rows])).encode("utf-8")
    assert f_sizes == s_sizes
    assert f_sizes["id_map.csv"] == len(data)  # the size a resume truncates to


def test_a_fast_row_and_a_csv_row_interleave_in_order_and_a_legacy_map_keeps_its_columns(tmp_path: Path) -> None:
    money = (Decimal("1.00"), Decimal("0.19"), Decimal("1.19"))
    out = Outputs(tmp_path, None)
    out.created_row("INV-1", "11", 1, "C-1", "draft", "EUR", *money, "created")
    out.created_row("INV-2,x", "12", 2, "C-1", "draft", "EUR", *money, "created")  # quoted: the csv path
    out.created_row("INV-3", "13", 3, "C-1", "draft", "EUR", *money, "existing")
    sizes = out.flush()
    out.close()
    text = (tmp_path / "id_map.csv").read_text(encoding="utf-8")
    assert text.splitlines()[1:] == ["INV-1,11,1,C-1,draft,EUR,1.00,0.19,1.19,created",
                                     '"INV-2,x",12,2,C-1,draft,EUR,1.00,0.19,1.19,created',
                                     "INV-3,13,3,C-1,draft,EUR,1.00,0.19,1.19,existing"]
    assert sizes["id_map.csv"] == len(text.encode("utf-8"))

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    head = ",".join(LEGACY_ID_MAP_HEADER) + "\n"
    (legacy / "id_map.csv").write_text(head, encoding="utf-8")
    out = Outputs(legacy, {"id_map.csv": len(head)})
    out.created_row("INV-4", "14", 4, "C-1", "draft", "EUR", *money, "created")
    out.flush()
    out.close()
    assert (legacy / "id_map.csv").read_text(encoding="utf-8") == head + "INV-4,14,4,C-1,draft,EUR,1.00,0.19,1.19\n"


def test_cells_remembered_as_plain_never_let_a_hostile_row_through_the_fast_row(tmp_path: Path) -> None:
    # created_row remembers the repeating cells (customer, status, currency, action) of rows it
    # wrote as text; a row of remembered cells whose new cells (external id, invoice id) are
    # hostile, and a hostile value in a remembered cell's column, still come out as the csv
    # path writes them, on the second pass as on the first.
    money = [Decimal("10.00"), Decimal("1.90"), Decimal("11.90")]
    rows: list[list[object]] = []
    for value in _HOSTILE:
        rows.append(["INV-1", "42", 1, "C-9", "sent", "EUR", *money, "created"])
        rows.append([value, "42", 2, "C-9", "sent", "EUR", *money, "created"])
        rows.append(["INV-3", value, 3, "C-9", "sent", "EUR", *money, "created"])
        rows.append(["INV-4", "44", 4, value, value, "EUR", *money, value])
    out = Outputs(tmp_path, None)
    for row in rows + rows:
        out.created_row(*row)  # type: ignore[arg-type]  # hostile on purpose
    out.flush()
    out.close()
    expected = "".join([_reference(ID_MAP_HEADER)] + [_reference(row) for row in rows + rows])
    assert (tmp_path / "id_map.csv").read_bytes() == expected.encode("utf-8")
