"""Retries as declared policy: what is retried, how long to wait, and the loop that does it.

What is retryable is data: :data:`RETRYABLE_STATUSES` (429, 500, 502, 503, 504) and each
transport's table of failures (``httpclient.TRANSPORT_FAILURES`` for aiohttp: connection errors,
resets, truncated bodies, timeouts; the postgres source maps asyncpg's); a response whose body
is not the JSON the source expects is retried too (proxies and half-deployed servers produce
such bodies for a moment), and :class:`AttemptFailed` carries the verdict.  This module imports
no transport, so a source's start-up pays only for its own.  How long to wait is one function
(:meth:`RetryPolicy.delay`): exponential backoff with full jitter, or the server's
``Retry-After`` (seconds or an HTTP date) up to a cap.  :func:`call` runs the attempts: each one
holds a slot of the shared :class:`~batchscore.sources.limits.Limits` (so retries count against
``--concurrency`` and ``--rate-limit`` like first attempts), and the slot is released before
waiting: a retry waiting out its backoff or a ``Retry-After`` holds no slot, so an adaptive
limit (``--concurrency auto``) really throttles.  Each attempt's outcome goes back to the limits
as a :class:`~batchscore.sources.adaptive.Signal` (:func:`signal_of`).

Tests that are not about timing call :func:`set_testing` to remove every wait, instead of
mocking ``asyncio.sleep`` (the idea comes from hynek/stamina).
"""

from __future__ import annotations

import datetime
import email.utils
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from batchscore.errors import SourceDownError
from batchscore.settings import FetchSettings
from batchscore.sources import Failure
from batchscore.sources.adaptive import Signal
from batchscore.sources.limits import Limits
from batchscore.wording import counted

T = TypeVar("T")
R = TypeVar("R")

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
"""HTTP statuses worth another attempt: overload and gateway trouble, all transient."""

_testing = False


def set_testing(testing: bool) -> None:
    """Remove (``True``) or restore (``False``) the waits between attempts; attempts still count."""
    global _testing
    _testing = testing


class AttemptFailed(Exception):
    """One attempt did not give an answer: why, and whether another attempt may help."""

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        retryable: bool,
        retry_after: float | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.detail = detail  # where and the OS's why: "127.0.0.1:8080: connection refused"

    @property
    def described(self) -> str:
        """The reason, with the detail when there is one (messages; records keep the reason)."""
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), or None.

    An HTTP date is GMT (RFC 9110) even when it says ``-0000`` or no zone at all (which
    :func:`email.utils.parsedate_to_datetime` leaves naive, and Python would read as local).
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            if when.tzinfo is None:
                when = when.replace(tzinfo=datetime.UTC)
            seconds = when.timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if math.isnan(seconds):
        return None
    return max(seconds, 0.0)


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts, and how long to wait between them."""

    retries: int = 4
    backoff_base: float = 0.1
    backoff_max: float = 10.0
    retry_after_cap: float = 60.0
    down_after: int = 50  # failed attempts in a row, over all IDs, before a source is down

    @classmethod
    def from_settings(cls, fetch: FetchSettings) -> RetryPolicy:
        """The policy ``[fetch]`` (and ``--retries``) declare."""
        return cls(
            retries=fetch.retries,
            backoff_base=fetch.backoff_base,
            backoff_max=fetch.backoff_max,
            retry_after_cap=fetch.retry_after_cap,
            down_after=fetch.down_after,
        )

    @property
    def attempts(self) -> int:
        """Attempts in all: the first and the retries."""
        return 1 + self.retries

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        The backoff is full jitter: uniform in ``[0, min(backoff_max, backoff_base * 2 **
        (attempt - 1))]``.  A server's ``Retry-After`` is honoured up to ``retry_after_cap``,
        but never waits less than that backoff: ``max(min(retry_after, retry_after_cap),
        backoff)``, so ``Retry-After: 0`` (or a date already past) cannot make the retries a
        tight loop.
        """
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        backoff = rng.uniform(0.0, ceiling)
        if retry_after is not None:
            return max(min(retry_after, self.retry_after_cap), backoff)
        return backoff


_rng = random.Random()

OVERLOAD_STATUSES = frozenset({429, 503, 504})
"""Statuses that say the service has too much to do: an adaptive limit backs off."""
OVERLOAD_REASONS = frozenset({"timeout", "connect_error", "connection_error", "statement_timeout"})
"""Failures without a status that say the same: no answer in time (a client or statement
timeout), a connection refused or reset (PostgreSQL's "too many connections" too)."""


def signal_of(failed: AttemptFailed) -> Signal:
    """What a failed attempt tells an adaptive limit: an overload (429, 503, 504, any
    ``Retry-After``, a timeout, a connection refused or reset), an answer (the service
    answered, e.g. 404 or 400: its latency counts), or neither (a 500, a malformed body)."""
    if (
        failed.status in OVERLOAD_STATUSES
        or failed.retry_after is not None
        or (failed.status is None and failed.reason in OVERLOAD_REASONS)
    ):
        return Signal.OVERLOAD
    if failed.status is not None and not failed.retryable:
        return Signal.ANSWER
    return Signal.NEUTRAL


