"""Credentials stay with the host they are meant for: redirects are not followed (and the run
says why), TLS certificates are verified by default, and plain http to a non-loopback host
needs --allow-insecure-http (refused before any connection otherwise)."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from harness import SandboxServer, ScriptedServer, cli, support, write_input

import bulk.targets
from bulk.cli import main
from bulk.config import UploadConfig
from bulk.embedded import pairing
from bulk.errors import ConfigError
from bulk.targets import get_target

TARGETS = bulk.targets.names()  # the registered targets (entry points included)
TOKEN = "tok-REDIRECTCANARY-5e6f7a8b9c0d"


def _args(target: str, src: Path, out: Path, base_url: str, *extra: str) -> list[str]:
    return ["upload", str(src), "--target", target, "--base-url", base_url, "--out", str(out), "--quiet",
            "--rate", "1000", *support(target).EXTRA_ARGS, *extra]


@pytest.mark.parametrize("status", [302, 307])
@pytest.mark.parametrize("target", TARGETS)
def test_redirect_is_not_followed_and_credentials_never_reach_the_other_host(target: str, status: int,
                                                                             tmp_path: Path) -> None:
    src = tmp_path / "in.ndjson"
    write_input(src, 4, seed=601)

    async def elsewhere(request: web.Request) -> web.Response:
        return web.json_response({"data": []})

    with ScriptedServer(elsewhere) as other:
        async def redirect(request: web.Request) -> web.Response:
            return web.Response(status=status, headers={"Location": other.base_url + request.path_qs})

        with ScriptedServer(redirect) as first:
            env, _ = pairing(get_target(target)).credentials(TOKEN)
            done = cli(_args(target, src, tmp_path / "run", first.base_url), env, timeout=60)  # a hang bound
        assert first.seen, "the client never asked the first server"
        assert other.seen == [], f"the client followed the redirect: {other.seen[:1]}"
    assert done.returncode == 3, done.stderr
    assert f"HTTP {status}" in done.stderr and "redirected to" in done.stderr and "--base-url" in done.stderr, \
        done.stderr
    # stopped at the first answer: only the run's opening request(s) (Coperniq's check asks two at
    # once), no retry of them and no record's write
    assert len(first.seen) <= 2 and all(r["method"] == "GET" for r in first.seen), first.seen
    assert TOKEN not in done.stderr


def test_plain_http_to_a_remote_host_is_refused_before_any_connection(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.ndjson"
    write_input(src, 2, seed=602)
    monkeypatch.setenv("AGILED_API_TOKEN", TOKEN)

    def no_connect(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", no_connect)
    monkeypatch.setattr(socket, "create_connection", no_connect)
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never routed; we must not even try.
    code = main(["upload", str(src), "--target", "agiled", "--base-url", "http://192.0.2.1/api",
                 "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "plain http to a non-loopback host" in err and "--allow-insecure-http" in err, err
    assert not (tmp_path / "run").exists(), "nothing should be created before the refusal"


def test_insecure_http_rules() -> None:
    def config(url: str, allow: bool = False) -> UploadConfig:
        return UploadConfig(input="x", out=Path("y"), base_url=url, allow_insecure_http=allow)

    for refused in ("http://192.0.2.1", "http://api.example.com/v1", "http://10.0.0.8:8080"):
        with pytest.raises(ConfigError, match="--allow-insecure-http"):
            config(refused)
        assert config(refused, allow=True).base_url == refused
    for fine in ("https://api.example.com/v1/", "http://127.0.0.1:8080", "http://localhost:9", "http://[::1]:80"):
        assert config(fine).base_url == fine.rstrip("/")
    with pytest.raises(ConfigError, match="must not carry credentials"):
        config("https://user:pw@api.example.com")


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the self-signed certificate for the TLS checks")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                           "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                           "-keyout", str(key), "-out", str(cert)], capture_output=True, timeout=60)
    if made.returncode != 0:
        pytest.fail(f"openssl could not make a certificate: {made.stderr.decode(errors='replace')}")
    return cert, key


@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted", "trusted-control"])
def test_tls_certificates_are_verified_by_default(self_signed: tuple[Path, Path], trusted: bool,
                                                  tmp_path: Path) -> None:
    """A self-signed certificate fails the run at once with a certificate error and no request
    sent; the control, the same server with its certificate trusted (SSL_CERT_FILE), is reached."""
    cert, key = self_signed
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    src = tmp_path / "in.ndjson"
    write_input(src, 3, seed=603)

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"error": "Unauthorized."}, status=401)

    with SandboxServer("agiled") as sb:  # for the credentials
        env = dict(sb.env)
    if trusted:
        env["SSL_CERT_FILE"] = str(cert)
    with ScriptedServer(ok, ssl=context) as server:
        done = cli(_args("agiled", src, tmp_path / "run", server.base_url), env, timeout=150)  # a hang bound
    if trusted:
        assert server.seen, done.stderr
        assert done.returncode == 3 and "HTTP 401" in done.stderr, done.stderr
        return
    assert server.seen == [], "a request got through an unverified TLS connection"
    assert done.returncode == 2, done.stderr  # a configuration problem: not retried (an outage would be: exit 3)
    assert "certificate" in done.stderr.lower() and "SSL_CERT_FILE" in done.stderr, done.stderr
