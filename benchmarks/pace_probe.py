"""What keeps a paced run under R at nginx ``limit_req``? A short probe, not a test (wall time).

    .venv/bin/python -m benchmarks.pace_probe [--rate 1000] [--seconds 8] [--rounds 1]
        [--variants cut,nocut,free] [--profile DIR]

Each variant is one ``bulk upload`` of R x seconds invoices against nginx ``limit_req`` (rate R,
burst 5, 429 + ``Retry-After: 1``), run in a child process that instruments the pacer:

- ``cut``: as shipped; ``nocut``: a 429 neither cuts the lanes' rate nor narrows the window
  (the throttled request alone waits its Retry-After); ``free``: the same server with a bucket
  nothing overruns and ``--rate 1e9`` (what the client can send); ``kN`` (``k2``, ``k4``...):
  as shipped, but every lane's burst starts at N; ``noshrink``: a 429 does not lower the
  burst; ``nocap``: the window's growth is not capped by the median round trip; ``epsX``
  (``eps0.2``): every lane's bucket holds the burst + X (``bulk._pacing.lane.EPS``, 1e-6 as
  shipped): on a ms clock at 0.99 R the tick after a catch-up burst is skipped, which leaves the
  bucket a request under full for ~100 ms, and a stall meanwhile loses that request; X of
  headroom moves that skip 100 x X ticks on (tests/test_pacing_limit_req.py's model: +0.5 to
  +4% under stalls every 10-50 ms), at X of a request less room for the server's jitter.

With ``PACE_PROBE_SENDS=1`` in the child's environment the wall time each request left the
pacer at goes into the dump too (``sends``), to set beside nginx's access log.

Per run it prints the accepted rate at the server (nginx's access log, first to last accepted
request) / R, the 429s, the CPU per 1,000 invoices, the bulk process's context switches per
request (it sleeps in epoll between requests when paced) and the lane's wake-up timers per
request (``Bucket._wake_next`` calls), the pacer's own rate over time (the lane's ``current_rate`` every
100 ms: its mean / R and its minimum) and the share of 100 ms steps in which the server
accepted fewer than 0.9 x R/10 while the pacer asked for at least 0.99 R (the client, not the
pacer, was behind), the time the run's checkpoints held the event loop (``JobState.checkpoint``
is synchronous: its fsyncs stall every request), the loop's stalls (a timer every 2 ms: how
often, and how long in all, it ran more than 4 ms late, a lane's burst at 1,000/s: each such
stall loses its length x R requests less the burst; and of that, the time the loop's thread ran:
the rest it waited for a core, or on a checkpoint's fsync), the garbage collector's pauses, and
the share of the pacer's samples at which the window was full (it, not the lane, held requests).
The accepted rate is also given without the run's tail (``pace``: as ``benchmarks/run.py``'s
"x R, pace", without the last accepted requests but as many as were answered 429: a 429 in
the run's last second makes it wait up to that second for the resend's Retry-After).
``--profile DIR`` writes a cProfile of each child to DIR.
"""

from __future__ import annotations

import argparse
import atexit
import cProfile
import gc
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks import servers
from benchmarks.run import ROOT, TOKEN, make_input

STEP = 0.1  # seconds per sample of the pacer's rate
LAG_EVERY = 0.002  # seconds between the loop-lag timers
LAG_STALL = 0.004  # a timer later than this is a stall: longer than the lane's burst of 4 at 1,000/s


