"""A run directory that cannot be written, or a disk that fills during the run.

Either it is detected before anything is sent (exit 3, nothing at the API), or the run stops
resumably (exit 3) with every output file whole (no torn CSV row or NDJSON line, valid
summary.json, no temp file left), and a re-run with space restored finishes exactly once.

Tests run as root in CI, where file modes do not stop writes; the honest mechanisms used here:
``--out`` under a regular file (ENOTDIR), a read-only or tiny tmpfs (mounted as root, or in
a user namespace of the CLI's own as another user; skipped only where neither is possible), and
``RLIMIT_FSIZE`` in the child, which makes every write past the limit fail with EFBIG: a faithful
"disk full" for that process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from harness import (
    REPO,
    SandboxServer,
    assert_counts,
    assert_exactly_once,
    assert_outputs_whole,
    cli,
    cli_with,
    client_env,
    summary,
    support,
    upload_args,
    write_input,
)

import bulk.targets
from bulk.generate import generate

TARGETS = bulk.targets.names()  # the registered targets (entry points included)


def _assert_nothing_sent(sb: SandboxServer) -> None:
    assert sb.state()["requests"]["total"] == 0, "requests were sent before the output problem was found"


def test_out_under_a_regular_file_is_refused_before_sending(tmp_path: Path) -> None:
    src = tmp_path / "in.ndjson"
    write_input(src, 5, seed=301)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with SandboxServer("agiled") as sb:
        done = cli(upload_args(sb, src, blocker / "run"), sb.env, timeout=60)
        # a usage error, found before anything starts (issue 14), like --out naming a file
        assert done.returncode == 2, done.stderr
        assert "is a file, not a directory" in done.stderr, done.stderr
        _assert_nothing_sent(sb)
    assert blocker.read_text() == "x"


def _user_namespaces() -> str | None:
    """None when ``unshare --user --mount --map-root-user`` works here, else why not."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    tried = subprocess.run(["unshare", "--user", "--mount", "--map-root-user", "true"], capture_output=True)
    if tried.returncode != 0:
        return f"user namespaces are not available ({tried.stderr.decode(errors='replace').strip()})"
    return None


def _cli_on_tmpfs(where: Path, options: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The CLI with a tmpfs (mount ``options``) at ``where``.

    As root the tmpfs is mounted here and unmounted after; a mount that fails fails the test
    (a skip would pass CI without proving anything). As another user, the mount and the CLI
    run in a user + mount namespace of their own (``unshare --user --mount --map-root-user``:
    mapped root may mount a tmpfs there, and nobody else sees it); where that is unavailable
    too, the test is skipped, naming what is missing.
    """
    where.mkdir()
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
        if mounted.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs as root ({mounted.stderr.decode(errors='replace').strip()}): "
                        "run the suite with CAP_SYS_ADMIN")
        try:
            return cli(args, env, timeout=60)
        finally:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)
    missing = _user_namespaces()
    if missing is not None:
        pytest.skip(f"needs root or user namespaces to mount a tmpfs: {missing}")
    script = 'mount -t tmpfs -o "$1" tmpfs "$2" || exit 97; shift 2; exec "$@"'
    done = subprocess.run(["unshare", "--user", "--mount", "--map-root-user", "sh", "-c", script, "sh", options,
                           str(where), sys.executable, "-m", "bulk", *args],
                          env=client_env(env), capture_output=True, text=True, timeout=60, cwd=REPO)
    if done.returncode == 97:
        pytest.fail(f"cannot mount a tmpfs in a user namespace: {done.stderr.strip()}")
    return done


def test_read_only_filesystem_is_refused_before_sending(tmp_path: Path) -> None:
    src = tmp_path / "in.ndjson"
    write_input(src, 5, seed=302)
    with SandboxServer("agiled") as sb:
        done = _cli_on_tmpfs(tmp_path / "ro", "ro,size=64m", upload_args(sb, src, tmp_path / "ro" / "run"), sb.env)
        assert done.returncode == 3, done.stderr
        assert "Read-only file system" in done.stderr, done.stderr
        _assert_nothing_sent(sb)


def test_nearly_full_disk_is_refused_before_sending(tmp_path: Path) -> None:
    src = tmp_path / "in.ndjson"
    write_input(src, 5, seed=303)
    with SandboxServer("agiled") as sb:
        done = _cli_on_tmpfs(tmp_path / "small", "size=4m", upload_args(sb, src, tmp_path / "small" / "run"), sb.env)
        assert done.returncode == 3, done.stderr
        assert "free" in done.stderr, done.stderr
        _assert_nothing_sent(sb)


def _run_with_file_size_limit(args: list[str], env: dict[str, str], limit: int,
                              out: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI with RLIMIT_FSIZE = ``limit`` bytes: any write past it fails with EFBIG (SIGXFSZ ignored).

    With ``out``, the limit is armed on progress, not at start: once ``out/id_map.csv`` holds
    ``ARMED_AFTER`` rows, it becomes the largest file in ``out`` plus ``limit`` bytes. SQLite's WAL
    grows with every commit, and commits come with time (``--checkpoint-every``): a limit fixed
    at start could be reached before the first invoice on a slow machine."""
    prelude = ["import resource, signal", "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)"]
    if out is None:
        prelude.append(f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))")
    else:
        prelude.append(ARM.format(out=str(out), rows=ARMED_AFTER, margin=limit))
    return cli_with("\n".join(prelude), args, env)


