"""One rate limit: an evenly spacing aiolimiter bucket, and the AIMD state that slows it after a 429.

A lane is an :class:`aiolimiter.AsyncLimiter` (a :class:`~bulk._pacing.bucket.Bucket`, whose
wake-up timer keeps to the loop clock's tick) configured for even spacing:
``AsyncLimiter(k, k / pace)`` is a leaky bucket that drains at exactly ``pace`` requests per
second and holds at most ``k`` (:func:`burst_for`), so at most ``k`` requests ever go back to
back: a server with a small bucket (nginx ``limit_req burst=5``) never sees more than it
accepts, and a late request can still catch up ``k - 1`` slots. The pace is a hair under R
(:func:`pace_for`: 10 us per request, 1% of R from 1,000/s on): a server bucket fed at
exactly R never drains, so every delay the network or a stalled server adds stays in it until
the next one tips it over; under R it drains.

A 429 lowers the lane's rate by its share of one climb step's answers (``R / n``, ``n`` =
:func:`sample_for`, the requests of ``CLIMB_EVERY`` s at R, at least ``SAMPLE``), and it climbs
back additively (``CLIMB`` x R every ``CLIMB_EVERY`` s, on its own clock: a cut does not push
the climb back, a pause does). So with a steady share ``f`` of sporadic 429s the rate settles
where the cuts and the climb balance: ``CLIMB x n / (f x CLIMB_EVERY)``, that is ``R x CLIMB / f``
from R = ``SAMPLE / CLIMB_EVERY`` on: full rate while under ``CLIMB`` (2%) of the answers are
429s (a phase or jitter artefact of a small bucket), and at a server whose real limit is under
R, a hair above it. (A multiplicative cut per 429 settled at ``sqrt(2 R / f)``, a tenth of R
per 429, and the more so the higher R.) A request at a cut rate takes ``R / rate`` of the
bucket's capacity, so the burst shrinks with the rate. Several limits on one request (a kind's
and the shared ``--rate``) are passed at one instant (:func:`acquire_together`).

429s also lower the burst, by one down to ``MIN_BURST`` (:meth:`Lane.shrink`), once they are
more than ``SHRINK_SHARE`` of the lane's answers (``SHRINK_AFTER`` at least): the server's bucket holds
less than the lane lets go back to back, once the time between our send and the server's count
is added. That time is the server's, and on a busy machine it is ms: nginx,
starved of its core for 3 ms, counts 3 ms of our sends at one clock reading, so a lane that
caught up 4 after a stall of its own and sent 4 more at its pace within those 3 ms met a bucket
of 5 with 8 (2026-12-02, R = 1,000, load 8 on 2 cores, `benchmarks/pace_probe.py`: 130-142
429s in 8,800 requests at a burst of 4, 57-66 at 3, 7-11 at 2). What a lane sends within any
``t`` seconds is at most ``burst + t x R``, so each request less of burst is ``1 / R`` more of
the server's lateness taken. But a smaller burst costs CPU and rate where the client is the one
late (fewer requests per wake-up, less caught up after its own stalls: at the same load, burst 2
0.29-0.37 R at 0.83-0.93 ms of CPU a request, burst 4 0.45 R at 0.69-0.74 ms with 1.0-1.1%
429s), and a sporadic 429 costs one request's Retry-After: so only a share of 429s that would
miss the issue's 1% shrinks it. The burst never grows back: a server found to hold less goes on
holding less.
"""

from __future__ import annotations

from .bucket import Bucket

__all__ = [
    "BURST_SECONDS", "CLIMB", "CLIMB_EVERY", "FLOOR", "MARGIN", "MAX_BURST", "MIN_BURST", "SAMPLE",
    "SHRINK_AFTER", "SHRINK_SHARE", "SLACK", "UNBOUNDED", "Lane", "acquire_together", "burst_for", "pace_for",
    "sample_for",
]

