"""The HTTP boundary: one aiohttp session per run; aiohttp and OS errors become `bulk` errors here.

Nothing above this module sees an aiohttp exception. Redirects are not followed: an API that
answers a write with 3xx is misconfigured (usually a wrong ``--base-url``), and following it
could carry credentials to another host. TLS certificates are verified (aiohttp's default
context; never ``ssl=False``) and a certificate that does not verify stops the run at once
(:class:`~bulk.errors.ConfigError`) instead of being retried. Every message this module makes
passes through :meth:`Transport.redact`. The wire types (:class:`Request`, :class:`Reply`,
:func:`dumps`, :func:`write_request`) live in :mod:`bulk._wire` and are imported from here.

Answers are handed up **byte for byte**: redaction happens only at the output boundary (the
reasons written to failed_reasons.csv, the error a run returns, what the CLI prints), never on
data the program acts on. Scrubbing answers changed them: with a one-letter key every ``a`` of
a ChargeOver answer became ``***`` before it was parsed (issue 10). A credential too short to
redact without mangling ordinary text is refused up front (``Target.credentials_from_env``).

aiohttp loads the system CA certificates when it is imported (~470 M instructions at every
start, also of an ``http://`` run). Deferring that would mean patching ``ssl.SSLContext`` during
the import, which would leave every other aiohttp client in the process unverifiable until a
``bulk`` https transport opens: a global side effect of importing a library, not taken.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Protocol

import aiohttp
from yarl import URL

from ._deadlines import Deadlines
from ._wire import Reply, Request, _new_object, dumps, write_request
from .errors import AbortRun, BulkError, ConfigError, TransportError

__all__ = ["BaseTransport", "Reply", "Request", "Transport", "dumps", "redactor", "write_request"]


_current_task = asyncio.current_task


def redactor(secrets: Iterable[str]) -> Callable[[str], str]:
    """A function that replaces every one of ``secrets`` in a text by ``***`` (also as JSON may
    escape it, ``/`` as ``\\/``: a raw answer body quoted in a message). Longest first, so a
    secret containing another is replaced whole."""
    values = sorted({v for s in secrets if s for v in (s, s.replace("/", "\\/"))}, key=len, reverse=True)

    def redact(text: str) -> str:
        for secret in values:
            text = text.replace(secret, "***")
        return text

    return redact


@functools.cache
def _content_type(value: str) -> Mapping[str, str]:
    """The headers of a request with a body and no headers of its own (one mapping per type)."""
    return MappingProxyType({"Content-Type": value})


class BaseTransport(Protocol):
    """What the engine needs of a transport (:class:`bulk.job.Session` uses nothing else).

    :class:`Transport` is the real one (aiohttp, real sockets); :class:`bulk.testing.MockTransport`
    answers in-process, so the engine and a target's ``upload`` can be tested without a server.
    ``send`` sends one request once: any HTTP status is a :class:`Reply`; a request that got no
    answer raises :class:`~bulk.errors.TransportError` (``maybe_committed`` says whether it may
    have arrived); nothing else escapes. ``redact`` replaces the run's secrets in a text.
    """

    base_url: str

    def redact(self, text: str) -> str: ...

    async def send(self, req: Request) -> Reply: ...


_URLS = 256  # distinct request paths a Transport keeps parsed: a target's few fixed ones, with room


class Transport:
    """Owns the aiohttp session (a :class:`BaseTransport`). Create it inside the run (it is bound to the event loop)."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str],
        timeout: float,
        connections: int,
        secrets: Iterable[str] = (),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = dict(headers)
        # The total is kept by one watchdog (bulk._deadlines), not by aiohttp's timer per request;
        # aiohttp keeps the connect timeout (only a new connection, or waiting for one, arms it).
        self._timeout = aiohttp.ClientTimeout(total=None, connect=min(timeout, 10.0))
        self._deadline = timeout
        self._deadlines: Deadlines | None = None
        self._connections = connections
        self._secrets = [s for s in secrets if s]
        self._redact = redactor(self._secrets)
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}

    async def __aenter__(self) -> Transport:
        if self._session is not None:
            raise RuntimeError("a Transport is entered once: create a new one for another 'async with'")
        connector = aiohttp.TCPConnector(limit=self._connections, limit_per_host=0, ttl_dns_cache=300)
        # No cookie jar: every target authenticates by a header (API-NOTES: a bearer token, an
        # API key, HTTP Basic), none by a cookie, and a jar is consulted twice a request.
        self._session = aiohttp.ClientSession(
            connector=connector, headers=self._headers, timeout=self._timeout, auto_decompress=True,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._deadlines = Deadlines(self._deadline)
        self._deadlines.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._session is not None:
                await self._session.close()
        finally:
            if self._deadlines is not None:
                await self._deadlines.close()

    def redact(self, text: str) -> str:
        return self._redact(text)

    async def send(self, req: Request) -> Reply:
        """Send ``req`` once. Raises :class:`TransportError`; any HTTP status is a Reply.

        Raises :class:`~bulk.errors.AbortRun` if the timeout watchdog has died (no request could
        time out any more), and RuntimeError when used outside ``async with`` or outside a task.
        """
        session, deadlines = self._session, self._deadlines
        if session is None or deadlines is None:
            raise RuntimeError("Transport.send() needs the transport open: use 'async with Transport(...)'")
        if deadlines.dead is not None:
            raise self._watchdog_died(deadlines.dead)
        task = _current_task()
        if task is None:
            raise RuntimeError("Transport.send() must run in an asyncio task (it is cancelled at its deadline)")
        # Only the request's own headers: the session adds the run's (aiohttp merges them).
        headers = req.headers
        path = req.path
        url: URL | str = self._urls.get(path) or self._url(path)  # a parsed URL is never falsy
        # The body already encoded (a target's create, a resend) without a call; else the method,
        # not inlined: a target's Request may encode itself then (ChargeOver's batch, at its first send)
        if (body := req._body) is None:
            body = req.body()
        if body is not None and (headers is None or "Content-Type" not in headers):
            headers = {**headers, "Content-Type": req.content_type} if headers else _content_type(req.content_type)
        deadlines.due[task] = deadlines.now() + deadlines.timeout
        try:
            resp = await session.request(req.method, url, params=req.params, data=body,
                                         headers=headers, allow_redirects=False)
            # The stream, not read() + release(): a complete body gives the connection back to the
            # pool by itself (aiohttp documents it); ~16k instructions a request fewer (callgrind).
            try:
                content = await resp.content.read()
            except BaseException:
                resp.close()  # what read() does on a failure: a half-read connection is never reused
                raise
        except asyncio.CancelledError:  # the watchdog's, and nobody else's: no answer in time
            if deadlines.settle(task) and not task.cancelling():
                if deadlines.dead is not None:
                    raise self._watchdog_died(deadlines.dead) from None
                raise TransportError(self._describe("no answer", TimeoutError()), maybe_committed=True,
                                     reason="timeout") from None
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:  # (the watchdog's cancel, converted, too)
            if (expired := deadlines.settle(task)) and deadlines.dead is not None:
                raise self._watchdog_died(deadlines.dead) from None
            raise self._failure(exc, expired=expired) from None
        except BaseException:
            deadlines.settle(task)  # e.g. aiohttp's ValueError for a bad header: it goes up as it is
            raise
        # Deadlines.settle and _new_reply, inline (once per request: two calls fewer): the request
        # forgotten by the watchdog (settle itself when the watchdog cancelled any), the Reply made
        if deadlines._cancelled:
            deadlines.settle(task)
        else:
            del deadlines.due[task]
        reply = _new_object(Reply)
        reply.status, reply.headers, reply.content, reply._data = resp.status, resp.headers, content, None
        return reply

    def _failure(self, exc: BaseException, *, expired: bool) -> BulkError:
        """The ``bulk`` error for an aiohttp/OS error ``exc`` of a request; ``expired`` says the
        watchdog had cancelled it (aiohttp may turn that cancellation into a ClientOSError or a
        ClientPayloadError): then the reason is "timeout", whatever the exception says."""
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            # The server's certificate does not verify (untrusted, expired, wrong host): no retry
            # can fix that, and nothing was sent. Stop now rather than retry until --give-up-after.
            return ConfigError(self._describe(
                f"the TLS certificate of {self.base_url} could not be verified", exc
            ) + ": fix the server's certificate, or add its CA to the trusted ones (SSL_CERT_FILE)")
        timeout = expired or isinstance(exc, asyncio.TimeoutError)
        if isinstance(exc, aiohttp.ClientConnectorError):
            # The connection was never established: the request surely did not arrive.
            return TransportError(self._describe("cannot connect", exc), maybe_committed=False,
                                  reason="timeout" if timeout else "refused")
        return TransportError(self._describe("no answer", exc), maybe_committed=True,
                              reason="timeout" if timeout else "reset")

    def _watchdog_died(self, why: str) -> AbortRun:
        return AbortRun(self.redact(f"internal error: the --timeout watchdog stopped ({why}), so no request "
                                    "could time out: the run stopped; run the same command again to resume"))

    def _url(self, path: str) -> URL | str:
        """The URL of ``path``, parsed once per distinct path (at most :data:`_URLS` kept).

        The same ``URL(text)`` aiohttp makes of a string (so the same requoting, byte for byte),
        but made once: aiohttp then reads the parsed parts (host, port, origin, user) from the
        object's caches instead of parsing the text and recomputing them at every request. A
        path aiohttp cannot parse stays a string, so aiohttp reports it exactly as before.
        """
        text = self.base_url + path
        try:
            url = URL(text)
        except ValueError:
            return text
        if len(self._urls) < _URLS:  # a path per record (an id in it) must not grow it without end
            self._urls[path] = url
        return url

    def _describe(self, what: str, exc: BaseException) -> str:
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, asyncio.TimeoutError):
            detail = "timed out"
        return self.redact(f"{what} ({type(exc).__name__}: {detail})")
