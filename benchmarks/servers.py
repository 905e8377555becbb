"""The servers the benchmark clients talk to, each a subprocess on 127.0.0.1.

- ``nginx``: canned answers from a generated configuration (``return 201 '...'``), one worker
  process. With the echo module (Debian: ``libnginx-mod-http-echo``) the same answers after
  ``echo_sleep`` for the latency scenario. A C server, so it is not the bottleneck: the
  harness reports its CPU use next to every run to show it.
- ``canned``: :mod:`benchmarks.canned`, the Python fallback when nginx (or its echo module)
  is missing. Labelled as such in the table: it may be the bottleneck.
- ``sandbox``: ``bulk sandbox --target agiled --rate-limit R --read-rate-limit R``, the Agiled
  simulator enforcing R requests per second per kind with 429 + Retry-After (token bucket).
- ``nginx_limited``: the canned answers behind nginx ``limit_req`` (rate R, ``burst=5
  nodelay``, 429 with ``Retry-After: 1``): a real server's small bucket. Its access log
  (status and time of every request) is what the harness counts.

Every server exposes ``base_url``, ``label`` and ``cpu_seconds()`` (user + system time of
its processes so far, from /proc; None where /proc is not available).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["Server", "nginx_available", "start_canned", "start_nginx", "start_nginx_limited", "start_sandbox"]

ME = '{"data":{"id":1,"name":"bench"}}'
CONTACTS = '{"data":[{"id":1}]}'
INVOICE = '{"data":{"id":1,"status":"draft","total":null}}'
ECHO_MODULE_PATHS = ("/usr/lib/nginx/modules/ngx_http_echo_module.so",
                     "/usr/lib64/nginx/modules/ngx_http_echo_module.so")
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_cpu(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir() if Path("/proc").exists() else ():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                kids.append(int(entry.name))
    return kids


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], base_url: str, label: str, tmp: Path | None = None) -> None:
        self.proc, self.base_url, self.label, self._tmp = proc, base_url, label, tmp
        self._pids = [proc.pid]

    def track_children(self) -> None:
        self._pids = [self.proc.pid, *_children(self.proc.pid)]

    def pin(self, cpus: set[int]) -> None:
        """Run every thread of the server's processes on ``cpus`` only (``benchmarks.run --pin``)."""
        for pid in self._pids:
            for tid in os.listdir(f"/proc/{pid}/task"):
                os.sched_setaffinity(int(tid), cpus)

    def cpu_seconds(self) -> float | None:
        values = [_proc_cpu(pid) for pid in self._pids]
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)

    def first_request_times(self) -> tuple[float, float]:
        """Epoch seconds of the first request and of the first ``POST .../invoices`` in the access
        log (nginx started with ``access_log=True``; nginx stamps a request when it answers)."""
        assert self._tmp is not None
        first = first_post = float("nan")
        with open(self._tmp / "access.log") as log:
            for line in log:
                stamp, method, uri = line.split()
                if first != first:
                    first = float(stamp)
                if method == "POST" and uri.endswith("/invoices"):
                    first_post = float(stamp)
                    break
        return first, first_post

    def log_offset(self) -> int:
        """The access log's size now: :meth:`answers` counts what comes after it."""
        assert self._tmp is not None
        path = self._tmp / "access.log"
        return path.stat().st_size if path.exists() else 0

    def answers(self, offset: int) -> tuple[int, int, float, float]:
        """From the access log of ``start_nginx_limited`` after ``offset``: (requests, answered
        429, seconds from the first to the last accepted request, and to the last accepted one
        but as many as were answered 429). The last span is the pace without the tail a
        throttled request's Retry-After adds: a 429 in the run's last second makes the run
        wait up to that second for its one resend, which is not the pace."""
        assert self._tmp is not None
        total = throttled = 0
        stamps: list[float] = []
        with open(self._tmp / "access.log", "rb") as log:
            log.seek(offset)
            for line in log:
                stamp, status = line.split(None, 2)[:2]
                total += 1
                if status == b"429":
                    throttled += 1
                    continue
                stamps.append(float(stamp))
        if not stamps:
            return total, throttled, float("nan"), float("nan")
        paced = stamps[max(0, len(stamps) - 1 - throttled)]
        return total, throttled, stamps[-1] - stamps[0], paced - stamps[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if "nginx" not in self.label else signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


def _wait_listening(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f} s")


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                          if os.access(p, os.X_OK)), None)


def echo_module() -> str | None:
    return next((p for p in ECHO_MODULE_PATHS if os.path.exists(p)), None)


def nginx_available(latency: bool) -> bool:
    return nginx_binary() is not None and (not latency or echo_module() is not None)


