"""The parts of :mod:`bulk.pacing` (private: import every name from ``bulk.pacing``).

- :mod:`.lane`: one rate limit, an aiolimiter bucket, and its AIMD rate adaptation;
- :mod:`.bucket`: that bucket, waking on the loop clock's tick (all aiolimiter internals used are there);
- :mod:`.episode`: a 429's throttling episode: the window narrowed, or every worker paused;
- :mod:`.window`: the AIMD bound on the requests in flight after a 429;
- :mod:`.gate`: the one counter that holds that bound and the concurrency;
- :mod:`.pause`: every worker held until a ``Retry-After`` / ``X-RateLimit-Reset``, and the
  ``--max-wait`` stop;
- :mod:`.headers`: ``Retry-After`` and ``X-RateLimit-Reset`` parsing;
- :mod:`.health`: retry backoff, and the ``--give-up-after`` stop.
"""
