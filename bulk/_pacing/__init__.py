"""The parts of :mod:`bulk.pacing` (private: import every name from ``bulk.pacing``).

- :mod:`.lane`: one rate limit, an aiolimiter bucket, and its AIMD rate adaptation;
- :mod:`.window`: the AIMD bound on the requests in flight after a 429;
- :mod:`.gate`: the one counter that holds that bound and the concurrency;
- :mod:`.pause`: every worker held until a ``Retry-After`` / ``X-RateLimit-Reset``, and the
  ``--max-wait`` stop;
- :mod:`.headers`: ``Retry-After`` and ``X-RateLimit-Reset`` parsing;
- :mod:`.health`: retry backoff, and the ``--give-up-after`` stop.
"""
