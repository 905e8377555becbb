"""The conformance suite as a library: every target, built-in or plug-in, passes the same checks.

Each check runs the real engine (``bulk.run_upload``) in-process against the target's sandbox
dialect (``bulk.sandbox.serve``) on a real socket at 127.0.0.1, port 0, with the pairing of
``bulk.embedded``, and audits what the server stored. What is target-specific is only what a
:class:`Support` says: how the sandbox's state lists invoices, and how to make a valid record
the API refuses. The CLI-level suite (kills, signals, the adversary proxy) stays in
``tests/``; these checks are what a plug-in target must pass to be trusted with an upload:

    happy_path             every record created once; the ID map equals the server; the totals
                           equal the money rule's; unicode titles
    throttled              seeded 429s (``throttle_rate``): each one waited for and retried
    refused_record         a 4xx fails that record only, with the API's status; the run goes on
    lost_answers           answers lost after commit and dropped connections: no duplicate
    resume_skips_done      the same job again sends (almost) nothing and creates nothing
    server_down_resumes    a server answering 5xx only stops the run resumably (exit 3); the
                           same job then finishes with every record created once
"""

from __future__ import annotations

import csv
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import orjson

from .. import run_upload
from ..config import UploadConfig
from ..embedded import pairing
from ..generate import generate
from ..money import CurrencyTotals
from ..pipeline import RunResult
from ..records import Record, parse_record
from ..targets import get_target

__all__ = ["CHECKS", "Support", "conformance"]


@dataclass(frozen=True)
class Support:
    """What the suite needs to know of one target's sandbox.

    ``invoices(state)``: the invoices of a ``GET /_sandbox/state`` answer, each a dict with at
    least ``external_id`` (the record's) and ``id`` (the API's, as the ID map writes it).
    ``refusable(doc)``: a copy of a valid input record (a dict) that bulk accepts and the API
    refuses with a 4xx. ``options``: client ``--option`` values the sandbox needs."""

    invoices: Callable[[dict[str, Any]], list[dict[str, Any]]]
    refusable: Callable[[dict[str, Any]], dict[str, Any]]
    options: Mapping[str, Any] = field(default_factory=dict)


class _Bench:
    """One check's sandbox and job: ``await bench.upload(**config)`` runs the job once more."""

    def __init__(self, target: str, support: Support, workdir: Path, lines: list[bytes]) -> None:
        self.target, self.support = target, support
        self.src, self.out = workdir / "in.ndjson", workdir / "run"
        self.src.write_bytes(b"".join(line + b"\n" for line in lines))
        self.records: list[Record] = []
        for i, line in enumerate(lines, 1):
            self.records.append(parse_record(line, i))
        self.pair = pairing(get_target(target))
        self.env, self.token = self.pair.credentials("conformance-" + secrets.token_urlsafe(16))
        self.sandbox: Any = None

    async def upload(self, **settings: Any) -> RunResult:
        config = UploadConfig(input=str(self.src), out=self.out, target=self.target, base_url=self.sandbox.base_url,
                              rate=100_000.0, processes=1, concurrency=settings.pop("concurrency", 8),
                              options={**self.pair.client_options(), **self.support.options}, **settings)
        return await run_upload(config, env=self.env)

    async def invoices(self) -> list[dict[str, Any]]:
        return self.support.invoices(await self.sandbox.state())

    async def assert_exactly_once(self, records: Iterable[Record] | None = None) -> None:
        """Every record at the server once; the ID map equals the server; the money rule's totals."""
        records = list(self.records if records is None else records)
        invoices = await self.invoices()
        counts = Counter(str(inv["external_id"]) for inv in invoices)
        dupes = {k: n for k, n in counts.items() if n > 1}
        assert not dupes, f"{self.target}: duplicates at the API: {dupes}"
        want = {r.external_id for r in records}
        assert set(counts) == want, (f"{self.target}: missing {sorted(want - set(counts))[:5]}, "
                                     f"extra {sorted(set(counts) - want)[:5]}")
        rows = _rows(self.out / "id_map.csv")
        assert Counter(r["external_id"] for r in rows) == Counter(want), f"{self.target}: ID map rows differ"
        server = {str(inv["external_id"]): str(inv["id"]) for inv in invoices}
        assert {r["external_id"]: r["invoice_id"] for r in rows} == server, f"{self.target}: ID map != server"
        totals = CurrencyTotals()
        for r in records:
            totals.add(r.currency, r.totals())
        assert self.summary()["totals"] == totals.to_json(), f"{self.target}: totals differ from the money rule"

    def ended(self, result: RunResult, code: int) -> None:
        """The run ended with exit ``code``; else say how it ended (error or counts)."""
        if result.exit_code != code:
            detail = result.error if result.error is not None else result.summary.get("records")
            raise AssertionError(f"exit {result.exit_code}, not {code}: {detail}")

    def summary(self) -> dict[str, Any]:
        return orjson.loads((self.out / "summary.json").read_bytes())  # type: ignore[no-any-return]  # JSON object