ARMED_AFTER = 20  # id_map.csv rows (invoices the API made) before the resume file may fill
ARM = """
import pathlib, threading, time
def _arm(run=pathlib.Path({out!r})):
    while True:  # polls the run's own progress (rows written), bounded by the test's timeout
        try:
            if (run / "id_map.csv").read_bytes().count(b"\\n") > {rows}:
                break
        except OSError:
            pass
        time.sleep(0.002)
    largest = max(p.stat().st_size for p in run.iterdir() if p.is_file())
    resource.setrlimit(resource.RLIMIT_FSIZE, (largest + {margin}, largest + {margin}))
threading.Thread(target=_arm, daemon=True).start()
"""

# (RLIMIT_FSIZE, --checkpoint-every, what fills first). SQLite's WAL grows by a few pages per
# commit: frequent checkpoints make the resume file hit the limit first (armed on progress: the
# largest file plus this margin, once invoices were made); rare ones let id_map.csv (and the
# failed files) hit it first, in the middle of a row.
FILLS = {
    "resume-file-fills": (16_384, "0.02", "resume file"),
    "outputs-fill": (56_000, "30", "run directory"),  # "cannot write to the run directory" / "cannot append to"
}
# Every target with its outputs filling up; the resume file filling up (engine code alone) for
# agiled; every pair with ``pytest -m slow``.
CASES = [
    pytest.param(target, fill, id=f"{target}-{fill}",
                 marks=() if fill == "outputs-fill" or target == "agiled" else pytest.mark.slow)
    for target in TARGETS for fill in FILLS
]


@pytest.mark.parametrize(("target", "fill"), CASES)
def test_disk_fills_mid_run_stops_resumably_with_nothing_half_written(target: str, fill: str, tmp_path: Path) -> None:
    limit, every, what = FILLS[fill]
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    good = [json.loads(line) for line in generate(600, seed=304)]
    for i, doc in enumerate(good):  # longer ids, longer id_map rows: the files fill sooner
        doc["external_id"] = f"INV-DISK-FULL-{'X' * 50}-{i:06d}"
    refused = set(range(7, len(good), 40))  # refused by the API: failed.ndjson and failed_reasons.csv grow too
    for i in refused:
        good[i] = support(target).refusable(good[i])
    lines = [json.dumps(doc, ensure_ascii=False).encode() for doc in good]
    records = [r for i, r in enumerate(write_input(src, 0, extra_lines=lines)) if i not in refused]
    with SandboxServer(target) as sb:
        args = upload_args(sb, src, out, "--concurrency", "16", "--checkpoint-every", every)
        stopped = _run_with_file_size_limit(args, sb.env, limit, out if fill == "resume-file-fills" else None)
        assert stopped.returncode == 3, stopped.stderr
        assert what in stopped.stderr or (fill == "outputs-fill" and "cannot append to" in stopped.stderr), \
            stopped.stderr
        assert "File too large" in stopped.stderr or "disk I/O error" in stopped.stderr, stopped.stderr
        assert "run the same command again" in stopped.stderr
        assert "Traceback" not in stopped.stderr, stopped.stderr
        assert_outputs_whole(out)
        s = summary(out)
        assert s["complete"] is False
        # Mid-run: invoices were made, and the job's durable record of them is incomplete.
        assert support(target).invoices(sb.state()), stopped.stderr
        assert s["records"]["created"] < len(records), stopped.stderr

        done = cli(args, sb.env)
        assert done.returncode == 1, done.stderr  # the refused records
        assert_exactly_once(sb, out, records)
    assert_counts(out, records, failed=len(refused))
    assert_outputs_whole(out)
    failed_lines = (out / "failed.ndjson").read_bytes().splitlines()
    assert sorted(failed_lines) == sorted(lines[i] for i in refused)
