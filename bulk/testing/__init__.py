"""Test seams for `bulk` and for anyone writing a target: public, importable from a plug-in's tests.

::

    MockTransport(handler)        an in-process transport (bulk.transport.BaseTransport): no sockets
    MemoryState()                 the resolved-ids store of the resume file, in memory
    upload_one(target, record, transport)   one record through the engine's send path (async)
    VirtualLoop, run_virtual(main)          a fake clock for the pacer (the loop's time is virtual)
    conformance(target, support, workdir)   the conformance suite every target passes (CHECKS)
    Support(invoices, refusable)            what the suite must know of a target's sandbox

Everything else in ``bulk.testing._*`` is private.
"""

from __future__ import annotations

from ._clock import VirtualLoop, run_virtual
from ._conformance import CHECKS, Support, conformance
from ._mock import MemoryState, MockTransport, upload_one

__all__ = [
    "CHECKS", "MemoryState", "MockTransport", "Support", "VirtualLoop", "conformance", "run_virtual", "upload_one",
]
