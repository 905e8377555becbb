"""Credentials never leak, per target: not into any file of the run directory, the progress bar,
stdout/stderr (with and without --quiet), tracebacks or exception messages, for a successful
run and for failing ones (401, a 5xx outage, refused records), and not even when a hostile
server echoes the credential back in its error answers.

Every run uses a distinctive token; the test greps everything the run produced for it, for each
string the target declares secret (``Target.secrets()``, e.g. the Basic-auth base64 pair) and
for the credential headers exactly as the server received them.
"""

from __future__ import annotations

import base64
import json
import os
import pty
import select
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from harness import (
    REPO,
    SandboxServer,
    ScriptedServer,
    cli,
    client_env,
    support,
    upload_args,
    write_input,
)

import bulk.targets
from bulk.config import UploadConfig
from bulk.embedded import pairing
from bulk.generate import generate
from bulk.pipeline import Run
from bulk.targets import get_target

TARGETS = bulk.targets.names()  # the registered targets (entry points included)
TOKEN = "tok-LEAKCANARY-7f3a9c1e5b2d8f4a6c0e"
WRONG = "tok-WRONGCANARY-0d9e8f7a6b5c4d3e2f1a"
_SAFE_HEADERS = {"host", "accept", "accept-encoding", "content-type", "content-length", "user-agent",
                 "idempotency-key", "connection"}


def _needles(target: str, secret: str, seen: list[dict[str, Any]] = ()) -> set[bytes]:  # type: ignore[assignment]
    """Every form of the credential that must never appear: the raw secrets the target
    declares, base64 forms, and credential header values as a server received them."""
    cls = get_target(target)
    env, _ = pairing(cls).credentials(secret)
    adapter = cls(base_url="", credentials=env, options={})
    forms = {s for s in adapter.secrets() if s and len(s) >= 8}
    forms |= {secret, base64.b64encode(secret.encode()).decode()}
    values = [env[name] for name in cls.credential_env]
    forms.add(base64.b64encode(":".join(values).encode()).decode())
    for request in seen:
        for name, value in request["headers"].items():
            if name.lower() not in _SAFE_HEADERS:
                forms.add(value)
                forms.update(part for part in value.split() if len(part) >= 8)
    return {f.encode() for f in forms if f}


def _grep(needles: set[bytes], blobs: dict[str, bytes]) -> list[str]:
    return [f"{name} contains {needle[:12]!r}..." for name, blob in blobs.items() for needle in needles
            if needle in blob or needle.replace(b"/", b"\\/") in blob]


