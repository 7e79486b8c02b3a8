"""``--concurrency auto``: one source's limit on requests in flight, found as the run goes.

:class:`AdaptiveLimit` is the controller: pure arithmetic on the times it is given (no asyncio,
no clock of its own), so tests drive it on a simulated clock.  :class:`~batchscore.sources.
limits.Limits` feeds it every request of its source: when it is sent, when its slot is given
back, and what came of it (:class:`Signal`: an answer with its latency, an overload, or neither).

How it decides, once per *window* (about two round trips, one during the slow start, and at
least ``min_samples`` answers to requests sent inside it):

- **unloaded latency**: the lowest median latency of any window over the last
  ``baseline_seconds``.  It is never measured by lowering the limit on purpose (Envoy's periodic
  minimum-RTT probes cut concurrency to measure it and caused bursts of 503s); the windows at
  a low limit (the start, after a back-off) give it.
- **no queue** (the window's median latency within ``tolerance`` of the unloaded latency), and
  the limit was used in full: grow.  Doubling at first (a slow start), then by ``step`` of the
  limit per window (at least one), and by one at a time near the limit of the last overload.
  Not in full use (the run asked for fewer requests than allowed): hold.
- **a queue** (latency above ``tolerance`` times the unloaded latency, ``confirm`` windows in
  a row: on a busy machine one window can be slow because this process was descheduled, and
  right after a doubling the new connections' handshakes make one window slow): shrink
  towards the
  requests in flight that the best answers per second of the last ``rate_seconds`` need at the
  unloaded latency, plus ``headroom`` (``answers/s x unloaded latency x headroom``, Little's
  law), by at least ``1 - shrink`` and at most half.  A service that queues is held near its
  knee; a run whose own CPU is the bottleneck (more in flight, but no more answers) is held
  where more requests stop bringing more answers.  The best recent rate, not the window's
  own: on a busy machine one slow window (this process descheduled, scoring) reads like a
  queue, and a target from its low rate would cut the limit far below what the service takes,
  window after window (Vector ARC's failure on noisy round-trip times).  So a noisy window
  costs one step of ``1 - shrink``, which the climb gives back.
- **overload** (429, 503, 504, any answer with ``Retry-After``, timeouts, connections refused or
  reset), from requests sent since the last change: two of them (one is an outlier) cut the
  limit by ``decrease`` at once, without waiting for the window's end.  A timeout is never a
  latency sample: constant timeouts (a constant latency) cannot read as a steady service and
  let the limit grow (Gradient2's failure).

The limit stays within ``[minimum, ceiling]``; :attr:`low` and :attr:`high` are the range it
took.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass


class Signal(enum.Enum):
    """What one request's outcome tells the controller."""

    ANSWER = "answer"  # the service answered (any status that is no overload): latency counts
    OVERLOAD = "overload"  # 429/503/504, Retry-After, timeout, connection refused or reset
    NEUTRAL = "neutral"  # neither (a 500, a malformed body, TLS): no latency, no back-off


@dataclass(frozen=True)
class AdaptivePolicy:
    """The controller's constants (the reasons for each are in the README's ``auto`` section)."""

    initial: int = 16
    minimum: int = 1
    tolerance: float = 1.5  # median latency over unloaded x this: a queue is forming
    slack: float = 0.002  # seconds of latency always tolerated (loopback jitter)
    headroom: float = 1.25  # in flight kept above what the answers/s need at unloaded latency
    step: float = 0.1  # the gentle climb: this share of the limit per window (at least 1)
    decrease: float = 0.75  # on overload
    shrink: float = 0.9  # on a queue: at least this step down (to the target if lower)
    confirm: int = 2  # windows in a row over tolerance before a queue is acted on
    rate_seconds: float = 1.0  # the best answers/s over this long sets the target on a queue
    overloads: int = 2  # overloads (from requests sent since the last change) that back off
    window_rtts: float = 2.0  # a window lasts this many median latencies ...
    min_window: float = 0.05  # ... and at least this many seconds ...
    min_samples: int = 8  # ... and holds this many answers to requests sent within it
    baseline_seconds: float = 30.0  # how long a window's median can stand as the unloaded one


@dataclass(frozen=True)
class Change:
    """The limit changed: from, to, and why (a sentence for ``--debug``)."""

    old: int
    new: int
    reason: str