def _nginx_conf(tmp: Path, port: int, latency_ms: float, module: str | None, access_log: bool = False) -> str:
    if latency_ms:
        delay = f"{latency_ms / 1000:.3f}"
        routes = f"""
    location = /public/v1/me {{ return 200 '{ME}'; }}
    location = /public/v1/contacts {{ echo_sleep {delay}; echo '{CONTACTS}'; }}
    location = /public/v1/invoices {{ echo_read_request_body; echo_sleep {delay}; echo_status 201;
                                      echo '{INVOICE}'; }}"""
    else:
        routes = f"""
    location = /public/v1/me {{ return 200 '{ME}'; }}
    location = /public/v1/contacts {{ return 200 '{CONTACTS}'; }}
    location = /public/v1/invoices {{ return 201 '{INVOICE}'; }}"""
    return f"""{f'load_module {module};' if latency_ms and module else ''}
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  {f"log_format stamp '$msec $request_method $uri'; access_log {tmp}/access.log stamp;"
   if access_log else "access_log off;"}
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi;
  uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_body_buffer_size 64k;
  default_type application/json;
  server {{
    listen 127.0.0.1:{port} backlog=4096;{routes}
  }}
}}
"""


def _launch_nginx(conf: Callable[[Path, int], str], description: str) -> Server:
    """Start nginx on a free loopback port with the configuration ``conf(tmp, port)`` makes."""
    binary = nginx_binary()
    assert binary is not None
    tmp = Path(tempfile.mkdtemp(prefix="bulk-bench-nginx-"))
    os.chmod(tmp, 0o755)
    port = free_port()
    (tmp / "nginx.conf").write_text(conf(tmp, port))
    proc = subprocess.Popen([binary, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(tmp / "nginx.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_listening(port, proc, "nginx")
    server = Server(proc, f"http://127.0.0.1:{port}", description, tmp)
    time.sleep(0.1)
    server.track_children()
    return server


def start_nginx(latency_ms: float = 0, *, access_log: bool = False) -> Server:
    """nginx with canned answers; ``access_log`` stamps each request (see first_request_times)."""
    module = echo_module()
    if nginx_binary() is None or (latency_ms and module is None):
        raise RuntimeError("nginx (and, for latency, its echo module) is not installed")
    return _launch_nginx(lambda tmp, port: _nginx_conf(tmp, port, latency_ms, module, access_log),
                         f"nginx (1 worker{', echo_sleep' if latency_ms else ''})")


def _limited_conf(tmp: Path, port: int, rate: float, burst: int, module: str) -> str:
    # One zone keyed by the server (one bucket for every client request, reads and writes
    # alike); a 429 carries Retry-After: 1 (error_page to a named location; "always" adds the
    # header to a non-2xx answer). $msec and $status of every request go to the access log.
    # The answers come from the echo module's content handler: `return` would answer in the
    # rewrite phase, before limit_req (preaccess) ever runs.
    limited = f"limit_req zone=api burst={burst} nodelay;"
    return f"""load_module {module};
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  log_format stamp '$msec $status $request_method $uri'; access_log {tmp}/access.log stamp;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi;
  uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_body_buffer_size 64k;
  default_type application/json;
  limit_req_zone $server_port zone=api:1m rate={rate:g}r/s;
  limit_req_status 429;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    error_page 429 @throttled;
    location @throttled {{ add_header Retry-After 1 always; return 429 '{{"message":"Too Many Requests"}}'; }}
    location = /public/v1/me {{ {limited} echo '{ME}'; }}
    location = /public/v1/contacts {{ {limited} echo '{CONTACTS}'; }}
    location = /public/v1/invoices {{ {limited} echo_read_request_body; echo_status 201; echo '{INVOICE}'; }}
  }}
}}
"""


def start_nginx_limited(rate: float, burst: int = 5) -> Server:
    """Canned answers behind nginx ``limit_req`` at ``rate`` requests/s, ``burst`` nodelay."""
    module = echo_module()
    if nginx_binary() is None or module is None:
        raise RuntimeError("nginx and its echo module are not installed")
    return _launch_nginx(lambda tmp, port: _limited_conf(tmp, port, rate, burst, module),
                         f"nginx limit_req rate={rate:g}r/s burst={burst} nodelay, 429 + Retry-After: 1")


def start_canned(latency_ms: float = 0) -> Server:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.canned", "--port", str(port),
                             "--latency-ms", str(latency_ms)], stdout=subprocess.DEVNULL,
                            cwd=Path(__file__).resolve().parent.parent)
    _wait_listening(port, proc, "the Python canned server")
    return Server(proc, f"http://127.0.0.1:{port}", "python canned server (nginx not found: may be the bottleneck)")


def start_sandbox(rate: float, token: str, burst: float | None = None) -> Server:
    port = free_port()
    env = {**os.environ, "AGILED_API_TOKEN": token}
    extra = ["--burst", str(burst)] if burst is not None else []
    proc = subprocess.Popen([sys.executable, "-m", "bulk", "sandbox", "--target", "agiled", "--port", str(port),
                             "--rate-limit", str(rate), "--read-rate-limit", str(rate), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _wait_listening(port, proc, "bulk sandbox")
    return Server(proc, f"http://127.0.0.1:{port}", f"bulk sandbox --target agiled --rate-limit {rate:g} "
                  f"--read-rate-limit {rate:g}" + (f" --burst {burst:g} (nginx not found)" if extra else ""))


def sandbox_call(server: Server, method: str, path: str) -> bytes:
    req = urllib.request.Request(server.base_url + path, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=60) as resp:  # a loopback URL we built
        return bytes(resp.read())


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        server.stop()
