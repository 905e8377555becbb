"""The first hour of a new user (issue 14): every mistake answered clearly, a progress bar with
a total and an ETA, help that teaches, outputs a person can open.

Every test runs the real CLI in a subprocess against a real sandbox on 127.0.0.1 (port 0).
The progress bar is read through a pseudo-terminal given a real size (120 x 40) before the
child starts: a pty starts at 0 x 0 columns, where tqdm prints nothing.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import gzip
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
from aiohttp import web
from harness import (
    REPO,
    SandboxServer,
    ScriptedServer,
    cli,
    client_env,
    created_count,
    free_port,
    read_reasons,
    run_until,
    stop,
    summary,
    upload_args,
    write_input,
)

import bulk
from bulk.cli import build_parser
from bulk.generate import generate
from bulk.targets import available_targets, get_target

COLS, ROWS = 120, 40


def cli_in(cwd: Path, args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI run from ``cwd`` (so its default ``runs/`` would appear there)."""
    return subprocess.run([sys.executable, "-m", "bulk", *args], env=client_env(env or {}), capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def run_in_pty(args: list[str], env: dict[str, str], *, cwd: Path = REPO, stdin_data: bytes | None = None,
               timeout: float = 120) -> tuple[int, str]:
    """Run the CLI with stderr on a 120 x 40 pseudo-terminal; (exit code, everything it drew)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "bulk", *args], env=client_env(env), cwd=cwd,
                            stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    if stdin_data is not None:
        def feed() -> None:
            assert proc.stdin is not None
            try:
                proc.stdin.write(stdin_data)
            finally:
                proc.stdin.close()
        threading.Thread(target=feed, daemon=True).start()
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 1 << 16)
                except OSError:  # EIO: the child closed its end
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        else:
            raise AssertionError(f"the CLI did not finish in {timeout} s: {bytes(out[-2000:])!r}")
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        os.close(master)
    return proc.returncode, out.decode("utf-8", "replace")


FRAME = re.compile(r"^bulk (?P<target>\w+): +(?:(?P<pct>\d+)%\|[^|]*\| (?P<n>\d+)/(?P<total>\d+) "
                   r"\[(?P<elapsed>[\d:]+)<(?P<eta>[\d:?]+), |(?P<n2>\d+)inv \[(?P<elapsed2>[\d:]+), )"
                   r"(?P<rate>[\d.?]+)(?P<unit>inv/s|s/inv)(?:, created=(?P<created>\d+) failed=(?P<failed>\d+) "
                   r"429s=(?P<throttled>\d+))?\]")


def segments(screen: str) -> list[str]:
    """What the terminal drew, cut at every carriage return and newline."""
    return [s.strip() for s in re.split(r"[\r\n]", screen) if s.strip()]


def frames(screen: str) -> list[dict[str, str | None]]:
    out = []
    for seg in segments(screen):
        m = FRAME.match(seg)
        if m and m["created"] is not None:
            d = m.groupdict()
            d["n"] = d["n"] or d["n2"]
            out.append(d)
    return out


def rate_of(frame: dict[str, str | None]) -> float:
    if frame["rate"] == "?":
        return 0.0
    value = float(frame["rate"] or 0)
    return value if frame["unit"] == "inv/s" else (1 / value if value else 0.0)


# --- usage errors: exit 2, one line, before anything starts -----------------------------------------------------


def test_a_directory_as_input_is_one_line_exit_2_and_creates_nothing(tmp_path: Path) -> None:
    (tmp_path / "some_dir").mkdir()
    done = cli_in(tmp_path, ["upload", "some_dir"])
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "bulk: error: input 'some_dir' is a directory: give the NDJSON file inside it (or - for stdin)"]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists(), "a run directory was created for a directory input"


def test_out_naming_an_existing_file_is_a_usage_error_before_anything_is_sent(tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "taken"
    write_input(src, 3, seed=1401)
    out.write_text("someone's file\n")
    with SandboxServer("agiled") as sb:
        done = cli(upload_args(sb, src, out), sb.env)
        assert done.returncode == 2, done.stderr
        assert "--out" in done.stderr and "is a file, not a directory" in done.stderr, done.stderr
        assert sb.state()["requests"]["total"] == 0, "requests were sent"
    assert out.read_text() == "someone's file\n"


def test_an_unknown_option_key_is_named_with_the_targets_keys(tmp_path: Path) -> None:
    src = tmp_path / "in.ndjson"
    write_input(src, 3, seed=1402)
    with SandboxServer("agiled") as sb:
        done = cli(upload_args(sb, src, tmp_path / "run", "--option", "foo=bar"), sb.env)
        assert done.returncode == 2, done.stderr
        assert "--option foo: not an option of the agiled target (its options: none)" in done.stderr, done.stderr
        assert sb.state()["requests"]["total"] == 0 and not (tmp_path / "run").exists()
    anny = get_target("anny")
    done = cli_in(tmp_path, ["validate", str(src), "--target", "anny", "--option", "orgnization=7"])
    assert done.returncode == 2, done.stderr
    assert "--option orgnization" in done.stderr and ", ".join(anny.option_keys) in done.stderr, done.stderr
    # a key the target reads is accepted
    ok = cli_in(tmp_path, ["validate", str(src), "--target", "anny", "--option", "organization=7"])
    assert ok.returncode == 0, ok.stderr


def test_a_base_url_with_the_targets_path_prefix_gets_a_hint(tmp_path: Path) -> None:
    src = tmp_path / "in.ndjson"
    write_input(src, 3, seed=1403)
    with SandboxServer("agiled") as sb:
        args = upload_args(sb, src, tmp_path / "run")
        args[args.index("--base-url") + 1] = sb.base_url + "/public/v1"
        done = cli(args, sb.env)
        assert created_count(sb) == 0
    assert done.returncode == 2, done.stderr
    assert "HTTP 404" in done.stderr, done.stderr
    assert (f"hint: give the base URL without /public/v1, which bulk adds to every request: "
            f"--base-url {sb.base_url}\n") in done.stderr, done.stderr


def test_failing_requests_are_reported_at_once_and_the_stop_message_once(tmp_path: Path) -> None:
    """Against a server that does not answer, a line says what fails, since when and when the
    run gives up, while the run still waits; the stop message then says "run the same command
    again" once."""
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    write_input(src, 5, seed=1404)
    with SandboxServer("agiled") as sb:
        env = sb.env
    args = ["upload", str(src), "--base-url", f"http://127.0.0.1:{free_port()}", "--out", str(out),
            "--give-up-after", "8"]
    proc = subprocess.Popen([sys.executable, "-m", "bulk", *args], env=client_env(env), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        seen: list[str] = []
        while True:
            line = proc.stderr.readline()
            assert line, f"the run ended without a failing-requests line: {seen}"
            seen.append(line)
            if "requests are failing" in line:
                still_running = proc.poll() is None
                break
        rest = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        stop(proc)
    assert still_running, "the failing-requests line came only when the run was over"
    m = re.search(r"requests are failing since (\d\d:\d\d:\d\d) UTC \(last: (.+)\); giving up at "
                  r"(\d\d:\d\d:\d\d) UTC unless one succeeds", line)
    assert m, line
    assert "cannot connect" in m[2], line
    since, until = (dt.datetime.strptime(t, "%H:%M:%S") for t in (m[1], m[3]))
    assert 6 <= (until - since).total_seconds() % 86400 <= 9, line  # --give-up-after 8 from the last success
    assert proc.returncode == 3, rest
    everything = "".join(seen) + rest
    assert everything.count("run the same command again") == 1, everything
    assert "no successful answer" in rest, rest


def test_a_refused_token_is_one_sentence_with_one_full_stop(tmp_path: Path) -> None:
    src = tmp_path / "in.ndjson"
    write_input(src, 3, seed=1405)

    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"error": "Unauthorized."}, status=401)

    with SandboxServer("agiled") as sb:
        env = sb.env
    with ScriptedServer(refuse) as server:
        done = cli(["upload", str(src), "--base-url", server.base_url, "--out", str(tmp_path / "run"), "--quiet"],
                   env)
    assert done.returncode == 3, done.stderr
    assert "HTTP 401: Unauthorized. Check AGILED_API_TOKEN" in done.stderr, done.stderr
    assert ".." not in done.stderr, done.stderr


