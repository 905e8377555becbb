"""One rate limit: an evenly spacing aiolimiter bucket, and the AIMD state that slows it after a 429.

A lane is an :class:`aiolimiter.AsyncLimiter` (a :class:`~bulk._pacing.bucket.Bucket`, whose
wake-up timer keeps to the loop clock's tick) configured for even spacing:
``AsyncLimiter(k, k / R)`` is a leaky bucket that drains at exactly R requests per second and
holds at most ``k`` (:func:`burst_for`), so at most ``k`` requests ever go back to back: a
server with a small bucket (nginx ``limit_req burst=5``) never sees more than it accepts, and
a late request can still catch up ``k - 1`` slots.

A 429 cuts the lane's rate multiplicatively (``CUT``) and it climbs back additively (``CLIMB``
x R every ``CLIMB_EVERY`` s). A request at a cut rate takes ``R / rate`` of the bucket's
capacity, so the burst shrinks with the rate. Several limits on one request (a kind's and the
shared ``--rate``) are passed at one instant (:func:`acquire_together`).
"""

from __future__ import annotations

from .bucket import Bucket

__all__ = [
    "BURST_SECONDS", "CLIMB", "CLIMB_EVERY", "CUT", "FLOOR", "MAX_BURST", "UNBOUNDED", "Lane", "acquire_together",
    "burst_for",
]

#: Most requests a lane lets go back to back (measured: see README, Performance; a server
#: bucket of 5 takes it with room for the network's jitter).
MAX_BURST = 4
#: The burst is this many seconds of traffic, between 2 and MAX_BURST requests (2: a request
#: the event loop wakes late is made up by the next one instead of lost), and 1 under
#: 2 requests/s, where a server's bucket may hold only one.
BURST_SECONDS = 0.004
#: AIMD: a 429 multiplies the lane's rate by CUT; it climbs back by CLIMB x R every CLIMB_EVERY s.
#: Gentle and quick, because at a small server bucket a sporadic 429 is the network's jitter
#: (a 5-request bucket at 1,000/s tolerates 5 ms), and anything worse pauses everyone anyway.
CUT = 0.9
CLIMB = 0.02
CLIMB_EVERY = 0.1
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


class Lane:
    """One rate limit of ``rate`` requests per second: an evenly spacing AsyncLimiter, and the
    AIMD state that slows it after a 429. ``weight`` = R / current rate: the bucket capacity
    one request takes (1.0 at full rate)."""

    __slots__ = ("_climb_at", "burst", "limiter", "rate", "weight")

    def __init__(self, rate: float, burst: int | None = None) -> None:
        self.rate = rate
        self.burst = burst_for(rate) if burst is None else burst
        # EPS of headroom, at the same rate: on uvloop loop.time() is in whole ms, and elapsed x
        # rate rounds to a hair under one request, so at R = 1,000 the next waiter came up 1e-8
        # short on the very tick its slot is due, and Bucket's timer went to the tick after: 1
        # ms late. A bucket of burst + EPS still lets only ``burst`` go at once. (The busy loop
        # of 0 ms timers at every other rate is Bucket's to prevent.)
        self.limiter = Bucket(self.burst + EPS, (self.burst + EPS) / rate)
        self.weight = 1.0
        self._climb_at = 0.0

    @property
    def current_rate(self) -> float:
        return self.rate / self.weight

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
        if weight != 1.0 and now >= self._climb_at:  # one step per CLIMB_EVERY s without a cut
            steps = 1 + int((now - self._climb_at) / CLIMB_EVERY)
            rate = min(self.rate, self.rate / weight + steps * CLIMB * self.rate)
            self.weight = weight = self.rate / rate if rate < self.rate else 1.0
            self._climb_at = now + CLIMB_EVERY
        return weight

    def give_back(self, weight: float) -> None:
        """Undo an acquire of ``weight`` made at this instant (aiolimiter has no release: its
        state is the bucket's level). :func:`acquire_together` needs it."""
        limiter = self.limiter
        limiter._level = max(limiter._level - weight, 0.0)

    def cut(self, climb_from: float) -> None:
        """A 429: lower the rate; it starts climbing back ``CLIMB_EVERY`` after ``climb_from``."""
        self.slow_to(max(self.current_rate * CUT, self.rate * FLOOR), climb_from)

    def slow_to(self, rate: float, resume_at: float) -> None:
        """Pace at ``rate`` (if lower than now), climbing back from ``resume_at`` on."""
        if 0 < rate < self.current_rate:
            self.weight = self.rate / rate
            self._climb_at = resume_at + CLIMB_EVERY


async def acquire_together(lanes: tuple[Lane, ...], now: float) -> None:
    """Pass every one of ``lanes`` at one instant: the request leaves only when each of them
    admits it then, so none of them counts it earlier than it leaves.

    Taking one lane and then waiting for the next would let the request leave later than the
    first lane counted it, and the next request of that lane follow it closer than its rate
    allows. So: wait for one lane (taking it); if every other lane admits now, take them all
    (aiolimiter's acquire returns without suspending when it admits); else give the first back
    and wait for the one that did not admit. Capacity beyond a lane's burst (a cut rate's
    weight) is taken first, as plain waiting.
    """
    parts: list[tuple[Lane, float]] = []
    for lane in lanes:
        weight = lane.weight_at(now)
        while weight > lane.burst:
            await lane.limiter.acquire(lane.burst)
            weight -= lane.burst
        parts.append((lane, weight))
    first = 0
    while True:
        lane, weight = parts[first]
        await lane.limiter.acquire(weight)
        blocked = next((i for i, (other, w) in enumerate(parts)
                        if other is not lane and not other.limiter.has_capacity(w)), None)
        if blocked is None:
            for other, w in parts:
                if other is not lane:
                    await other.limiter.acquire(w)  # admits: no suspension, the same instant
            return
        lane.give_back(weight)
        first = blocked
