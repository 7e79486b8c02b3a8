"""The local engine: the whole input in this process, through one scoring pass.

Opens the sources, the input, the output and its state (in that order, each closed on every
path), resumes what a stopped run committed, runs :func:`batchscore.scoring.score_into`, and
stops gently on the first SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from batchscore import idrows
from batchscore import ids as idmod
from batchscore.errors import (
    InterruptedRun,
)
from batchscore.feed import StallHook, watch_stalls
from batchscore.plan import (
    Plan,
    done_record,
    input_format,
    input_path,
    is_stream_path,
    plan_identity,
)
from batchscore.progress import choose
from batchscore.report import RunStats
from batchscore.runlock import RunLock
from batchscore.scoring import (
    Environment,
    Work,
    in_daemon_thread,
    is_terminal,
    make_sink,
    make_target,
    open_input,
    open_sources,
    read_input,
    score_into,
)
from batchscore.settings import Settings
from batchscore.signals import Stopper
from batchscore.sinks.errorlog import ErrorLog
from batchscore.sinks.files import (
    FileTarget,
    temp_path,
)
from batchscore.sources.build import build_sources
from batchscore.sources.input import input_values
from batchscore.sources.limits import Limits
from batchscore.state import RunFiles, RunState

log = logging.getLogger("batchscore")


def refuse(settings: Settings) -> None:
    """Nothing to refuse beyond the plan's own checks: every option runs locally."""


def start(p: Plan, env: Environment, stats: RunStats) -> LocalRun:
    """The run of plan ``p`` (nothing is opened or read yet)."""
    return LocalRun(p, env, stats)


class LocalRun:
    """The async part of one job: open everything, run the pipeline, commit or keep state."""

    def __init__(self, p: Plan, env: Environment, stats: RunStats) -> None:
        self.p = p
        self.env = env
        self.stats = stats
        self.settings = p.settings
        self.limits = Limits.of(self.settings.fetch, stats.observe, stats.limit_changed)
        self.stopper = Stopper()
        self.earlier: str | None = None  # --resume found a complete run: only renames left
        self.done: dict[str, Any] | None = None  # (found by the plan, for this engine)

    def lock(self) -> RunLock | None:
        """The locks on every file the run writes: its output and its errors file (two runs
        with one ``--errors`` would interleave their records)."""
        p = self.p
        errors = (
            [(Path(p.errors_path), "--errors")]
            if p.errors_path is not None and not is_stream_path(p.errors_path)
            else []
        )
        if p.resumable:
            return RunLock(Path(p.output), *errors)
        return RunLock(errors[0][0], option="--errors") if errors else None

    def run(self) -> None:
        """Score the input (the event loop lives as long as the run); its lines are counted
        first, for the progress display's total."""
        settings = self.settings
        in_path = input_path(settings)
        if in_path != "-" and os.path.isfile(in_path):
            skipped = idmod.header_lines(input_format(settings), settings.input.header)
            self.stats.total = max(idmod.count_lines(in_path) - skipped, 0)  # a header is no ID
        asyncio.run(self._run())

    async def _run(self) -> None:
        """Open the sources, the input, the outputs and the state; score; close."""
        if self.env.handle_signals:
            self.stopper.install()
        try:
            await self._open_and_score()
        except asyncio.CancelledError:
            if self.stopper.received is None:
                raise
            # Stopped while starting (waiting for a CSV header on a silent stdin, say).
            raise InterruptedRun(self.stopper.received, self.stats.done) from None
        finally:
            if self.env.handle_signals:
                self.stopper.remove()

    async def _open_and_score(self) -> None:
        p, settings = self.p, self.settings
        sources = build_sources(settings.sources, self.limits, settings.fetch, self.stats)
        stall = StallHook()
        # Everything opened here is closed on every path (an aiosqlite connection left open
        # keeps the process from exiting).
        async with contextlib.AsyncExitStack() as stack:
            source_path = input_path(settings)
            if source_path == "-" and is_terminal(self.env.stdin):
                print("batchscore: reading IDs from stdin; Ctrl-D to end", file=self.env.stderr)
            stream = watch_stalls(open_input(source_path, self.env, stack), stall)
            # A CSV header is read (and checked) here: off the loop, so that a signal still
            # stops a run whose stdin is silent.
            id_name = idmod.id_key(
                input_format(settings), settings.input.id_column, settings.input.id_field
            )
            values = input_values(sources, id_name, p.models.feature_names)
            reading = in_daemon_thread(read_input, settings, stream, values, self.stats.left_out)
            self.stopper.cancel_on_signal(reading)
            items: Iterator[idrows.InputItem] = await reading
            self.stopper.cancel_on_signal(None)
            await open_sources(p.models, sources, stack)
            files = await stack.enter_async_context(self._files())  # closed on every path
            previous = await files.open(
                resume=settings.output.resume, overwrite=settings.output.overwrite
            )
            if previous.complete:
                await files.finish()
                self.stats.restore(previous.counters)
                self.earlier = (
                    "the stopped run had written every row already; its files are now in place"
                )
                return
            self.stats.restore(previous.counters)
            progress = choose(
                self.env.stderr,
                quiet=settings.run.quiet,
                interval=settings.run.progress_interval,
                is_tty=self.env.stderr_isatty,
            )
            await score_into(
                Work(settings, p.models, p.columns),
                sources,
                files,
                items,
                stats=self.stats,
                limits=self.limits,
                progress=progress,
                committed=previous.lines if previous.started else None,
                stall=stall,
                stopper=self.stopper,
            )

    def _files(self) -> RunFiles:
        """The output, the errors file and the run state (nothing is opened yet)."""
        p, settings = self.p, self.settings
        overwrite = settings.output.overwrite or p.replaces
        sink = make_sink(p.output, p.fmt, p.gzip, p.columns, overwrite, self.env)
        errors_target = (
            None if p.errors_path is None else make_target(p.errors_path, False, True, self.env)
        )
        return RunFiles(
            sink=sink,
            errors=ErrorLog(errors_target, settings.input.keep),
            state=RunState(Path(p.output), plan_identity(p), replaces=settings.output.overwrite)
            if p.resumable
            else None,
            output_partial=temp_path(Path(p.output)) if p.resumable else None,
            errors_partial=errors_target.temp if isinstance(errors_target, FileTarget) else None,
            done=done_record(p) if p.resumable and settings.output.resume else None,
        )
