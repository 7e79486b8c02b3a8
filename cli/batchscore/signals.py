"""SIGINT and SIGTERM during a run: the first stops it gently, the second leaves at once.

One place for the three ways a run hears signals: :class:`Stopper` on a local run's event loop,
:func:`signals_deferred` while a Dask cluster starts, and :func:`leave_on_second_signal` once a
run is stopping (whichever engine), so that a second Ctrl-C always exits 130 (143) at once and
leaves what was committed resumable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from batchscore.errors import signal_status, swallowed_signal

if TYPE_CHECKING:
    from batchscore.progress import ProgressDisplay
    from batchscore.sources.limits import Limits


class Stoppable(Protocol):
    """What a signal stops (the pipeline): gently first, then what is still in flight."""

    def stop(self) -> None:
        """Take no new work; what is in flight finishes."""

    def cancel_in_flight(self) -> None:
        """Give up on what is in flight."""


GRACE_SECONDS = 5.0
"""After SIGINT/SIGTERM, how long answers already arriving may take to finish before they are
dropped (requests not yet answered are dropped at once: :meth:`Limits.close`)."""


LEFT_AT_ONCE = "batchscore: stopped at once; rerun with --resume to continue"


def leave_at_once(signum: int, frame: object) -> None:
    """The second signal: say so and exit with its status now (committed work stays)."""
    os.write(2, LEFT_AT_ONCE.encode() + b"\n")
    os._exit(int(signal_status(signum)))


def leave_on_second_signal() -> None:
    """From now on until the process ends, SIGINT or SIGTERM leaves at once."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, leave_at_once)


HELD = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait (blocked) for the block's few instructions and come as soon as
    it ends.  Around a fork: Python's at-fork hooks take and give back locks (logging's module
    lock among them), and a signal whose handler raised between the two left that lock held
    for good, its exception "ignored", the run going on, and the next thread to log waiting
    forever (a hang found by the kill-and-resume campaign, SIGTERM 0.6 s into a run).  Around
    a handler swap: between taking one handler away and putting the next in place, a signal
    would meet the default action (SIGTERM kills the process, -15 instead of 143)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)


@contextlib.contextmanager
def signals_deferred(enabled: bool) -> Iterator[list[int]]:
    """SIGINT and SIGTERM wait while a local cluster starts: the signals that came meanwhile.

    Dask cannot close a ``LocalCluster`` interrupted inside its constructor (its atexit hook
    then fails on the half-started workers, 28 lines of traceback), so the signal is acted on
    once the cluster is whole; starting takes a second or two.
    """
    received: list[int] = []
    if not enabled:
        yield received
        return

    def defer(signum: int, frame: object) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, defer) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Stopper:
    """SIGINT/SIGTERM while a job runs: the first stops it gently, the second at once.

    Installed when the job's event loop starts, before anything is opened, so a signal that
    arrives early still ends the run through the same path (state kept, status 130/143).
    """

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._pipeline: Stoppable | None = None
        self._limits: Limits | None = None
        self._progress: ProgressDisplay | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._waiting: asyncio.Future[Any] | None = None  # cancelled by a signal, if set

    def install(self) -> None:
        """Take over SIGINT and SIGTERM on the running loop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.getsignal(sig)
            loop.add_signal_handler(sig, self._on_signal, sig)
        early = swallowed_signal()  # a stop whose exception Python swallowed still stops it
        if early is not None:
            self._on_signal(signal.Signals(early))

    def remove(self) -> None:
        """Give the signals back to the handlers the command had."""
        loop = asyncio.get_running_loop()
        with signals_held():  # no signal meets the default action between the two steps
            for sig, previous in self._previous.items():
                loop.remove_signal_handler(sig)  # resets to the default ...
                if previous is not None:
                    signal.signal(sig, previous)  # ... so put back what was there
        self._previous.clear()
        if self.received is not None:  # stopping: a second signal still leaves at once
            leave_on_second_signal()

    def cancel_on_signal(self, waiting: asyncio.Future[Any] | None) -> None:
        """A wait that a signal should cancel (None: no longer)."""
        self._waiting = waiting

    def watch(
        self, pipeline: Stoppable, limits: Limits, progress: ProgressDisplay | None = None
    ) -> None:
        """The pipeline to stop (at once, if a signal came before it existed), and the
        display that says so."""
        self._pipeline, self._limits, self._progress = pipeline, limits, progress
        if self.received is not None:
            self._stop()

    def _stop(self) -> None:
        assert self._pipeline is not None and self._limits is not None
        self._pipeline.stop()
        self._limits.close()  # requests not started yet are dropped, not sent
        asyncio.get_running_loop().call_later(GRACE_SECONDS, self._pipeline.cancel_in_flight)

    def _say(self, message: str) -> None:
        """On a line of its own: above a live bar, or as a log line (stamped in a log)."""
        if self._progress is not None:
            self._progress.stopping(message)
        else:
            print(message, file=sys.stderr, flush=True)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.received is not None:  # a second signal: leave at once; commits stay resumable
            self._say(LEFT_AT_ONCE)
            os._exit(int(signal_status(sig)))
        self.received = sig
        self._say("batchscore: stopping: finishing requests in flight (again to stop at once)")
        if self._pipeline is not None:
            self._stop()
        elif self._waiting is not None:  # waiting for the input to start: stop waiting
            self._waiting.cancel()
