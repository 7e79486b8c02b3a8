"""Limits shared by every source: requests in flight and requests per second.

Bounded by construction: a request holds a slot of one semaphore for its whole life, so there are
never more than ``concurrency`` requests in flight, whatever the input size or number of sources.
The time a request holds its slot is its latency (waiting for a slot or for the rate limit is
queueing, not latency): :meth:`Limits.request` reports it to ``observe`` per source.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

PRIORITY: contextvars.ContextVar[int] = contextvars.ContextVar("batchscore_priority", default=0)
"""The priority of the requests made in this context: lower goes first.  The pipeline sets it to
the input position of the rows a fetch is for, so a retry of an early row does not queue behind
thousands of later rows while the ordered output waits for it."""


class PrioritySlots:
    """A semaphore whose waiters are served lowest priority first (FIFO among equals)."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    async def acquire(self, priority: int) -> None:
        """Take a slot, waiting behind every waiter of a lower priority."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot was handed to us just as we were cancelled
            raise

    def release(self) -> None:
        """Give a slot back: to the most urgent live waiter, if any."""
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)
                return
        self._free += 1


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
        self._slots = PrioritySlots(concurrency)
        self._rate = RateLimiter(rate_limit) if rate_limit > 0 else None
        self._observe = observe
        self._closed = False
        self._closing = asyncio.Event()
        self._unanswered: set[asyncio.Task[object]] = set()

    def close(self) -> None:
        """The run is stopping: requests not yet started are cancelled instead of sent, and so
        are those sent but not yet answered (their rows stay uncommitted; a resumed run fetches
        them again).  Only answers already arriving (see :meth:`answering`) may finish."""
        self._closed = True
        self._closing.set()
        for task in list(self._unanswered):
            task.cancel()
        self._unanswered.clear()

    def answering(self) -> None:
        """The current request's answer has started to arrive: a stop lets it finish."""
        task = asyncio.current_task()
        if task is not None:
            self._unanswered.discard(task)

    async def pause(self, seconds: float) -> None:
        """Wait ``seconds`` between attempts, or stop waiting when the run stops: a retry that
        would start after the stop is cancelled at once, not after its backoff."""
        if not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), seconds)
        if self._closed:
            raise asyncio.CancelledError

    @asynccontextmanager
    async def request(self, source: str | None = None) -> AsyncIterator[None]:
        """Hold one request slot (and respect the rate) for the body of the ``async with``.

        With a ``source`` name, the time the body takes is reported to ``observe`` (also when
        it fails: a failed attempt is a request too).
        """
        await self._slots.acquire(PRIORITY.get())
        try:
            if self._rate is not None:
                await self._rate.wait()
            if self._closed:
                # Cancels the fetch this request belongs to; its rows stay uncommitted and a
                # resumed run fetches them again.
                raise asyncio.CancelledError
            started = time.monotonic()
            task = asyncio.current_task()
            if task is not None:
                self._unanswered.add(task)
            try:
                yield
            finally:
                if task is not None:
                    self._unanswered.discard(task)
                if self._observe is not None and source is not None:
                    self._observe(source, time.monotonic() - started)
        finally:
            self._slots.release()
