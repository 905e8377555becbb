"""The merge's row count of a merged CSV (``bulk._mergefiles.count_rows``) is what :mod:`csv`
reads, whether it counts lines (no quote, no CR) or reads the file as CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from bulk._mergefiles import _CHUNK, count_rows

CASES = [
    "", "line,external_id\n", "h\n1,a\n2,b\n", "h\n1,a", "h\n\n", 'h\n3,"two\nlines",x\n4,b\n',
    "h\r\n1,a\r\n", "h\n1,a\rb,c\n", 'h\n1,"a ""quoted"" id"\n',
]


@pytest.mark.parametrize("text", CASES)
def test_the_count_is_the_csv_modules(text: str, tmp_path: Path) -> None:
    path = tmp_path / "id_map.csv"
    path.write_bytes(text.encode())
    assert count_rows(path) == sum(1 for _ in csv.reader(io.StringIO(text, newline=""))) - 1


def test_a_quoted_newline_past_the_first_chunk_is_one_row(tmp_path: Path) -> None:
    rows = ["h"] + [f"{i},ext-{i:07d},id-{i}" for i in range(_CHUNK // 20)]
    text = "\n".join(rows) + '\n9,"two\nlines",z\n'
    assert len(text) > _CHUNK
    path = tmp_path / "id_map.csv"
    path.write_bytes(text.encode())
    assert count_rows(path) == len(rows)  # the data rows and the quoted one, less the header