def _rows(path: Path) -> list[dict[str, str]]:
    """The rows of a small CSV output file (read at once: the run that wrote it has ended)."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


async def _happy_path(bench: _Bench) -> None:
    result = await bench.upload()
    bench.ended(result, 0)
    await bench.assert_exactly_once()
    assert any(not line.title.isascii() for r in bench.records for line in r.lines), "no unicode title in the input"
    assert bench.summary()["complete"] is True


async def _throttled(bench: _Bench) -> None:
    await bench.sandbox.set_faults(throttle_rate=0.4, retry_after_override=0)
    result = await bench.upload()
    bench.ended(result, 0)
    await bench.assert_exactly_once()
    throttled = (await bench.sandbox.state())["requests"]["throttled"]
    assert throttled > 0, "the sandbox answered no 429: the check proves nothing"
    assert bench.summary()["throttled"] == throttled, "every 429 is counted (and retried)"


async def _refused_record(bench: _Bench) -> None:
    result = await bench.upload()
    bench.ended(result, 1)
    good = [r for r in bench.records if r.external_id != "INV-REFUSED-1"]
    await bench.assert_exactly_once(good)
    reasons = _rows(bench.out / "failed_reasons.csv")
    assert len(reasons) == 1 and reasons[0]["external_id"] == "INV-REFUSED-1", reasons
    assert reasons[0]["line"] == "4" and reasons[0]["kind"] == "failed", reasons
    assert reasons[0]["http_status"].startswith("4") and reasons[0]["message"], reasons


async def _lost_answers(bench: _Bench) -> None:
    await bench.sandbox.set_faults(lose_rate=0.25, drop_rate=0.1)
    result = await bench.upload(attempts=12)
    bench.ended(result, 0)
    await bench.assert_exactly_once()
    assert bench.summary()["retries"] > 0, "no answer was lost: the check proves nothing"


async def _resume_skips_done(bench: _Bench) -> None:
    bench.ended(await bench.upload(), 0)
    before = (await bench.sandbox.state())["requests"]["total"]
    again = await bench.upload()
    bench.ended(again, 0)
    assert (await bench.sandbox.state())["requests"]["total"] - before <= 2, "at most an auth smoke test"
    await bench.assert_exactly_once()
    s = bench.summary()
    assert s["records"]["already_done"] == len(bench.records) and s["this_run"]["created"] == 0, s


async def _server_down_resumes(bench: _Bench) -> None:
    await bench.sandbox.set_faults(fail_rate=1.0)
    stopped = await bench.upload(attempts=2, give_up_after=1.5)
    bench.ended(stopped, 3)
    assert await bench.invoices() == [], "nothing may be created while every answer is a 5xx"
    await bench.sandbox.set_faults(fail_rate=0.0)
    done = await bench.upload()
    bench.ended(done, 0)
    await bench.assert_exactly_once()


_Check = Callable[[_Bench], Awaitable[None]]
#: name -> (the check, how many records it uploads)
CHECKS: dict[str, tuple[_Check, int]] = {
    "happy_path": (_happy_path, 30),
    "throttled": (_throttled, 20),
    "refused_record": (_refused_record, 8),
    "lost_answers": (_lost_answers, 20),
    "resume_skips_done": (_resume_skips_done, 12),
    "server_down_resumes": (_server_down_resumes, 8),
}


def _lines(check: str, n: int, support: Support) -> list[bytes]:
    lines = [line.rstrip(b"\n") for line in generate(n, seed=900 + sorted(CHECKS).index(check))]
    if check == "refused_record":
        bad = support.refusable(orjson.loads(lines[3]))
        bad["external_id"] = "INV-REFUSED-1"
        lines[3] = orjson.dumps(bad)
    return lines


def conformance(target: str, support: Support, workdir: Path, *, checks: Iterable[str] = CHECKS) -> None:
    """Run ``checks`` (default: all of :data:`CHECKS`) for the registered ``target``, each in a
    fresh sandbox and job under ``workdir``; raise AssertionError naming the first that fails.

    Synchronous (each check in its own event loop), so a pytest test is one line::

        @pytest.mark.parametrize("check", bulk.testing.CHECKS)
        def test_conformance(check, tmp_path):
            bulk.testing.conformance("mytarget", SUPPORT, tmp_path, checks=[check])
    """
    from ..sandbox import serve
    from ..sandbox.config import SandboxConfig

    for name in checks:
        run, n = CHECKS[name]
        (workdir / name).mkdir(parents=True, exist_ok=True)
        bench = _Bench(target, support, workdir / name, _lines(name, n, support))

        async def main(bench: _Bench = bench, run: _Check = run) -> None:
            config = SandboxConfig(token=bench.token, options=bench.pair.dialect_options(), seed=7)
            async with serve(target, config) as sandbox:
                bench.sandbox = sandbox
                await run(bench)

        try:
            anyio.run(main)
        except AssertionError as exc:
            raise AssertionError(f"{target} fails the conformance check {name!r}: {exc}") from exc
