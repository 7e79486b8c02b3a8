"""Progress on stderr: a live bar on a TTY, a log line every interval otherwise, nothing when quiet.

Chosen once by :func:`choose`; the run calls ``update`` (often: on every chunk written and on
a steady tick, so the display moves while nothing completes; cheap, rate-limited here),
``stopping`` once a signal asks the run to stop, and ``close``.

What every display shows is this run's work: the rate (and so the time remaining) counts the
IDs this run finished, not the ones a stopped run had committed before a ``--resume``;
retries are shown as they happen; counts have thousands separators.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol, TextIO

from batchscore.report import RunStats
from batchscore.wording import counted


class ProgressDisplay(Protocol):
    """Shows how a run is going."""

    def update(self, stats: RunStats) -> None:
        """Called often; renders at its own pace."""

    def stopping(self, message: str) -> None:
        """A signal stops the run: say ``message`` on a line of its own, and keep showing
        the requests in flight finish."""

    def close(self, stats: RunStats) -> None:
        """The run is over; leave the display tidy."""


def rate(stats: RunStats) -> float:
    """Input rows per second that this run went through (not those a stopped run had
    committed): :meth:`RunStats.rate`, as the summary says it."""
    return stats.rate()


def remaining_seconds(stats: RunStats) -> float | None:
    """Seconds left at this run's rate, or None while unknown (no total, nothing done yet)."""
    speed = rate(stats)
    if not stats.total or speed <= 0:
        return None
    return max(stats.total - stats.done - stats.skipped, 0) / speed


def clock(seconds: float | None) -> str:
    """``0:01:05``, or ``?``."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _retries(stats: RunStats) -> str:
    return counted(stats.retries, "retry", "retries") if stats.retries else ""


class NoProgress:
    """Shows nothing (``--quiet``) but a stop."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def update(self, stats: RunStats) -> None:
        """Nothing."""

    def stopping(self, message: str) -> None:
        """Say it: a stop is not the run's progress."""
        print(message, file=self.stream or sys.stderr, flush=True)

    def close(self, stats: RunStats) -> None:
        """Nothing."""


class LogProgress:
    """One line every ``interval`` seconds, for cron and CI logs."""

    def __init__(self, stream: TextIO, interval: float) -> None:
        self.stream = stream
        self.interval = interval
        self._next = time.monotonic() + interval

    def update(self, stats: RunStats) -> None:
        """Print a line when the interval has passed."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        total = f"/{stats.total:,}" if stats.total else ""
        retries = f", {_retries(stats)}" if stats.retries else ""
        workers = f", {counted(stats.workers, 'worker')}" if stats.workers else ""
        remaining = remaining_seconds(stats)
        print(
            f"batchscore: {stats.done:,}{total} done, {stats.failed_total:,} failed{retries}, "
            f"{rate(stats):,.0f} IDs/s, elapsed {clock(stats.elapsed())}"
            + (f", remaining {clock(remaining)}" if stats.total else "")
            + workers,
            file=self.stream,
            flush=True,
        )

    def stopping(self, message: str) -> None:
        """The message, as a line of the log."""
        print(message, file=self.stream, flush=True)

    def close(self, stats: RunStats) -> None:
        """Nothing more: the summary follows."""


class BarProgress:
    """A live display: a bar when the total is known (a file), a spinner when it is not
    (stdin); done, rate, failures, retries, elapsed and remaining time, each labelled."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._bar: Any = None  # rich.progress.Progress, built at the first render
        self._task: Any = None
        self._last = 0.0
        self._state = "scoring"

    def _start(self, bounded: bool) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, SpinnerColumn, TextColumn
        from rich.progress import Progress as RichProgress

        columns: list[Any] = [
            TextColumn("{task.description}"),
            BarColumn() if bounded else SpinnerColumn(),
            TextColumn("{task.fields[counts]}"),
            TextColumn("{task.fields[rate]} IDs/s"),
            TextColumn("[red]{task.fields[failed]} failed"),
            TextColumn("[yellow]{task.fields[retries]}"),
            TextColumn("{task.fields[workers]}"),
            TextColumn("elapsed {task.fields[elapsed]}"),
        ]
        if bounded:
            columns.append(TextColumn("remaining {task.fields[remaining]}"))
        self._bar = RichProgress(*columns, console=Console(file=self.stream), transient=False)
        self._bar.start()

    def update(self, stats: RunStats) -> None:
        """Refresh the display at most ten times a second."""
        now = time.monotonic()
        if now - self._last < 0.1:
            return
        self._last = now
        self._render(stats)

    def _render(self, stats: RunStats) -> None:
        total = stats.total - stats.skipped if stats.total else None
        if self._bar is None:
            self._start(bounded=total is not None)
        fields = {
            "counts": f"{stats.done:,}/{total:,}" if total is not None else f"{stats.done:,} done",
            "rate": f"{rate(stats):,.0f}",
            "failed": f"{stats.failed_total:,}",
            "retries": _retries(stats),
            "workers": counted(stats.workers, "worker") if stats.workers else "",
            "elapsed": clock(stats.elapsed()),
            "remaining": clock(remaining_seconds(stats)),
        }
        if self._task is None:
            self._task = self._bar.add_task(self._state, total=total, **fields)
        self._bar.update(
            self._task, completed=stats.done, total=total, description=self._state, **fields
        )

    def stopping(self, message: str) -> None:
        """The message above the display, which now says ``stopping``."""
        self._state = "stopping"
        if self._bar is None:
            print(message, file=self.stream, flush=True)
            return
        self._bar.console.print(message, markup=False, highlight=False)
        if self._task is not None:
            self._bar.update(self._task, description=self._state)

    def close(self, stats: RunStats) -> None:
        """Draw the final state and stop the live display."""
        self._render(stats)
        self._bar.stop()


def choose(stream: TextIO, *, quiet: bool, interval: float, is_tty: bool) -> ProgressDisplay:
    """The display for this run."""
    if quiet:
        return NoProgress(stream)
    if is_tty:
        return BarProgress(stream)
    return LogProgress(stream, interval)
