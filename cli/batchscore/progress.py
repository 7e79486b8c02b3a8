"""Progress on stderr: a live bar on a TTY, a log line every interval otherwise, nothing when quiet.

Chosen once by :func:`choose`; the pipeline only calls ``update`` (cheap, rate-limited here) and
``close``.
"""

from __future__ import annotations

import time
from typing import Any, Protocol, TextIO

from batchscore.report import RunStats


class ProgressDisplay(Protocol):
    """Shows how a run is going."""

    def update(self, stats: RunStats) -> None:
        """Called often; renders at its own pace."""

    def close(self, stats: RunStats) -> None:
        """The run is over; leave the display tidy."""


class NoProgress:
    """Shows nothing (``--quiet``)."""

    def update(self, stats: RunStats) -> None:
        """Nothing."""

    def close(self, stats: RunStats) -> None:
        """Nothing."""


def _eta(stats: RunStats) -> str:
    if not stats.total or not stats.done:
        return "?"
    rate = stats.rate()
    if rate <= 0:
        return "?"
    remaining = max(stats.total - stats.done - stats.skipped, 0) / rate
    return f"{remaining:,.0f} s"


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
        rate = stats.rate()
        workers = f", {stats.workers} workers" if stats.workers else ""
        print(
            f"batchscore: {stats.done:,}{total} done, {stats.failed_total:,} failed, "
            f"{rate:,.0f} IDs/s, ETA {_eta(stats)}{workers}",
            file=self.stream,
            flush=True,
        )

    def close(self, stats: RunStats) -> None:
        """Nothing more: the summary follows."""


class BarProgress:
    """A rich progress bar: done/total, rate, ETA, failures."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} IDs/s"),
            TextColumn("[red]{task.fields[failed]} failed"),
            TextColumn("{task.fields[workers]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream),
            transient=False,
        )
        self._task: Any = None
        self._last = 0.0

    def update(self, stats: RunStats) -> None:
        """Refresh the bar at most ten times a second."""
        now = time.monotonic()
        if now - self._last < 0.1:
            return
        self._last = now
        self._render(stats)

    def _render(self, stats: RunStats) -> None:
        rate = f"{stats.rate():,.0f}"
        total = stats.total - stats.skipped if stats.total else None
        workers = f"{stats.workers} workers" if stats.workers else ""
        if self._task is None:
            self._bar.start()
            self._task = self._bar.add_task(
                "score", total=total, rate=rate, failed=0, workers=workers
            )
        self._bar.update(
            self._task,
            completed=stats.done,
            total=total,
            rate=rate,
            failed=stats.failed_total,
            workers=workers,
        )

    def close(self, stats: RunStats) -> None:
        """Draw the final state and stop the live display."""
        self._render(stats)
        self._bar.stop()


def choose(stream: TextIO, *, quiet: bool, interval: float, is_tty: bool) -> ProgressDisplay:
    """The display for this run."""
    if quiet:
        return NoProgress()
    if is_tty:
        return BarProgress(stream)
    return LogProgress(stream, interval)