def _run_dir_blobs(out: Path) -> dict[str, bytes]:
    assert out.exists(), "the run produced no run directory"
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def _cli_in_pty(args: list[str], env: dict[str, str], timeout: float = 90) -> tuple[int, bytes, bytes]:
    """The CLI with stderr on a pseudo-terminal, so the tqdm progress bar is really drawn."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "bulk", *args], env=client_env(env), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    tty = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                tty += chunk
            elif proc.poll() is not None:
                break
        stdout, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        os.close(master)
    return proc.returncode, stdout, tty


def _input_with_refused(target: str, path: Path) -> None:
    docs = [json.loads(line) for line in generate(12, seed=501)]
    docs[4] = support(target).refusable(docs[4])
    path.write_bytes(b"".join(json.dumps(d, ensure_ascii=False).encode() + b"\n" for d in docs))


@pytest.mark.parametrize("target", TARGETS)
def test_no_credential_in_anything_a_run_produces(target: str, tmp_path: Path) -> None:
    src = tmp_path / "in.ndjson"
    _input_with_refused(target, src)
    needles = _needles(target, TOKEN) | _needles(target, WRONG)
    blobs: dict[str, bytes] = {}
    with SandboxServer(target, secret=TOKEN) as sb:
        # 1. finishes with a record refused by the API, progress bar drawn on a terminal
        out = tmp_path / "ok"
        code, stdout, tty = _cli_in_pty([a for a in upload_args(sb, src, out) if a != "--quiet"], sb.env)
        assert code == 1, tty.decode(errors="replace")
        assert b"\r" in tty and b"inv" in tty, "the progress bar was not drawn"
        blobs |= {"ok/stdout": stdout, "ok/tty": tty} | {f"ok/{k}": v for k, v in _run_dir_blobs(out).items()}
        # 2. the credentials are refused (401), --quiet
        wrong_env, _ = pairing(get_target(target)).credentials(WRONG)
        out = tmp_path / "401"
        done = cli(upload_args(sb, src, out), wrong_env, timeout=60)
        assert done.returncode == 3 and "401" in done.stderr, done.stderr
        blobs |= {"401/stdout": done.stdout.encode(), "401/stderr": done.stderr.encode()}
        blobs |= {f"401/{k}": v for k, v in _run_dir_blobs(out).items()}
        # 3. the API is down (5xx for everything) until the run gives up, not --quiet
        sb.faults(fail_rate=1.0)
        out = tmp_path / "5xx"
        done = cli([a for a in upload_args(sb, src, out, "--give-up-after", "1") if a != "--quiet"], sb.env,
                   timeout=60)
        assert done.returncode == 3 and "no successful answer" in done.stderr, done.stderr
        blobs |= {"5xx/stdout": done.stdout.encode(), "5xx/stderr": done.stderr.encode()}
        blobs |= {f"5xx/{k}": v for k, v in _run_dir_blobs(out).items()}
    assert not _grep(needles, blobs), _grep(needles, blobs)


def _echo_body(request: web.Request) -> dict[str, Any]:
    quoted = {k: v for k, v in request.headers.items()}
    text = f"invalid request with credentials {quoted}"
    return {"error": text, "message": text, "detail": text, "title": text,
            "errors": [{"title": text, "detail": text, "code": text}], "headers": quoted}


def _echo(status: int, sandbox: str | None = None) -> Any:
    """A hostile server: answers quote the request's headers, credentials included. With
    ``sandbox``, reads are passed through to it and only writes answer ``status`` (so the run
    gets past its smoke test and lookups, and the refusals reach failed_reasons.csv)."""
    import aiohttp

    async def respond(request: web.Request) -> web.Response:
        if sandbox is not None and request.method == "GET":
            async with aiohttp.ClientSession() as session, session.get(
                    sandbox + request.path_qs, headers={k: v for k, v in request.headers.items()
                                                        if k.lower() != "host"}) as real:
                return web.Response(body=await real.read(), status=real.status,
                                    content_type=real.content_type)
        return web.json_response(_echo_body(request), status=status, headers={"Retry-After": "1"})

    return respond


@pytest.mark.parametrize("status", [401, 422, 500])
@pytest.mark.parametrize("target", TARGETS)
def test_a_server_echoing_the_credential_does_not_make_us_leak_it(target: str, status: int, tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    write_input(src, 6, seed=502)
    env, _ = pairing(get_target(target)).credentials(TOKEN)
    with SandboxServer(target, secret=TOKEN) as sb, \
            ScriptedServer(_echo(status, sb.base_url if status == 422 else None)) as server:
        args = ["upload", str(src), "--target", target, "--base-url", server.base_url, "--out", str(out),
                "--give-up-after", "1", "--retries", "1", "--rate", "1000", *support(target).EXTRA_ARGS]
        done = cli(args, env, timeout=60)
    assert done.returncode == (1 if status == 422 else 3), done.stderr
    if status == 422:
        reasons = (out / "failed_reasons.csv").read_text()
        assert "***" in reasons, "the echoed credential should be in the reasons, redacted"
    assert server.seen, "nothing reached the server"
    needles = _needles(target, TOKEN, server.seen)
    blobs = {"stdout": done.stdout.encode(), "stderr": done.stderr.encode()} | _run_dir_blobs(out)
    assert not _grep(needles, blobs), (_grep(needles, blobs), done.stderr)


def test_exception_messages_and_tracebacks_carry_no_credential(tmp_path: Path) -> None:
    """The library API (no CLI): the error a failed run returns, its traceback and its chain."""
    src = tmp_path / "in.ndjson"
    write_input(src, 4, seed=503)
    cls = get_target("agiled")
    env, _ = pairing(cls).credentials(TOKEN)
    for status in (401, 500):
        with ScriptedServer(_echo(status)) as server:
            config = UploadConfig(input=str(src), out=tmp_path / f"run-{status}", target="agiled",
                                  base_url=server.base_url, give_up_after=1, attempts=2)
            target = cls(base_url=server.base_url, credentials=env, options={})
            result = anyio.run(lambda: Run(config, target).execute(handle_signals=False))  # noqa: B023
        assert result.exit_code == 3 and result.error is not None
        err = result.error
        texts = [str(err), repr(err), "".join(traceback.format_exception(err)), repr(vars(err)),
                 json.dumps(result.summary)]
        cause = err.__cause__ or err.__context__
        while cause is not None:
            texts.append("".join(traceback.format_exception(cause)))
            cause = cause.__cause__ or cause.__context__
        needles = _needles("agiled", TOKEN, server.seen)
        leaks = _grep(needles, {f"text{i}": t.encode() for i, t in enumerate(texts)})
        assert not leaks, (leaks, texts[0])