def down_message(source: str, failures: int, reason: str) -> str:
    """What a run stopped by a down source says (a local run's and a cluster run's words)."""
    return (
        f"source '{source}' failed {counted(failures, 'request')} in a row (last: {reason}); "
        "it looks down. Progress is kept: rerun with --resume when it is back"
    )


class SourceHealth:
    """Failed attempts in a row of one source; past ``down_after`` the source is down.

    Counted per attempt, not per ID: a source that refuses every connection is declared down
    after ``down_after`` quick failures, not after every ID has used up its retries.

    What counts: connection failures, timeouts, 5xx answers and unusable bodies (a load
    balancer in front of a dead backend answers 502 or 503 to everything: that source is
    down, although something answers).  What shows the source is up: any other answer (a 404
    or a 400 too), a 429, and any answer with ``Retry-After``: the server is alive and pacing
    us, so it is retried when it says, never declared down.

    "In a row" is in the order requests were sent: once a failure starts a run of failures,
    only attempts sent after it count.  The answers to requests that were already in flight
    together are one event: a burst of 503s to the 64 requests in flight (a backend
    restarting) counts once, and their retries decide.  Once down, the source sends nothing
    more (:meth:`refusal`).
    """

    def __init__(self, source: str, down_after: int) -> None:
        self.source = source
        self.down_after = down_after
        self.failures = 0
        self._sent = 0  # attempts numbered so far
        self._counted_from: int | None = None  # attempts from this number on count
        self._down: str | None = None  # the message, once the source is down
        self._problem = ""  # the same, as ``check`` shows it
        self.answers = 0  # attempts the source answered (a partition tells its driver)
        self.last_reason = ""  # the reason of the last counted failure

    def sending(self) -> int:
        """The number of the attempt about to be sent (give it to :meth:`failed`)."""
        self._sent += 1
        return self._sent

    def answered(self) -> None:
        """The source answered."""
        self.answers += 1
        self.failures = 0
        self._counted_from = None

    def failed(self, failed: AttemptFailed, attempt: int) -> None:
        """Attempt number ``attempt`` failed; raise SourceDownError once too many failed in a
        row."""
        if not failed.retryable or failed.status == 429 or failed.retry_after is not None:
            self.answered()
            return
        if self._counted_from is None:
            self.failures = 1
            self._counted_from = self._sent + 1  # what is in flight now does not count
        elif attempt >= self._counted_from:
            self.failures += 1
        self.last_reason = failed.reason
        if self.failures >= self.down_after and self._down is None:
            self._down = down_message(self.source, self.failures, failed.described)
            self._problem = (
                f"{counted(self.failures, 'request')} in a row failed (last: {failed.described})"
            )
        refused = self.refusal()
        if refused is not None:
            raise refused

    def refusal(self) -> SourceDownError | None:
        """The error to raise instead of sending, once the source is down (a new one each
        time: one exception object raised in many tasks would chain their tracebacks)."""
        if self._down is None:
            return None
        error = SourceDownError(self._down)
        error.problem = self._problem  # what ``batchscore check`` shows beside the source
        return error


async def call(
    send: Callable[[], Awaitable[R]],
    interpret: Callable[[R], T],
    *,
    policy: RetryPolicy,
    limits: Limits,
    source: str,
    on_retry: Callable[[AttemptFailed, int], None] | None = None,
    health: SourceHealth | None = None,
) -> T | Failure:
    """Attempt ``send`` then ``interpret`` until one answers, fails for good, or attempts run out.

    Either may raise :class:`AttemptFailed` for a failed attempt; any other exception propagates
    at once (401/403 stop the whole run).  ``send`` holds one request slot of ``limits`` while
    it runs (timed as one request of ``source``); ``interpret`` (parsing) and the waits between
    attempts happen outside it.
    """
    for number in range(1, policy.attempts + 1):
        sent = 0
        attempt = None
        try:
            async with limits.request(source) as attempt:
                if health is not None:
                    sent = health.sending()
                raw = await send()
            answer = interpret(raw)
            limits.report(attempt, Signal.ANSWER)
            if health is not None:
                health.answered()
            return answer
        except AttemptFailed as failed:
            if attempt is not None:
                limits.report(attempt, signal_of(failed))
            if health is not None:
                health.failed(failed, sent)
            if not failed.retryable or number == policy.attempts:
                return Failure(failed.reason, failed.status, number, failed.retryable)
            if on_retry is not None:
                on_retry(failed, number)
            wait = 0.0 if _testing else policy.delay(number, failed.retry_after, _rng)
            if wait > 0:
                await limits.pause(wait)
    raise AssertionError("unreachable: the last attempt returns")  # pragma: no cover


__all__ = [
    "OVERLOAD_STATUSES",
    "RETRYABLE_STATUSES",
    "AttemptFailed",
    "RetryPolicy",
    "SourceHealth",
    "call",
    "parse_retry_after",
    "set_testing",
    "signal_of",
]