#: Most requests a lane lets go back to back (measured: see README, Performance; a server
#: bucket of 5 takes it with room for the network's jitter).
MAX_BURST = 4
#: The fewest a 429 shrinks a lane's burst to (Lane.shrink): under 2, every wake-up of a loop
#: late by more than 1 / R loses the slot for good (a lane at burst 1 keeps 1).
MIN_BURST = 2
#: 429s shrink the burst when, since the last shrink, they are at least SHRINK_AFTER and this
#: share of the lane's answers (under 1%, the issue's bound on 429s).
SHRINK_AFTER = 3
SHRINK_SHARE = 0.005
#: The burst is this many seconds of traffic, between 2 and MAX_BURST requests (2: a request
#: the event loop wakes late is made up by the next one instead of lost), and 1 under
#: 2 requests/s, where a server's bucket may hold only one.
BURST_SECONDS = 0.004
#: The pace is under R by SLACK seconds per request, at most MARGIN of R (see the module): the
#: delays that pile up in a server's bucket are absolute time (ms of a stalled loop), so they
#: need draining where 1/R is ms, not at 20/s, whose bucket of 5 holds 250 ms of them.
MARGIN = 0.01
SLACK = 1e-5
#: AIMD: a 429 lowers the rate by R / sample_for(R); it climbs back by CLIMB x R every CLIMB_EVERY
#: s. Gentle and quick, because at a small server bucket a sporadic 429 is the network's jitter
#: (a 5-request bucket at 1,000/s tolerates 5 ms), and anything worse pauses everyone anyway.
CLIMB = 0.02
CLIMB_EVERY = 0.1
#: The fewest answers a 429's share is taken of: under SAMPLE / CLIMB_EVERY requests/s (200) a
#: climb step holds fewer, and one 429 would be a large share of a handful (half of R at R = 20).
SAMPLE = 20
#: The lowest rate a cut goes to, as a share of R (the Retry-After pauses do the rest).
FLOOR = 0.05
#: The bucket's headroom beyond the burst, in requests (see Lane.__init__).
EPS = 1e-6
#: A limit at or above this many requests per second (``--rate 1e9``: "no limit") gets no
#: lane: no client sends that fast, so it could never make a request wait, and skipping it
#: takes the limiter's bookkeeping off every request. A 429 still pauses and narrows.
UNBOUNDED = 1e6


def burst_for(rate: float) -> int:
    """The requests a lane at ``rate`` per second lets go back to back."""
    if rate < 2:
        return 1
    return max(2, min(MAX_BURST, int(rate * BURST_SECONDS)))


def pace_for(rate: float) -> float:
    """The requests per second a lane for a limit of ``rate`` sends at, when not slowed."""
    return rate * (1 - min(MARGIN, rate * SLACK))


def sample_for(rate: float) -> float:
    """The answers a 429 at ``rate`` is one of: a climb step's worth at ``rate``, at least SAMPLE."""
    return max(float(SAMPLE), rate * CLIMB_EVERY)


