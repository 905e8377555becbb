"""A listening aiohttp site that stops without racing asyncio's accept (CPython gh-109564).

asyncio's selector loop accepts a connection in the listening socket's reader callback, but
builds its transport in a task that runs an iteration later, and that transport attaches to
the ``asyncio.Server``, which asserts the server is still open. A ``Server.close()`` (what
``aiohttp``'s ``BaseSite.stop`` calls) in between makes that attach fail: the loop swallows
the AssertionError, the half-built transport is dropped with its socket open (an "unclosed
transport" ResourceWarning when it is collected), and the client's connection, accepted by
the kernel and by asyncio, is neither served nor shut down: the garbage collector closes it.

:class:`TCPSite` stops accepting first, lets every connection already accepted become a
transport of the server (then shut down with the others, by the runner), and only then
closes the listener.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

__all__ = ["TCPSite", "stop_accepting"]


class TCPSite(web.TCPSite):
    """``aiohttp.web.TCPSite`` whose ``stop`` never drops a connection it has accepted."""

    async def stop(self) -> None:
        server = getattr(self, "_server", None)  # aiohttp's BaseSite keeps its server there
        if server is not None:
            await stop_accepting(server)
        await super().stop()


async def stop_accepting(server: asyncio.AbstractServer) -> None:
    """Stop ``server`` accepting connections, and return once those it accepted have their
    transports (attached to the still-open server); the caller then closes it.

    Only asyncio's own ``Server`` is known to defer the transport; another loop's server
    (uvloop's) is left as it is.
    """
    if not isinstance(server, asyncio.Server) or not server.is_serving():
        return
    loop = asyncio.get_running_loop()
    try:
        for sock in server.sockets:
            loop.remove_reader(sock.fileno())  # no accept callback runs from now on
    except NotImplementedError:  # a proactor loop (Windows) accepts otherwise: nothing to wait for
        return
    # A transport-building task made by an accept that already ran is scheduled by now; it
    # runs before this task's next step (the loop runs its ready callbacks in order).
    await asyncio.sleep(0)