def child(argv: list[str]) -> int:
    """In the bulk process: instrument, run ``bulk upload``, dump what was seen to $PACE_PROBE."""
    from bulk import _jobstate, pacing
    from bulk._pacing import bucket, lane, window
    from bulk.cli import main

    seen: dict[str, Any] = {"wakes": 0, "samples": [], "throttled": [], "sends": [], "checkpoints": [], "lags": [],
                            "lag_cpu": [], "gcs": []}
    gc_started = [0.0]

    def gc_timed(phase: str, info: dict[str, Any]) -> None:  # a collection holds the loop too
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            seen["gcs"].append(time.perf_counter() - gc_started[0])

    gc.callbacks.append(gc_timed)
    checkpoint = _jobstate.JobState.checkpoint

    def timed(self: _jobstate.JobState) -> None:  # a checkpoint runs on the event loop: a stall
        t = time.perf_counter()
        checkpoint(self)
        seen["checkpoints"].append(time.perf_counter() - t)

    _jobstate.JobState.checkpoint = timed  # type: ignore[method-assign]
    if os.environ.get("PACE_PROBE_NOCUT"):
        lane.Lane.cut = lambda self, climb_from: None  # type: ignore[method-assign]
        window.Window.narrow = lambda self, inflight, episode_end, now: None  # type: ignore[method-assign]
    if os.environ.get("PACE_PROBE_NOSHRINK"):  # variant noshrink: a 429 leaves the burst as it is
        lane.Lane.shrink = lambda self, sent_at, now, answers: None  # type: ignore[method-assign]
    if os.environ.get("PACE_PROBE_NOCAP"):  # variant nocap: the window grows by demand alone
        window_init = window.Window.__init__

        def uncapped(self: window.Window, *a: Any) -> None:
            window_init(self, *a)
            self.rate = 1e12  # the cap, floor + 2 x rate x median round trip, out of reach

        window.Window.__init__ = uncapped  # type: ignore[method-assign]
    if os.environ.get("PACE_PROBE_EPS"):  # variant epsX: a bucket of the burst + X
        lane.EPS = float(os.environ["PACE_PROBE_EPS"])
    if os.environ.get("PACE_PROBE_BURST"):  # variant kN: every lane lets N go back to back
        fixed = int(os.environ["PACE_PROBE_BURST"])
        pacing.burst_for = lane.burst_for = lambda rate: fixed  # type: ignore[assignment]
    wake = bucket.Bucket._wake_next

    def counted(self: bucket.Bucket, *args: object) -> None:
        seen["wakes"] += 1
        wake(self, *args)

    bucket.Bucket._wake_next = counted  # type: ignore[method-assign]
    init, throttled = pacing.Pacer.__init__, pacing.Pacer.throttled

    def start(self: pacing.Pacer, **kw: Any) -> None:
        init(self, **kw)
        loop = self._loop

        def sample() -> None:
            lanes = list(self._lanes.values())
            w = self._window
            seen["samples"].append((time.time(), [x.current_rate for x in lanes],
                                    w.gate.size if w.active else None, self._inflight))
            loop.call_later(STEP, sample)
        loop.call_soon(sample)

        def lag(due: float, cpu: float) -> None:  # the loop's lateness: a timer every LAG_EVERY s, how late
            now, used = time.perf_counter(), time.thread_time()
            if now - due > LAG_STALL:  # ... and how much of it the loop's thread ran (busy, not descheduled)
                seen["lags"].append(now - due)
                seen["lag_cpu"].append(min(now - due, max(0.0, used - cpu - LAG_EVERY)))
            loop.call_later(LAG_EVERY, lag, now + LAG_EVERY, used)
        loop.call_soon(lag, time.perf_counter(), time.thread_time())

    def noted(self: pacing.Pacer, *a: Any, **kw: Any) -> float:
        seen["throttled"].append(time.time())
        return throttled(self, *a, **kw)

    if os.environ.get("PACE_PROBE_SENDS"):  # the wall time each request left the pacer at
        enter, sends = pacing.Pacer.enter, seen["sends"]

        async def entered(self: pacing.Pacer, kind: str) -> float:
            sent_at = await enter(self, kind)
            sends.append(time.time())
            return sent_at

        pacing.Pacer.enter = entered  # type: ignore[method-assign]
    pacing.Pacer.__init__ = start  # type: ignore[method-assign]
    pacing.Pacer.throttled = noted  # type: ignore[method-assign]
    atexit.register(lambda: Path(os.environ["PACE_PROBE"]).write_bytes(orjson.dumps(seen)))
    sys.argv = ["bulk", *argv]
    profile = os.environ.get("PACE_PROBE_PROFILE")
    if not profile:
        return main()
    prof = cProfile.Profile()
    try:
        return prof.runcall(main)
    finally:
        prof.dump_stats(profile)