class AdaptiveLimit:
    """One source's limit on requests in flight; see the module docstring for the rules."""

    def __init__(self, ceiling: int, now: float, policy: AdaptivePolicy | None = None) -> None:
        self.policy = p = policy or AdaptivePolicy()
        self.ceiling = max(1, ceiling)
        self._limit = float(min(self.ceiling, max(p.minimum, p.initial)))
        self.low = self.high = self.limit
        self.changes = 0
        self.slow_start = True
        self.in_flight = 0
        self._overload_at: float | None = None  # the limit at the last overload
        self._good = self._limit  # the highest limit of a window without queue or overload
        self._queued = 0  # windows in a row whose latency said "a queue"
        self._baselines: deque[tuple[float, float]] = deque()  # (window end, median latency)
        self._rates: deque[tuple[float, float]] = deque()  # (window end, answers/s)
        self._unloaded: float | None = None  # the least median of _baselines
        self._window = p.min_window  # seconds a window lasts at least
        self._window_start = now
        self._area = 0.0
        self._area_since = now
        self._peak = 0
        self._answers = 0
        self._overloads = 0
        self._latencies: list[float] = []

    @property
    def limit(self) -> int:
        """Requests allowed in flight now."""
        return int(self._limit)

    @property
    def unloaded(self) -> float | None:
        """The unloaded latency (seconds), once a window has measured one."""
        return self._unloaded

    # -- events

    def sent(self, now: float) -> None:
        """A request of this source took a slot."""
        self._integrate(now)
        self.in_flight += 1
        self._peak = max(self._peak, self.in_flight)

    def released(self, now: float) -> None:
        """A request gave its slot back (before :meth:`record` is called for it)."""
        self._integrate(now)
        self.in_flight -= 1

    def record(self, now: float, sent_at: float, latency: float, signal: Signal) -> Change | None:
        """The outcome of a request sent at ``sent_at`` that took ``latency`` seconds; the
        change it causes, if any."""
        fresh = sent_at >= self._window_start  # sent under the current limit
        if signal is Signal.ANSWER:
            self._answers += 1
            if fresh:
                self._latencies.append(latency)
        elif signal is Signal.OVERLOAD and fresh:
            self._overloads += 1
            if self._overloads >= self.policy.overloads:
                return self._overloaded(now)
        # A slow start decides on the first answers to requests sent at the new limit (about
        # one round trip), later windows wait for two round trips.
        length = self.policy.min_window if self.slow_start else self._window
        if now - self._window_start >= length and (
            len(self._latencies) >= min(self.policy.min_samples, self.limit)
        ):
            return self._end_window(now)
        return None

    # -- decisions

    def _overloaded(self, now: float) -> Change | None:
        p = self.policy
        self.slow_start = False
        self._overload_at = self._limit
        if self._answers:  # some answered: this many in flight was too many
            self._good = min(self._good, self._limit)
        # else nothing answered (an outage, not a limit too high): the good level is kept,
        # and the limit grows back to it quickly once answers return
        reason = f"{self._overloads} overloads (429/503/timeouts/resets)"
        return self._set(now, self._limit * p.decrease, reason)

    def _end_window(self, now: float) -> Change | None:
        p = self.policy
        self._integrate(now)
        duration = now - self._window_start
        median = _median(self._latencies)
        while self._baselines and self._baselines[0][0] < now - p.baseline_seconds:
            self._baselines.popleft()
        self._baselines.append((now, median))
        self._unloaded = unloaded = min(m for _, m in self._baselines)
        self._window = max(p.min_window, p.window_rtts * median)
        answers_per_second = self._answers / duration
        while self._rates and self._rates[0][0] < now - p.rate_seconds:
            self._rates.popleft()
        self._rates.append((now, answers_per_second))
        best_rate = max(r for _, r in self._rates)
        in_flight = self._area / duration
        used = self._peak >= self.limit
        ratio = median / unloaded if unloaded > 0 else 1.0
        measured = (
            f"latency {median * 1000:.1f} ms, {ratio:.2f}x the unloaded "
            f"{unloaded * 1000:.1f} ms; {answers_per_second:.0f} answers/s at "
            f"{in_flight:.1f} in flight"
        )
        queued = median > unloaded * p.tolerance + p.slack
        self._queued = self._queued + 1 if queued else 0
        if queued and self._queued < p.confirm:
            pass  # one slow window is noise until the next confirms it (see the docstring)
        elif queued:
            self.slow_start = False
            self._good = min(self._good, self._limit)
            needed = best_rate * unloaded * p.headroom
            target = max(self._limit * 0.5, min(self._limit * p.shrink, needed))
            if int(target) < self.limit:
                return self._set(now, target, f"queueing: {measured}")
        elif used:
            self._good = max(self._good, self._limit)
            if self.slow_start:
                return self._set(now, self._limit * 2, f"slow start: {measured}")
            if self._limit < 0.5 * self._good:  # back after an outage: straight to half of it
                return self._set(now, min(self._limit * 2, self._good), f"regaining: {measured}")
            near = self._overload_at is not None and self._limit >= 0.8 * self._overload_at
            if self._overload_at is not None and self._limit > 1.2 * self._overload_at:
                self._overload_at = None  # grown well past it without an overload: stale
            climb = 1.0 if near else max(1.0, self._limit * p.step)
            return self._set(now, self._limit + climb, f"climbing: {measured}")
        self._start_window(now)
        return None

    def _set(self, now: float, value: float, reason: str) -> Change | None:
        p = self.policy
        old = self.limit
        self._limit = min(float(self.ceiling), max(float(p.minimum), value))
        self._start_window(now)
        if self.limit == old:
            return None
        self.changes += 1
        self.low = min(self.low, self.limit)
        self.high = max(self.high, self.limit)
        return Change(old, self.limit, reason)

    # -- windows

    def _start_window(self, now: float) -> None:
        self._window_start = now
        self._area = 0.0
        self._area_since = now
        self._peak = self.in_flight
        self._answers = 0
        self._overloads = 0
        self._latencies = []

    def _integrate(self, now: float) -> None:
        """Add the time since the last event at the current in-flight count (for the
        window's mean in flight)."""
        self._area += self.in_flight * max(0.0, now - self._area_since)
        self._area_since = now


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


__all__ = ["AdaptiveLimit", "AdaptivePolicy", "Change", "Signal"]