def test_a_real_base_url_says_the_pace_and_the_duration_at_the_start(tmp_path: Path) -> None:
    src = tmp_path / "in.ndjson"
    src.write_bytes(b"".join(generate(5000, seed=1406)))
    with SandboxServer("agiled") as sb:
        args = ["upload", str(src), "--base-url", sb.base_url, "--out", str(tmp_path / "run"), "--quiet"]
        proc = subprocess.Popen([sys.executable, "-m", "bulk", *args], env=client_env(sb.env), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            first = proc.stderr.readline()
            # Only the first line matters here: SIGKILL, not SIGINT. A SIGINT that lands while
            # the event loop is still starting was lost once under load (the run went on at
            # 30 writes/min; likely MagicStack/uvloop#295, as seen with bulk sandbox before).
            proc.kill()
            proc.communicate(timeout=60)
        finally:
            stop(proc)
        assert first == ("bulk: 30 writes/min: about 2 h 47 min for 5,000 invoices; --limit write=R for a plan "
                         "with higher limits\n"), first
        # control: with a plan's higher limit the run is short, and nothing is said
        fast = cli(["upload", str(src), "--base-url", sb.base_url, "--out", str(tmp_path / "fast"), "--quiet",
                    "--limit", "write=100000", "--limit", "read=100000"], sb.env)
    assert fast.returncode == 0, fast.stderr
    assert "writes/min" not in fast.stderr and "about" not in fast.stderr, fast.stderr


# --- help ------------------------------------------------------------------------------------------------------


def test_help_lists_the_environment_exit_codes_and_every_default() -> None:
    top, upload, sandbox = (cli_in(REPO, [*cmd, "--help"]) for cmd in ([], ["upload"], ["sandbox"]))
    for done in (top, upload, sandbox):
        assert done.returncode == 0, done.stderr
    for text in (top.stdout, upload.stdout):
        for name in available_targets():
            cls = get_target(name)
            for var in (*cls.credential_env, cls.base_url_env):
                assert var in text, (name, var)
        assert "exit codes:" in text and "130" in text and "resumable" in text
    assert "(default: agiled)" in upload.stdout
    assert "without /public/v1" in upload.stdout
    for name in available_targets():
        assert " and ".join(get_target(name).credential_env) in sandbox.stdout, name
    assert "accepts only" in sandbox.stdout and "any token" in sandbox.stdout

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    for command, sub in subparsers.choices.items():
        shown = cli_in(REPO, [command, "--help"]).stdout
        for action in sub._actions:
            if action.help == "==SUPPRESS==" or "-h" in action.option_strings:
                continue
            what = f"bulk {command} {action.dest}"
            assert action.help, f"{what} has no help line"
            flag = action.nargs == 0  # --dry-run, --quiet: off unless given
            if action.option_strings and not flag and not action.required:
                assert "default" in action.help, f"{what}: the help does not say the default"
            name = action.option_strings[0] if action.option_strings else (action.metavar or action.dest)
            assert name in shown, f"{what} is not in bulk {command} --help"


# --- the progress bar (through a 120 x 40 pseudo-terminal) ---------------------------------------------------


@pytest.mark.parametrize("kind", ["file", "gz", "stdin"])
def test_the_bar_has_a_percentage_an_eta_notes_above_it_and_ends_on_the_summary(kind: str, tmp_path: Path) -> None:
    data = b"".join(generate(300, seed=1407))
    out = tmp_path / "run"
    if kind == "file":
        src = tmp_path / "in.ndjson"
        src.write_bytes(data)
    elif kind == "gz":
        src = tmp_path / "in.ndjson.gz"
        src.write_bytes(gzip.compress(data))
    # the embedded sandbox (no --base-url): its notice is the note that must not land in the bar
    args = ["upload", "-" if kind == "stdin" else str(src), "--out", str(out), "--rate", "300"]
    code, screen = run_in_pty(args, {}, cwd=tmp_path, stdin_data=data if kind == "stdin" else None)
    assert code == 0, screen[-3000:]
    s = summary(out)

    notice = [seg for seg in segments(screen) if "no --base-url" in seg]
    assert notice and all(seg.startswith("bulk: no --base-url: using the embedded agiled sandbox") for seg in notice), \
        notice  # on a line of its own, not appended to a frame
    drawn = frames(screen)
    assert len(drawn) >= 3, screen[-3000:]
    assert all(len(seg) <= COLS for seg in segments(screen) if seg.startswith("bulk agiled:")), \
        "wider than the terminal"
    middle = [f for f in drawn if f["pct"] is not None and 0 < int(f["pct"]) < 100]
    if kind == "stdin":  # a pipe has no size: counts and a rate, no percentage until the end
        assert not middle and any(f["pct"] is None and int(f["n"] or 0) > 0 for f in drawn), drawn
    else:
        assert middle, f"no frame with a percentage under way: {drawn}"
        for f in middle:
            assert re.fullmatch(r"\d\d:\d\d", f["eta"] or ""), f  # an ETA
        # the invoice total is estimated from the bytes finished: close once a third is done
        judged = [f for f in middle if int(f["n"] or 0) >= 100]
        assert all(abs(int(f["total"] or 0) - 300) <= 30 for f in judged), f"total estimated badly: {judged}"
    last = drawn[-1]
    r = s["records"]
    assert (last["pct"], last["n"], last["total"]) == ("100", str(r["read"]), str(r["read"])), last
    assert (int(last["created"] or -1), int(last["failed"] or -1), int(last["throttled"] or -1)) == \
        (r["created"], r["rejected"] + r["failed"] + r["uncertain"], s["throttled"]), (last, s)
    assert r["created"] == 300


def test_a_resumed_run_shows_its_own_rate_and_keeps_the_jobs_start_time(tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    write_input(src, 400, seed=1408)
    with SandboxServer("agiled") as sb:
        args = upload_args(sb, src, out, "--rate", "300")
        code, _ = run_until(sb, args, created=150, then=lambda p: p.send_signal(signal.SIGINT))
        assert code == 130
        first = summary(out)
        done_before = first["records"]["read"]
        assert 150 <= done_before < 400, first
        rate = 100  # requests per second: no invoice rate of this run can exceed it
        again = [*(a for a in args if a != "--quiet"), "--rate", str(rate)]  # the last --rate counts
        code, screen = run_in_pty(again, sb.env)
    assert code == 0, screen[-3000:]
    drawn = frames(screen)
    assert drawn and all(int(f["n"] or 0) >= done_before for f in drawn), drawn  # starts at the earlier runs'
    moving = [f for f in drawn if int(f["n"] or 0) > done_before]
    assert moving, drawn
    # counting the earlier runs' records as this run's would show thousands per second at first
    assert all(rate_of(f) <= rate * 1.2 for f in moving), [f["rate"] for f in moving]
    last = summary(out)
    assert last["records"]["created"] == 400 and drawn[-1]["n"] == "400" and drawn[-1]["pct"] == "100"
    assert last["version"] == bulk.__version__
    assert last["started_at"] == first["started_at"], "the job's start changed on resume"
    started, ended = (dt.datetime.fromisoformat(last[k]) for k in ("started_at", "ended_at"))
    assert started.utcoffset() == dt.timedelta(0) and ended.utcoffset() == dt.timedelta(0)
    assert started <= dt.datetime.fromisoformat(first["ended_at"]) <= ended


# --- outputs a person opens ------------------------------------------------------------------------------------


def test_failed_reasons_escape_control_characters_and_keep_the_message_itself(tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    good = next(iter(generate(1, seed=1409)))
    bad = json.loads(good)
    bad["external_id"] = "BAD\u0000ID\u001b[31m"
    bad_line = json.dumps(bad).encode()
    write_input(src, 2, seed=1410, extra_lines=[bad_line])
    with SandboxServer("agiled") as sb:
        done = cli(upload_args(sb, src, out), sb.env)
    assert done.returncode == 1, done.stderr
    raw = (out / "failed_reasons.csv").read_bytes()
    assert not re.search(rb"[\x00-\x09\x0b-\x1f\x7f]", raw), raw  # grep sees text: no NUL, no ESC
    [reason] = read_reasons(out)
    assert reason["external_id"] == "BAD\\x00ID\\x1b[31m", reason
    assert (reason["line"], reason["kind"], reason["field"]) == ("3", "rejected", "external_id"), reason
    # the message itself: "line 3: external_id:" is already in its own columns
    assert reason["message"] and not reason["message"].startswith(("line ", "external_id")), reason
    assert (out / "failed.ndjson").read_bytes() == bad_line + b"\n"  # verbatim, to fix and re-feed


def test_a_ctrl_c_during_a_dry_run_says_nothing_was_sent(tmp_path: Path) -> None:
    # A dry run sends nothing and makes no job: "run the same command again to resume" is wrong there.
    import signal

    from harness import start_cli

    line = b'{"customer": {"external_id": "C-1"}, "currency": "eur", "lines": [{"item_ref": "SKU-1"}]}\n'
    fifo = tmp_path / "export.ndjson"
    os.mkfifo(fifo)
    proc = start_cli(["upload", str(fifo), "--target", "agiled", "--out", str(tmp_path / "run"), "--dry-run"], {})
    fd = os.open(fifo, os.O_WRONLY)
    try:
        os.write(fd, line * 4096)  # returns once the dry run has read most of it: it is under way
        proc.send_signal(signal.SIGINT)
    finally:
        os.close(fd)  # the end of the input: the reader's pending read returns
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: the dry run stopped; nothing was sent" in err
    assert "resume" not in err and "dry run:" not in err and not out  # no plan of a half-read file either
