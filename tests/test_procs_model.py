"""The 2-core model of ``benchmarks.instructions`` (README "Processes"): a client's ceiling is
bound by its processes' own cores and by the cores it shares with the server."""

from __future__ import annotations

import pytest

from benchmarks.instructions import ceiling


def test_one_process_is_bound_by_its_own_core() -> None:
    assert ceiling(0.5, 0.05, 1) == pytest.approx(2.0)  # 1/0.5, not 2/(0.5 + 0.05) = 3.6


def test_two_processes_share_the_two_cores_with_the_server() -> None:
    assert ceiling(0.9, 0.1, 2) == pytest.approx(2.0)  # 2/(0.9 + 0.1), not 2/0.9
    assert ceiling(0.9, 0.1, 4) == pytest.approx(2.0)  # a third process gets no third core


def test_two_processes_beat_one_only_below_twice_its_cpu_less_the_servers() -> None:
    bare, server = 0.5, 0.05
    limit = 2 / ceiling(bare, server, 1) - server  # 0.95
    assert ceiling(limit - 0.01, server, 2) > ceiling(bare, server, 1) > ceiling(limit + 0.01, server, 2)
