"""Limits shared by every source: requests in flight and requests per second.

Bounded by construction: a request holds a slot of one semaphore for its whole life, so there are
never more than ``concurrency`` requests in flight, whatever the input size or number of sources.
The time a request holds its slot is its latency (waiting for a slot or for the rate limit is
queueing, not latency): :meth:`Limits.request` reports it to ``observe`` per source.

With ``concurrency = "auto"`` that one semaphore is the ceiling over all sources together
(``max_concurrency``), and each HTTP, Feast and PostgreSQL source also holds a slot of its own
limit, which its :class:`~batchscore.sources.adaptive.AdaptiveLimit` moves as the answers come
back (:meth:`Limits.report`).  A retry waiting out its backoff holds neither.  SQLite and the
input source make no network requests: their queries take only the shared ceiling.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from batchscore.sources.adaptive import AdaptiveLimit, Signal

if TYPE_CHECKING:
    from batchscore.settings import FetchSettings

log = logging.getLogger("batchscore.sources")

PRIORITY: contextvars.ContextVar[int] = contextvars.ContextVar("batchscore_priority", default=0)
"""The priority of the requests made in this context: lower goes first.  The pipeline sets it to
the input position of the rows a fetch is for, so a retry of an early row does not queue behind
thousands of later rows while the ordered output waits for it."""


class PrioritySlots:
    """A semaphore whose waiters are served lowest priority first (FIFO among equals)."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._free = slots
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def resize(self, slots: int) -> None:
        """Allow ``slots`` at once from now on: more wake waiters at once; fewer take effect as
        the requests in flight give theirs back (none is cut short)."""
        self._free += slots - self.slots
        self.slots = slots
        while self._free > 0 and self._waiters:
            self._free -= 1
            self.release()

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
        if self._free < 0:  # resized down: this slot is one of those taken away
            self._free += 1
            return
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


AUTO = "auto"
"""``--concurrency auto``: each source finds its own limit (:mod:`batchscore.sources.adaptive`)."""


@dataclass(slots=True)
class Attempt:
    """One request holding its slots: when it was sent and, once done, how long it took."""

    source: str | None
    sent_at: float = 0.0
    latency: float = 0.0


class SourceLimit:
    """One source's own slots: sized by its controller under ``auto``, else fixed."""

    def __init__(self, name: str, slots: int, control: AdaptiveLimit | None = None) -> None:
        self.name = name
        self.control = control
        self.slots = PrioritySlots(control.limit if control is not None else slots)


