"""Instructions per invoice of the engine's own path, from a parsed Record to its row written.

``benchmarks.instructions`` counts a whole run (parsing, SQLite, aiohttp, the clock-driven
checkpoints), so on a loaded machine a change of a few thousand instructions in the worker is
lost in its noise. This counts only the part ``bulk._worker`` owns: ``Workers.work`` over
already parsed records (the Agiled target's ``upload``, ``RecordJob``, ``Session.send`` with the
real pacer and latency recording, ``Recorder.created`` into real output files, the watermark),
with :class:`bulk.testing.MockTransport` answering as the canned nginx does (no sockets, no
aiohttp). Every customer is cached after its first invoice, as in the benchmark input.

Under callgrind, two sizes, the marginal count (start-up excluded)::

    .venv/bin/python -m benchmarks.engine_path --small 2000 --large 10000

The figure is deterministic (no timers fire: nothing here sleeps), so before/after counts
of a change to the worker, job, transport or target compare even on a busy machine.

``--transport`` counts :meth:`bulk.transport.Transport.send` itself instead: a real
``Transport`` whose aiohttp session is replaced by one answering at once (no sockets), so
the figure is bulk's own work around ``session.request`` per request (the URL, the headers,
the watchdog's deadline, the Reply), deterministic too::

    .venv/bin/python -m benchmarks.engine_path --transport --small 2000 --large 12000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import ClassVar

from benchmarks import _callgrind

ROOT = Path(__file__).resolve().parent.parent


def run(n: int, source: Path) -> None:
    """Upload ``n`` records (the input's records, cycled) through the worker loops."""
    import anyio

    from bulk._recorder import Recorder
    from bulk._worker import Workers
    from bulk.feed import Feed
    from bulk.job import Session
    from bulk.outputs import Outputs
    from bulk.pacing import Pacer
    from bulk.records import parse_record
    from bulk.tally import Tally
    from bulk.targets.agiled import AgiledTarget
    from bulk.testing import MemoryState, MockTransport
    from bulk.transport import Reply, Request
    from bulk.watermark import Tracker

    lines = source.read_bytes().splitlines()
    records = [(parse_record(line, i + 1), line) for i, line in enumerate(lines)]
    contacts = Reply(200, {}, b'{"data":[{"id":1}]}')
    invoice_body = b'{"data":{"id":1,"status":"draft","total":null}}'

    def answer(req: Request) -> Reply:
        req.body()  # the encoding the real transport does before sending (a target may do it first)
        if req.path.endswith("/contacts"):
            return contacts
        return Reply(201, {}, invoice_body)  # a new one each time, as the transport makes

    class _Run:
        stopping = False

    async def main(out: Path) -> None:
        target = AgiledTarget(base_url="http://mock.invalid", credentials={"AGILED_API_TOKEN": "bench-token-1"},
                              options={})
        transport = MockTransport(answer)
        pacer = Pacer(limits={"*": 1e9}, concurrency=64, give_up_after=60, max_wait=60)
        session = Session(transport=transport, pacer=pacer, target=target, state=MemoryState(),  # type: ignore[arg-type]  # the test double stands in for StateStore
                          attempts=3, item_concurrency=4)
        outputs = Outputs(out, None)
        recorder = Recorder(outputs, Tally(), input_path=str(source), copyable=True)
        tracker = Tracker(0, 1)
        workers = Workers(_Run(), session=session, target=target, recorder=recorder, tracker=tracker,
                          inflight={}, resume_progress={}, prev_reserved=0, arrivals=None)
        feed: Feed = Feed(64)  # type: ignore[type-arg]  # Feed's item type is the worker's, private

        async def produce() -> None:
            for i in range(n):
                record, line = records[i % len(records)]
                entry = [i + 1, i, 0]  # what Tracker.add makes of the line (offsets do not matter here)
                tracker.pending.append(entry)
                await feed.put((entry, record, line))
            feed.close()

        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            for _ in range(64):
                tg.start_soon(workers.work, feed)
        outputs.flush()
        outputs.close()
        transport.requests.clear()

    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(main, Path(tmp), backend_options={"use_uvloop": True})


def run_transport(n: int) -> None:
    """Send ``n`` invoice creates, one after another, through a Transport over a fake session."""
    import uvloop

    from bulk.transport import Request, Transport

    class _Content:
        async def read(self) -> bytes:
            return b'{"data":{"id":1,"status":"draft","total":null}}'

    class _Response:
        status = 201
        headers: ClassVar[dict[str, str]] = {"Content-Type": "application/json"}
        content = _Content()

    response = _Response()

    class _Session:
        async def request(self, method: str, url: object, **_: object) -> _Response:
            return response

        async def close(self) -> None:
            return None

    body = b'{"invoice_number":"INV-0-0000001","contact_id":1}'

    async def main() -> None:
        transport = Transport("http://127.0.0.1:9", headers={"Authorization": "Bearer bench-token-1"},
                              timeout=30, connections=64)
        async with transport:
            await transport._session.close()  # type: ignore[union-attr]  # open: async with made it
            transport._session = _Session()  # type: ignore[assignment]  # the fake: no sockets
            for _ in range(n):
                await transport.send(Request("POST", "/public/v1/invoices", None, None,
                                             {"Idempotency-Key": "invoice-INV-1", "Content-Type": "application/json"},
                                             "write", "application/json", body))

    uvloop.run(main())


def count(n: int, source: Path, transport: bool = False) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        args = ["--child", str(n), "--input", str(source)] + (["--transport"] if transport else [])
        return _callgrind.total("benchmarks.engine_path", args, out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", type=int, default=2000)
    p.add_argument("--large", type=int, default=10000)
    p.add_argument("--input", type=Path, help="an input file (default: benchmarks/data's 1,000-record input)")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--transport", action="store_true", help="count Transport.send over a fake session instead")
    args = p.parse_args()
    if args.input is None:
        from benchmarks.run import make_input

        data = ROOT / "benchmarks" / "data"
        data.mkdir(exist_ok=True)
        args.input = make_input(data, 1000)
    if args.child is not None:
        if args.transport:
            run_transport(args.child)
        else:
            run(args.child, args.input)
        return 0
    small, large = count(args.small, args.input, args.transport), count(args.large, args.input, args.transport)
    what, per = ("transport send", "request") if args.transport else ("engine path", "invoice")
    print(f"{what}: {small:,} Ir for {args.small}, {large:,} Ir for {args.large}: "
          f"{(large - small) / (args.large - args.small):,.0f} instructions per {per} (marginal)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