class Lane:
    """One rate limit of ``rate`` (R) requests per second: an evenly spacing AsyncLimiter at
    ``full`` = :func:`pace_for` (R), and the AIMD state that slows it after a 429. ``weight`` =
    full / current rate: the bucket capacity one request takes (1.0 at full rate)."""

    __slots__ = ("_climb_at", "_refusals", "_shrunk_answers", "_shrunk_at", "_step", "burst", "full", "limiter",
                 "passed", "rate", "weight")

    def __init__(self, rate: float, burst: int | None = None) -> None:
        self.rate = rate
        self.full = pace_for(rate)
        self.burst = burst_for(rate) if burst is None else burst
        # EPS of headroom, at the same rate: on uvloop loop.time() is in whole ms, and elapsed x
        # rate rounds to a hair under one request, so at R = 1,000 the next waiter came up 1e-8
        # short on the very tick its slot is due, and Bucket's timer went to the tick after: 1
        # ms late. A bucket of burst + EPS still lets only ``burst`` go at once. (The busy loop
        # of 0 ms timers at every other rate is Bucket's to prevent.)
        self.limiter = Bucket(self.burst + EPS, (self.burst + EPS) / self.full)
        self.weight = 1.0
        self._climb_at = 0.0
        self._shrunk_at = float("-inf")  # loop time of the last shrink
        # The requests this lane let go (the pacer counts them), and their count at the last
        # shrink: a 429's share is of this lane's own traffic, not the run's (another lane's
        # answers would dilute it: a write lane beside two reads per write shrank only at 3x
        # the share). Counted as they leave, so at most the window ahead of their answers.
        self.passed = 0
        self._shrunk_answers = 0
        self._refusals = 0  # 429s to requests sent since the last shrink
        self._step = rate / sample_for(rate)  # what one 429 takes off the rate

    @property
    def current_rate(self) -> float:
        """The rate the lane sends at now (``full`` when not slowed)."""
        return self.full / self.weight

    async def acquire(self, now: float) -> None:
        if self.weight == 1.0:
            await self.limiter.acquire()
            return
        weight = self.weight_at(now)
        while weight > 0:  # a weight above the bucket's capacity is taken in parts
            part = min(weight, float(self.burst))
            await self.limiter.acquire(part)
            weight -= part

    def weight_at(self, now: float) -> float:
        """The capacity a request takes at ``now``, after the additive increase due by then."""
        weight = self.weight
        if weight != 1.0 and now >= self._climb_at:  # one step per CLIMB_EVERY s since the last
            steps = 1 + int((now - self._climb_at) / CLIMB_EVERY)
            rate = min(self.full, self.full / weight + steps * CLIMB * self.rate)
            self.weight = weight = self.full / rate if rate < self.full else 1.0
            self._climb_at += steps * CLIMB_EVERY  # on the climb's own clock, not the caller's
        return weight

    def give_back(self, weight: float) -> None:
        """Undo an acquire of ``weight`` made at this instant (:meth:`Bucket.give_back`).
        :func:`acquire_together` needs it."""
        self.limiter.give_back(weight)

    def cut(self, now: float) -> None:
        """A 429 answered at ``now``: lower the rate by its share (see the module). A lane that
        was not climbing starts to ``CLIMB_EVERY`` after ``now``; one that was keeps its clock."""
        current = self.full / self.weight_at(now)
        if self.weight == 1.0:
            self._climb_at = now + CLIMB_EVERY
        rate = max(current - self._step, self.rate * FLOOR)
        if rate < current:
            self.weight = self.full / rate

    def shrink(self, sent_at: float, now: float, answers: int) -> None:
        """A 429 at ``now`` to a request sent at ``sent_at``, ``answers`` requests let go by this
        lane so far (:attr:`passed`): when such 429s since the last shrink reach SHRINK_AFTER and SHRINK_SHARE of the
        answers since, let one request less go back to back from now on, down to MIN_BURST
        (see the module). A 429 to a request sent before the last shrink is not counted: the
        requests of one bunch shrink the burst once.

        aiolimiter's capacity cannot shrink under its waiters (one waiting for more than the
        new capacity would wait forever), so :attr:`limiter` is a new bucket at the same pace,
        as full as the old one was; who waits on the old one is let go by it and passes the
        new one again (:meth:`bulk.pacing.Pacer.enter`)."""
        if sent_at < self._shrunk_at or self.burst <= MIN_BURST:
            return
        self._refusals += 1
        if self._refusals < max(SHRINK_AFTER, SHRINK_SHARE * (answers - self._shrunk_answers)):
            return
        self._shrunk_at, self._shrunk_answers, self._refusals = now, answers, 0
        self.burst -= 1
        self.limiter = self.limiter.resized(self.burst + EPS)

    def hold_climb(self, until: float) -> None:
        """Every worker pauses until ``until``: the climb waits for it too."""
        if self.weight != 1.0:
            self._climb_at = max(self._climb_at, until + CLIMB_EVERY)

    def slow_to(self, rate: float, resume_at: float) -> None:
        """Pace at ``rate`` (if lower than now), climbing back from ``resume_at`` on."""
        if 0 < rate < self.current_rate:
            self.weight = self.full / rate
            self._climb_at = resume_at + CLIMB_EVERY


async def acquire_together(lanes: tuple[Lane, ...], now: float) -> bool:
    """Pass every one of ``lanes`` at one instant: the request leaves only when each of them
    admits it then, so none of them counts it earlier than it leaves. False when a lane's
    bucket was replaced meanwhile (:meth:`Lane.shrink`): pass them again.

    Taking one lane and then waiting for the next would let the request leave later than the
    first lane counted it, and the next request of that lane follow it closer than its rate
    allows. So: wait for one lane (taking it); if every other lane admits now, take them all
    (aiolimiter's acquire returns without suspending when it admits); else give the first back
    and wait for the one that did not admit. Capacity beyond a lane's burst (a cut rate's
    weight) is taken first, as plain waiting.
    """
    limiters = [lane.limiter for lane in lanes]
    parts: list[tuple[Lane, float]] = []
    for lane in lanes:
        weight = lane.weight_at(now)
        while weight > lane.burst:
            await lane.limiter.acquire(lane.burst)
            weight -= lane.burst
        parts.append((lane, weight))
    first = 0
    while True:
        if _swapped(lanes, limiters):
            return False  # a part may no longer fit the shrunk bucket (aiolimiter would raise)
        lane, weight = parts[first]
        await lane.limiter.acquire(weight)
        if _swapped(lanes, limiters):
            if lane.limiter is limiters[first]:
                lane.give_back(weight)  # taken at this instant from a bucket still in use
            return False
        blocked = next((i for i, (other, w) in enumerate(parts)
                        if other is not lane and not other.limiter.has_capacity(w)), None)
        if blocked is None:
            for other, w in parts:
                if other is not lane:
                    await other.limiter.acquire(w)  # admits: no suspension, the same instant
            return True
        lane.give_back(weight)
        first = blocked


def _swapped(lanes: tuple[Lane, ...], limiters: list[Bucket]) -> bool:
    """Whether a lane's bucket was replaced (:meth:`Lane.shrink`) since ``limiters`` was read."""
    return any(lane.limiter is not limiter for lane, limiter in zip(lanes, limiters, strict=True))
