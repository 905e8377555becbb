"""The 2-core model of ``benchmarks.instructions`` (README "Processes"): a client's ceiling is
bound by its processes' own cores and by the cores it shares with the server; and the ``auto``
choice it leads to (``UploadConfig.processes_for``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import bulk._procfork
from benchmarks.instructions import ceiling
from bulk.config import UploadConfig


def test_one_process_is_bound_by_its_own_core() -> None:
    assert ceiling(0.5, 0.05, 1) == pytest.approx(2.0)  # 1/0.5, not 2/(0.5 + 0.05) = 3.6


def test_two_processes_share_the_two_cores_with_the_server() -> None:
    assert ceiling(0.9, 0.1, 2) == pytest.approx(2.0)  # 2/(0.9 + 0.1), not 2/0.9
    assert ceiling(0.9, 0.1, 4) == pytest.approx(2.0)  # a third process gets no third core


def test_two_processes_beat_one_only_below_twice_its_cpu_less_the_servers() -> None:
    bare, server = 0.5, 0.05
    limit = 2 / ceiling(bare, server, 1) - server  # 0.95
    assert ceiling(limit - 0.01, server, 2) > ceiling(bare, server, 1) > ceiling(limit + 0.01, server, 2)


def _config(tmp_path: Path, size: int, name: str = "in.ndjson", **kw: Any) -> UploadConfig:
    src = tmp_path / name
    with open(src, "wb") as f:
        f.truncate(size)
    return UploadConfig(input=str(src), out=tmp_path / "run", **{"processes": 0, **kw})


def test_auto_takes_two_processes_only_where_the_measurement_says_they_pay(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    big, small = 4 << 20, (4 << 20) - 1
    assert _config(tmp_path, big).processes_for() == 2
    assert _config(tmp_path, small).processes_for() == 1  # start-up not won back
    assert _config(tmp_path, big, "in.ndjson.gz").processes_for() == 1  # a .gz: each worker parses every line
    assert _config(tmp_path, big, target="anny").processes_for() == 1  # its own customer key: the same
    assert _config(tmp_path, big, thresholds=("x",)).processes_for() == 1  # judged in one process
    assert _config(tmp_path, big, arrival_rate=5.0).processes_for() == 1
    assert _config(tmp_path, big, options={"create_missing": "items"}).processes_for() == 1
    assert _config(tmp_path, big, processes=3).processes_for() == 3  # asked for: given
    # a pace one process keeps up with: the real API's documented limit (Agiled: 0.5 writes/s),
    # or --rate / --limit at most 1,000 a second; the embedded sandbox (no --base-url) has none
    api = "https://api.example.com"
    assert _config(tmp_path, big, base_url=api).processes_for() == 1
    assert _config(tmp_path, big, base_url=api, rate=1000.0).processes_for() == 1
    assert _config(tmp_path, big, base_url=api, rate=1001.0).processes_for() == 2
    assert _config(tmp_path, big, base_url=api, limits={"write": 5000.0}).processes_for() == 2
    assert _config(tmp_path, big, base_url=api, rate=1e9, limits={"write": 900.0}).processes_for() == 1
    assert _config(tmp_path, big, rate=500.0).processes_for() == 1
    assert _config(tmp_path, big, target="coperniq", base_url=api).processes_for() == 1  # 100 requests/s
    assert _config(tmp_path, big, target="coperniq", base_url=api, rate=1e9).processes_for() == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert _config(tmp_path, big).processes_for() == 1
    # where the workers cannot be forked (bulk._procfork), spawned ones win back their start-up later
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(bulk._procfork, "forkable", lambda: False)
    assert _config(tmp_path, big).processes_for() == 1
    assert _config(tmp_path, 16 << 20).processes_for() == 2
