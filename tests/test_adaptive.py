"""The ``--concurrency auto`` controller on simulated clocks, and the limits that apply it.

The controller (:class:`~batchscore.sources.adaptive.AdaptiveLimit`) is pure arithmetic on the
times it is given, so these tests run it against simulated services (a discrete-event loop:
a client with unbounded demand sends whenever the limit allows) for tens of simulated seconds
in milliseconds of real time.  The services are the three of issue 20 (roomy, queueing,
load-shedding) and the anchors' failure cases (constant timeouts, one outlier, an outage).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from batchscore.sources.adaptive import AdaptiveLimit, Signal
from batchscore.sources.limits import PRIORITY, Limits


@dataclass
class Outcome:
    """What a simulated service does with one request: when it answers, and how."""

    latency: float
    signal: Signal = Signal.ANSWER


class Roomy:
    """Answers every request after ``latency``, however many are in flight."""

    def __init__(self, latency: float = 0.05) -> None:
        self.latency = latency

    def arrive(self, now: float) -> Outcome:
        return Outcome(self.latency)


class Queueing:
    """``workers`` serve one request each for ``service`` seconds; the rest wait in order."""

    def __init__(self, workers: int, service: float = 0.02) -> None:
        self.free_at = [0.0] * workers
        self.service = service
        self.waits: list[tuple[float, float]] = []  # (arrival, wait)

    def resize(self, workers: int, now: float) -> None:
        busy = sorted(self.free_at)
        if workers < len(busy):
            self.free_at = busy[-workers:]  # the busiest keep working
        else:
            self.free_at = busy + [now] * (workers - len(busy))

    def arrive(self, now: float) -> Outcome:
        start = max(now, heapq.heappop(self.free_at))
        heapq.heappush(self.free_at, start + self.service)
        self.waits.append((now, start - now))
        return Outcome(start + self.service - now)


class Shedding:
    """Over ``capacity`` in flight, answers 503 at once (an overload); else after ``latency``."""

    def __init__(self, capacity: int, latency: float = 0.02) -> None:
        self.capacity = capacity
        self.latency = latency
        self.busy: list[float] = []  # when the accepted requests finish

    def arrive(self, now: float) -> Outcome:
        while self.busy and self.busy[0] <= now:
            heapq.heappop(self.busy)
        if len(self.busy) >= self.capacity:
            return Outcome(0.001, Signal.OVERLOAD)
        heapq.heappush(self.busy, now + self.latency)
        return Outcome(self.latency)


@dataclass
class Trace:
    """What a simulated run saw."""

    limits: list[tuple[float, int]] = field(default_factory=list)  # (time, limit) at changes
    answers: list[float] = field(default_factory=list)  # times of answers
    overloads: int = 0
    requests: int = 0
    peak_in_flight: int = 0

    def limit_at(self, t: float) -> int:
        value = self.limits[0][1]
        for when, limit in self.limits:
            if when <= t:
                value = limit
        return value

    def limits_between(self, start: float, end: float) -> list[int]:
        return [self.limit_at(start)] + [v for t, v in self.limits if start <= t < end]

    def rate(self, start: float, end: float) -> float:
        return sum(start <= t < end for t in self.answers) / (end - start)


def simulate(
    service: Callable[[float], Outcome],
    seconds: float,
    *,
    ceiling: int = 256,
    events: dict[float, Callable[[float], None]] | None = None,
) -> tuple[AdaptiveLimit, Trace]:
    """Run a client of unbounded demand against ``service`` for ``seconds`` (simulated);
    ``events`` are called at their time (a capacity drop, say)."""
    control = AdaptiveLimit(ceiling, now=0.0)
    trace = Trace(limits=[(0.0, control.limit)])
    order = itertools.count()
    pending: list[tuple[float, int, float, Outcome]] = []  # (done at, n, sent at, outcome)
    scheduled = sorted((events or {}).items())
    now = 0.0

    def fill() -> None:
        while control.in_flight < control.limit:
            control.sent(now)
            trace.requests += 1
            trace.peak_in_flight = max(trace.peak_in_flight, control.in_flight)
            outcome = service(now)
            heapq.heappush(pending, (now + outcome.latency, next(order), now, outcome))

    fill()
    while pending and now < seconds:
        if scheduled and scheduled[0][0] <= pending[0][0]:
            now, event = scheduled.pop(0)
            event(now)
            continue
        now, _, sent_at, outcome = heapq.heappop(pending)
        control.released(now)
        if outcome.signal is Signal.ANSWER:
            trace.answers.append(now)
        elif outcome.signal is Signal.OVERLOAD:
            trace.overloads += 1
        change = control.record(now, sent_at, outcome.latency, outcome.signal)
        if change is not None:
            assert change.new == control.limit and change.reason
            trace.limits.append((now, change.new))
        fill()
    return control, trace


def test_grows_quickly_to_the_ceiling_on_a_roomy_service() -> None:
    control, trace = simulate(Roomy(0.05).arrive, 5.0)
    assert control.limit == 256
    assert trace.limit_at(1.0) == 256  # a slow start: 16 -> 256 in a few round trips
    assert trace.rate(2.0, 5.0) == pytest.approx(256 / 0.05, rel=0.02)


def test_holds_at_a_queueing_services_knee() -> None:
    service = Queueing(workers=24, service=0.02)
    _, trace = simulate(service.arrive, 20.0)
    steady = trace.limits_between(5.0, 20.0)
    assert min(steady) >= 20 and max(steady) <= 48  # near the 24 workers, never flooding
    assert trace.rate(5.0, 20.0) >= 0.95 * 24 / 0.02  # the workers kept busy
    waits = [wait for arrived, wait in service.waits if arrived >= 5.0]
    assert sum(waits) / len(waits) < 0.02  # a queue shorter than one service time


def test_backs_off_on_a_load_shedding_service_with_few_refusals() -> None:
    _, trace = simulate(Shedding(capacity=24).arrive, 20.0)
    assert trace.overloads / trace.requests < 0.05
    assert trace.rate(2.0, 20.0) >= 0.8 * 24 / 0.02
    assert max(trace.limits_between(5.0, 20.0)) <= 32


def test_an_outage_of_503s_backs_off_to_the_minimum_and_recovery_grows_it_back() -> None:
    roomy = Roomy(0.05)

    def service(now: float) -> Outcome:
        if 3.0 <= now < 6.0:
            return Outcome(0.002, Signal.OVERLOAD)
        return roomy.arrive(now)

    _, trace = simulate(service, 10.0)
    assert trace.limit_at(2.9) == 256
    assert trace.limit_at(5.9) == 1  # backed off all the way while every answer was a 503
    assert trace.limit_at(7.2) >= 128  # straight back to half of where it was (doubling) ...
    assert trace.limit_at(9.0) == 256  # ... then the climb, within three seconds in all
    assert trace.rate(6.0, 9.0) >= 0.5 * 256 / 0.05  # half the full rate over those 3 s


def test_constant_timeouts_never_let_the_limit_grow() -> None:
    """Gradient2's failure: every request timing out at the same 1 s reads as a steady
    latency; here a timeout is an overload, never a latency sample."""
    control, trace = simulate(lambda now: Outcome(1.0, Signal.OVERLOAD), 60.0)
    assert max(limit for _, limit in trace.limits) == 16  # the start, never more
    assert control.limit == 1


def test_one_outlier_changes_nothing() -> None:
    """One 503 or one very slow answer among many is noise, not overload."""
    roomy = Roomy(0.05)
    count = itertools.count()

    def service(now: float) -> Outcome:
        n = next(count)
        if n == 3000:
            return Outcome(0.001, Signal.OVERLOAD)
        if n == 3500:
            return Outcome(5.0)
        return roomy.arrive(now)

    _, trace = simulate(service, 8.0)
    assert trace.limit_at(1.5) == 256
    assert trace.limits_between(1.5, 8.0) == [256]


def test_never_exceeds_the_ceiling() -> None:
    control, trace = simulate(Roomy(0.01).arrive, 5.0, ceiling=40)
    assert max(limit for _, limit in trace.limits) == 40
    assert trace.peak_in_flight == 40
    assert control.limit == 40


def test_follows_a_capacity_drop_and_its_recovery_within_seconds() -> None:
    service = Queueing(workers=48, service=0.02)
    events = {5.0: lambda t: service.resize(12, t), 15.0: lambda t: service.resize(48, t)}
    _, trace = simulate(service.arrive, 25.0, events=events)
    assert max(trace.limits_between(7.0, 15.0)) <= 24  # followed down within 2 s
    waits = [wait for arrived, wait in service.waits if 7.0 <= arrived < 15.0]
    assert sum(waits) / len(waits) < 0.02
    assert trace.rate(17.0, 25.0) >= 0.95 * 48 / 0.02  # and back up within 2 s


def test_a_limit_not_in_full_use_does_not_grow() -> None:
    """Demand below the limit (the run asks for fewer requests) is no evidence of room."""
    control = AdaptiveLimit(256, now=0.0)
    now = 0.0
    for _ in range(2000):  # 4 in flight at a time, never the 16 allowed
        for _ in range(4):
            control.sent(now)
        now += 0.02
        for _ in range(4):
            control.released(now)
            assert control.record(now, now - 0.02, 0.02, Signal.ANSWER) is None
    assert control.limit == 16


# -- the limits that apply it --------------------------------------------------------------------


async def _flood(limits: Limits, sources: list[str], per_source: int) -> dict[str, int]:
    """Requests of each source at once; the most in flight seen, per source and overall."""
    in_flight = dict.fromkeys([*sources, "all"], 0)
    peak = dict(in_flight)

    async def one(source: str, i: int) -> None:
        PRIORITY.set(i)
        async with limits.request(source) as attempt:
            for key in (source, "all"):
                in_flight[key] += 1
                peak[key] = max(peak[key], in_flight[key])
            await asyncio.sleep(0.001)
            for key in (source, "all"):
                in_flight[key] -= 1
        limits.report(attempt, Signal.ANSWER)

    async with asyncio.TaskGroup() as group:
        for source in sources:
            for i in range(per_source):
                group.create_task(one(source, i))
    return peak


def test_under_auto_each_source_starts_at_its_own_limit_below_the_shared_ceiling() -> None:
    seen: dict[str, list[int]] = {}
    limits = Limits(
        concurrency="auto",
        max_concurrency=20,
        on_limit=lambda name, limit: seen.setdefault(name, []).append(limit),
    )
    limits.declare("a")
    limits.declare("b", ceiling=5)  # a database pool of 5
    peak = asyncio.run(_flood(limits, ["a", "b", "sqlite"], 200))
    assert peak["a"] == 16  # the starting limit, reached
    assert peak["b"] == 5  # its pool, never more
    assert peak["all"] <= 20  # the ceiling over all sources together
    assert peak["sqlite"] >= 1  # an undeclared source takes only the shared ceiling
    assert seen["a"][0] == 16 and seen["b"][0] == 5
    assert set(limits.limits()) == {"a", "b"}


def test_a_fixed_number_is_the_bound_over_all_sources_as_before() -> None:
    limits = Limits(concurrency=7)
    limits.declare("a")
    limits.declare("b")
    peak = asyncio.run(_flood(limits, ["a", "b"], 100))
    assert peak["all"] == 7
    assert limits.limits() == {}  # nothing adapts


def test_a_resized_slot_pool_lets_in_flight_requests_finish_and_admits_by_the_new_size() -> None:
    from batchscore.sources.limits import PrioritySlots

    async def main() -> list[int]:
        slots = PrioritySlots(4)
        for _ in range(4):
            await slots.acquire(0)
        waiter = asyncio.ensure_future(slots.acquire(0))
        await asyncio.sleep(0)
        slots.resize(2)  # two of the four in flight must give theirs back for nothing
        slots.release()
        slots.release()
        await asyncio.sleep(0)
        admitted_after_two = int(waiter.done())
        slots.release()  # now below 2 in flight: the waiter gets a slot
        await asyncio.sleep(0)
        admitted_after_three = int(waiter.done())
        slots.resize(5)
        return [admitted_after_two, admitted_after_three, slots._free]

    assert asyncio.run(main()) == [0, 1, 3]


def test_a_request_waiting_out_retry_after_holds_no_slot() -> None:
    """Under ``auto`` with room for one request in all, a request told ``Retry-After`` gives
    both its slots back while it waits: another request goes through meanwhile."""
    from batchscore.sources.retry import AttemptFailed, RetryPolicy, call

    finished: list[str] = []

    async def main() -> None:
        limits = Limits(concurrency="auto", max_concurrency=1)
        limits.declare("svc")
        tries = {"slow": 0}

        async def refused_once() -> str:
            tries["slow"] += 1
            if tries["slow"] == 1:
                raise AttemptFailed("http_503", status=503, retryable=True, retry_after=0.3)
            return "slow"

        async def quick() -> str:
            await asyncio.sleep(0.01)  # sent while the first waits out its Retry-After
            return "quick"

        async def fetch(send: Callable[[], Any]) -> None:
            answer = await call(
                send, lambda raw: raw, policy=RetryPolicy(), limits=limits, source="svc"
            )
            finished.append(str(answer))

        first = asyncio.create_task(fetch(refused_once))
        await asyncio.sleep(0.05)
        await fetch(quick)
        await first

    asyncio.run(main())
    assert finished == ["quick", "slow"]