def one(variant: str, rate: float, n: int, work: Path, profile: Path | None) -> dict[str, Any]:
    burst = 1_000_000 if variant == "free" else 5
    server = servers.start_nginx_limited(rate, burst)
    try:
        time.sleep(1.0)
        offset = server.log_offset()
        out, dump = work / f"out-{variant}-{time.monotonic_ns()}", work / "probe.json"
        env = {**os.environ, "AGILED_API_TOKEN": TOKEN, "PYTHONPATH": str(ROOT), "PACE_PROBE": str(dump)}
        if variant == "nocut":
            env["PACE_PROBE_NOCUT"] = "1"
        if variant in ("noshrink", "nocap"):
            env[f"PACE_PROBE_{variant.upper()}"] = "1"
        if variant[:3] == "eps":
            env["PACE_PROBE_EPS"] = variant[3:]
        if variant[:1] == "k" and variant[1:].isdigit():
            env["PACE_PROBE_BURST"] = variant[1:]
        if profile is not None:
            env["PACE_PROBE_PROFILE"] = str(profile / f"{variant}-{rate:g}-{time.monotonic_ns()}.prof")
        cmd = [sys.executable, "-m", "benchmarks.pace_probe", "--child", "upload", str(make_input(work, n)),
               "--base-url", server.base_url, "--quiet", "--out", str(out), "--concurrency", "64",
               "--rate", "1e9" if variant == "free" else f"{rate:g}"]
        t0, u0 = os.times(), resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, timeout=600)
        t1, u1 = os.times(), resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise SystemExit(f"bulk exited {proc.returncode}: {proc.stderr.decode()[-800:]}")
        seen = orjson.loads(dump.read_bytes())
        total, n429, span, paced = server.answers(offset)
        stamps = _accepted_stamps(server, offset)
    finally:
        server.stop()
    user, system = t1.children_user - t0.children_user, t1.children_system - t0.children_system
    cpu = user + system
    samples = seen["samples"]
    asked = [s[1][0] for s in samples if s[1]]
    behind = _behind(samples, stamps, rate)
    windowed = [s for s in samples if s[2] is not None]  # (time, lanes' rates, window size, in flight)
    return {"variant": variant, "share": (total - n429 - 1) / span / rate if span > 0 else 0.0, "n429": n429,
            "pace": (total - 2 * n429 - 1) / paced / rate if paced > 0 else 0.0,
            "total": total, "cpu_per_1000": cpu / n * 1000,
            "sys_share": system / cpu if cpu else 0.0,
            "switches": (u1.ru_nvcsw - u0.ru_nvcsw + u1.ru_nivcsw - u0.ru_nivcsw) / max(1, total),
            "wakes": seen["wakes"] / max(1, total),
            "asked_mean": sum(asked) / len(asked) / rate if asked else None,
            "asked_min": min(asked) / rate if asked else None, "behind": behind,
            "checkpoints": len(seen["checkpoints"]), "checkpoint_s": sum(seen["checkpoints"]),
            "checkpoint_max": max(seen["checkpoints"], default=0.0),
            "window_full": sum(1 for s in windowed if s[3] >= s[2]) / max(1, len(samples)),
            "window_mean": sum(s[2] for s in windowed) / max(1, len(windowed)),
            "stalls": len(seen["lags"]), "stall_s": sum(seen["lags"]), "stall_cpu": sum(seen["lag_cpu"]),
            "stall_max": max(seen["lags"], default=0.0),
            "gc_s": sum(seen["gcs"]), "gc_max": max(seen["gcs"], default=0.0)}


def _accepted_stamps(server: servers.Server, offset: int) -> list[float]:
    out = []
    with open(server._tmp / "access.log", "rb") as log:  # type: ignore[operator]
        log.seek(offset)
        for line in log:
            stamp, status = line.split(None, 2)[:2]
            if status != b"429":
                out.append(float(stamp))
    return out


def _behind(samples: list[Any], stamps: list[float], rate: float) -> float | None:
    """Share of STEP windows (inside the run) where the pacer asked ~R but the server got < 0.9 R."""
    if len(stamps) < 2 or not samples:
        return None
    t, end, steps, short, i = stamps[0], stamps[-1], 0, 0, 0
    asked = sorted((s[0], s[1][0] if s[1] else float("inf")) for s in samples)
    while t + STEP <= end:
        while i < len(stamps) and stamps[i] < t:
            i += 1
        j = i
        while j < len(stamps) and stamps[j] < t + STEP:
            j += 1
        ask = min((a for s, a in asked if t <= s < t + STEP), default=float("inf"))
        if ask >= 0.99 * rate:
            steps += 1
            short += (j - i) < 0.9 * rate * STEP
        t += STEP
    return short / steps if steps else None


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        raise SystemExit(child(sys.argv[2:]))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--variants", default="cut,nocut,free")
    p.add_argument("--profile", type=Path)
    a = p.parse_args()
    if a.profile:
        a.profile.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for v in a.variants.split(","):
                m = one(v, a.rate, int(a.rate * a.seconds), Path(tmp), a.profile)
                print(f"round {r + 1} R={a.rate:g} {v:5s}: {m['share']:.3f} R accepted ({m['pace']:.3f} R pace), "
                      f"429 {m['n429']}/{m['total']}, "
                      f"CPU {m['cpu_per_1000']:.2f} s/1k ({m['sys_share']:.0%} system), "
                      f"{m['switches']:.2f} context switches and {m['wakes']:.2f} limiter wake-ups per request, "
                      f"pacer asked "
                      f"mean {fmt(m['asked_mean'])} R min {fmt(m['asked_min'])} R, client behind in "
                      f"{fmt(m['behind'])} of 100 ms steps at full pace; {m['checkpoints']} checkpoints "
                      f"stalled the loop {m['checkpoint_s']:.2f} s (longest {m['checkpoint_max'] * 1000:.0f} ms); "
                      f"loop late > {LAG_STALL * 1000:g} ms {m['stalls']} times, {m['stall_s']:.2f} s in all "
                      f"(longest {m['stall_max'] * 1000:.0f} ms, the loop ran {m['stall_cpu']:.2f} s of it); "
                      f"gc {m['gc_s']:.2f} s (longest "
                      f"{m['gc_max'] * 1000:.0f} ms); window full in {m['window_full']:.0%} of samples "
                      f"(mean size {m['window_mean']:.1f})",
                      flush=True)


if __name__ == "__main__":
    main()
