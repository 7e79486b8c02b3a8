"""Limits shared by every source: requests in flight and requests per second.

Bounded by construction: a request holds a slot of one semaphore for its whole life, so there are
never more than ``concurrency`` requests in flight, whatever the input size or number of sources.
The time a request holds its slot is its latency (waiting for a slot or for the rate limit is
queueing, not latency): :meth:`Limits.request` reports it to ``observe`` per source.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class RateLimiter:
    """At most ``rate`` starts per second, spaced evenly (a leaky bucket of depth one)."""

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.interval = 1.0 / rate
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        """Return when the next start is allowed."""
        async with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
            if start > now:
                await asyncio.sleep(start - now)


class Limits:
    """The bound on requests in flight (``concurrency``) and on their rate (``rate_limit``)."""

    def __init__(
        self,
        *,
        concurrency: int,
        rate_limit: float = 0.0,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._rate = RateLimiter(rate_limit) if rate_limit > 0 else None
        self._observe = observe
        self.in_flight = 0
        self.max_in_flight = 0

    @asynccontextmanager
    async def request(self, source: str | None = None) -> AsyncIterator[None]:
        """Hold one request slot (and respect the rate) for the body of the ``async with``.

        With a ``source`` name, the time the body takes is reported to ``observe`` (also when
        it fails: a failed attempt is a request too).
        """
        async with self._slots:
            if self._rate is not None:
                await self._rate.wait()
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            started = time.monotonic()
            try:
                yield
            finally:
                self.in_flight -= 1
                if self._observe is not None and source is not None:
                    self._observe(source, time.monotonic() - started)