class Limits:
    """The bound on requests in flight (``concurrency``) and on their rate (``rate_limit``).

    ``concurrency`` is a number (that many over all sources together, as always) or ``"auto"``:
    then ``max_concurrency`` is the bound over all sources and each source that sends requests
    has its own adaptive limit below it (``on_limit(source, limit)`` hears each value).
    """

    def __init__(
        self,
        *,
        concurrency: int | str,
        max_concurrency: int = 256,
        rate_limit: float = 0.0,
        observe: Callable[[str, float], None] | None = None,
        on_limit: Callable[[str, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.auto = concurrency == AUTO
        ceiling = max_concurrency if self.auto else concurrency
        if not isinstance(ceiling, int) or ceiling < 1:
            raise ValueError("concurrency must be at least 1, or auto")
        self.concurrency = ceiling  # the most requests in flight over all sources
        self._slots = PrioritySlots(ceiling)
        self._own: dict[str, SourceLimit] = {}
        self._ceilings: dict[str, int] = {}
        self._on_limit = on_limit
        self._clock = clock
        self._rate = RateLimiter(rate_limit) if rate_limit > 0 else None
        self._observe = observe
        self._closed = False
        self._closing = asyncio.Event()
        self._unanswered: set[asyncio.Task[object]] = set()

    @classmethod
    def of(
        cls,
        fetch: FetchSettings,
        observe: Callable[[str, float], None] | None = None,
        on_limit: Callable[[str, int], None] | None = None,
    ) -> Limits:
        """The limits ``[fetch]`` (and ``--concurrency``, ``--max-concurrency``,
        ``--rate-limit``) declare."""
        return cls(
            concurrency=fetch.concurrency,
            max_concurrency=fetch.max_concurrency,
            rate_limit=fetch.rate_limit,
            observe=observe,
            on_limit=on_limit,
        )

    def declare(self, source: str, ceiling: int | None = None) -> int:
        """``source`` sends requests over the network: under ``auto`` it gets a limit of its
        own, at most ``ceiling`` (e.g. a database pool's size; with a fixed number, a ceiling
        below it is enforced too).  Returns the most it may have in flight, to size its
        connection pool by."""
        self._ceilings[source] = self.concurrency if ceiling is None else ceiling
        return self.connections(source)

    def connections(self, source: str) -> int:
        """The most requests ``source`` may have in flight at once."""
        return min(self.concurrency, self._ceilings.get(source, self.concurrency))

    def limits(self) -> dict[str, AdaptiveLimit]:
        """Each source's adaptive limit so far (empty unless ``auto``)."""
        return {n: own.control for n, own in self._own.items() if own.control is not None}

    def _source_limit(self, source: str | None) -> SourceLimit | None:
        """The source's own slots, made at its first request: under ``auto`` for every source
        that declared itself, with a fixed number only for one whose ceiling is below it."""
        if source is None:
            return None
        own = self._own.get(source)
        if own is not None:
            return own
        ceiling = self._ceilings.get(source)
        if ceiling is None:
            return None  # SQLite, or a source built outside build_sources: the shared bound
        ceiling = self.connections(source)
        if self.auto:
            control = AdaptiveLimit(ceiling, self._clock())
            own = self._own[source] = SourceLimit(source, ceiling, control)
            if self._on_limit is not None:
                self._on_limit(source, control.limit)
        elif ceiling < self.concurrency:
            own = self._own[source] = SourceLimit(source, ceiling)
        return own

    def report(self, attempt: Attempt, signal: Signal) -> None:
        """What came of a request (called after its slots were given back): under ``auto``
        its source's limit may change."""
        own = self._own.get(attempt.source or "") if self.auto else None
        if own is None or own.control is None:
            return
        change = own.control.record(self._clock(), attempt.sent_at, attempt.latency, signal)
        if change is not None:
            own.slots.resize(change.new)
            log.debug(
                "source '%s': concurrency %d -> %d (%s)",
                own.name,
                change.old,
                change.new,
                change.reason,
            )
            if self._on_limit is not None:
                self._on_limit(own.name, change.new)

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
    async def request(self, source: str | None = None) -> AsyncIterator[Attempt]:
        """Hold one request slot (and respect the rate) for the body of the ``async with``.

        With a ``source`` name, the time the body takes is reported to ``observe`` (also when
        it fails: a failed attempt is a request too); under ``auto`` a source's request also
        holds a slot of the source's own limit (taken first, given back last).  The
        :class:`Attempt` yielded is what :meth:`report` wants once the outcome is known.
        """
        own = self._source_limit(source)
        priority = PRIORITY.get()
        attempt = Attempt(source)
        if own is not None:
            await own.slots.acquire(priority)
        try:
            await self._slots.acquire(priority)
            try:
                if self._rate is not None:
                    await self._rate.wait()
                if self._closed:
                    # Cancels the fetch this request belongs to; its rows stay uncommitted and
                    # a resumed run fetches them again.
                    raise asyncio.CancelledError
                started = attempt.sent_at = self._clock()
                if own is not None and own.control is not None:
                    own.control.sent(started)
                task = asyncio.current_task()
                if task is not None:
                    self._unanswered.add(task)
                try:
                    yield attempt
                finally:
                    if task is not None:
                        self._unanswered.discard(task)
                    ended = self._clock()
                    attempt.latency = ended - started
                    if own is not None and own.control is not None:
                        own.control.released(ended)
                    if self._observe is not None and source is not None:
                        self._observe(source, attempt.latency)
            finally:
                self._slots.release()
        finally:
            if own is not None:
                own.slots.release()
