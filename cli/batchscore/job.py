"""One scoring job: Settings in, exit status out.  Builds the parts and runs the pipeline.

Order matters and is part of the contract: the model is checked first, then the config of every
source, then the output (lock, leftovers); only then is anything fetched or any output written.
However the run ends, the summary, ``--report`` and ``--metrics`` say how, and a stopped run's
committed work stays resumable.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import signal
import stat
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from batchscore import ids as idmod
from batchscore.errors import (
    BatchscoreError,
    ExitStatus,
    InterruptedRun,
    ModelError,
    OutputWriteError,
    UsageError,
)
from batchscore.model import Model, ModelInfo, read_info
from batchscore.pipeline import Pipeline, PipelineOptions, allowed
from batchscore.progress import choose
from batchscore.report import RunStats, summary_lines, write_metrics, write_report
from batchscore.settings import Settings, parse_shard
from batchscore.sinks import Columns, Sink, output_format
from batchscore.sinks.errorlog import ErrorLog
from batchscore.sinks.files import ByteTarget, FileTarget, StdoutTarget, temp_path, write_error
from batchscore.sources import Source, build_sources
from batchscore.sources.limits import Limits
from batchscore.state import Progress, RunLock, RunState

log = logging.getLogger("batchscore")

GRACE_SECONDS = 5.0
"""After SIGINT/SIGTERM, how long fetches in flight may take to finish before they are dropped."""


@dataclass(frozen=True)
class Environment:
    """The process's streams and variables, passed in so tests can swap them."""

    stdin: BinaryIO
    stdout_fd: int
    stderr: TextIO
    stderr_isatty: bool
    environ: Mapping[str, str]
    handle_signals: bool = False


@dataclass(frozen=True)
class Outcome:
    """How a job ended."""

    status: ExitStatus
    stats: RunStats
    output: str


def expand_path(template: str, run_id: str, now: dt.datetime) -> str:
    """Expand ``{date}`` and ``{run_id}`` in an output path."""
    return template.replace("{date}", now.strftime("%Y-%m-%d")).replace("{run_id}", run_id)


def open_input(path: str, env: Environment, stack: ExitStack) -> BinaryIO:
    """The ID input as a binary stream (stdin for ``-``)."""
    if path == "-":
        return env.stdin
    try:
        return stack.enter_context(open(path, "rb"))
    except FileNotFoundError:
        raise UsageError(f"ID file {path} does not exist; pass a path or - for stdin") from None
    except IsADirectoryError:
        raise UsageError(
            f"ID path {path} is a directory; pass a file with one ID per line"
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot read ID file {path}: {exc.strerror}") from None


def check_coverage(model: Model, sources: list[Source]) -> None:
    """Every model feature must come from some source, when the sources can tell up front."""
    provided: set[str] = set()
    for source in sources:
        names = source.provides()
        if names is None:
            return
        provided |= names
    missing = [name for name in model.info.feature_names if name not in provided]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise ModelError(
            f"no source provides model feature(s) {shown}; add a source or a `rename` for them"
        )


def is_stream_path(path: str) -> bool:
    """Whether ``path`` is stdout or an existing non-regular file (a device or a FIFO).

    Those are written directly: there is no temporary name to rename, and nothing to resume.
    """
    if path == "-":
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode)


def make_target(path: str, gzip: bool, overwrite: bool, env: Environment) -> ByteTarget:
    """Where the output bytes go."""
    if path == "-":
        return StdoutTarget(env.stdout_fd, gzip=gzip)
    if is_stream_path(path):
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError as exc:
            raise OutputWriteError(f"cannot open {path} for writing: {exc.strerror}") from None
        return StdoutTarget(fd, gzip=gzip, name=path)
    return FileTarget(Path(path), overwrite=overwrite, gzip=gzip)


def make_sink(
    path: str, fmt: str, gzip: bool, columns: Columns, overwrite: bool, env: Environment
) -> Sink:
    """The sink for an output path and format."""
    from batchscore.sinks.encoders import CsvEncoder, JsonlEncoder
    from batchscore.sinks.files import StreamSink

    if fmt in ("parquet", "sqlite"):
        if is_stream_path(path):
            raise UsageError(f"--format {fmt} needs a file path for -o, not a stream")
        if gzip:
            raise UsageError(f"--format {fmt} cannot be gzipped; drop the .gz")
        if fmt == "parquet":
            from batchscore.sinks.parquet import ParquetSink

            return ParquetSink(Path(path), columns, overwrite=overwrite)
        from batchscore.sinks.sqlitedb import SqliteSink

        return SqliteSink(Path(path), columns, overwrite=overwrite)
    encoder = CsvEncoder(columns) if fmt == "csv" else JsonlEncoder(columns)
    return StreamSink(encoder, make_target(path, gzip, overwrite, env))


@dataclass
class _Plan:
    """What :func:`run_job` decided before the event loop starts."""

    settings: Settings
    info: ModelInfo
    model: Model
    output: str
    fmt: str
    gzip: bool
    errors_path: str | None
    columns: Columns
    run_id: str
    resumable: bool


def plan(settings: Settings) -> _Plan:
    """Check the model, the input options and the output path; nothing is created yet."""
    info = read_info(str(settings.model.path))
    run_id = uuid.uuid4().hex[:12]
    output = expand_path(settings.output.path, run_id, dt.datetime.now())
    fmt, gzip = output_format(output, settings.output.format)
    in_format = idmod.detect_format(settings.input.path, settings.input.format)
    if settings.input.keep and in_format == "text":
        raise UsageError("--keep needs a CSV or JSON-lines input; plain text has only IDs")
    resumable = not is_stream_path(output)
    try:
        if resumable and not Path(output).parent.is_dir():
            raise UsageError(f"the folder for output {output} does not exist; create it first")
        if resumable and Path(output).exists() and not settings.output.overwrite:
            raise UsageError(
                f"output {output} already exists; "
                "pass --overwrite to replace it or choose another -o"
            )
    except OSError as exc:
        raise write_error(output, exc) from None
    errors_path = settings.output.errors or (output + ".errors.jsonl" if resumable else None)
    model = Model(info, threads=settings.score.threads)
    columns = Columns(info.score_columns(), settings.input.keep, settings.score.explain)
    return _Plan(settings, info, model, output, fmt, gzip, errors_path, columns, run_id, resumable)


def run_job(settings: Settings, env: Environment) -> Outcome:
    """Run a scoring job and say how it ended; errors after the start are reported, then raised."""
    p = plan(settings)
    stats = RunStats()
    in_path = settings.input.path
    if in_path != "-" and os.path.isfile(in_path):
        stats.total = idmod.count_lines(in_path)
    lock = RunLock(Path(p.output)) if p.resumable else None
    if lock is not None:
        lock.acquire()
    error: BaseException | None = None
    try:
        asyncio.run(_run(p, env, stats))
    except BaseException as exc:
        error = exc
    finally:
        if lock is not None:
            lock.release()
    status = _status(error, stats, settings)
    if status not in (ExitStatus.USAGE, ExitStatus.LOCKED):  # those stop before any work
        _finish(p, env, stats, status)
    if error is not None:
        raise error
    return Outcome(status, stats, p.output)


def _status(error: BaseException | None, stats: RunStats, settings: Settings) -> ExitStatus:
    if error is None:
        ok = allowed(stats, settings.run.max_failed, settings.run.max_failed_rate)
        return ExitStatus.OK if ok else ExitStatus.PARTIAL
    if isinstance(error, BatchscoreError):
        return error.exit_status
    if isinstance(error, KeyboardInterrupt):
        return ExitStatus.SIGINT
    return ExitStatus.INTERNAL


def _finish(p: _Plan, env: Environment, stats: RunStats, status: ExitStatus) -> None:
    settings = p.settings
    if not settings.run.quiet and status != ExitStatus.PIPE_CLOSED:
        for line in summary_lines(stats):
            print(line, file=env.stderr)
        if status in (ExitStatus.OK, ExitStatus.PARTIAL) and p.output != "-":
            print(f"scores written to {p.output}", file=env.stderr)
        if stats.failed_total and status in (ExitStatus.OK, ExitStatus.PARTIAL):
            where = f"see {p.errors_path}" if p.errors_path else "pass --errors PATH to keep them"
            print(f"{stats.failed_total:,} IDs were not scored; {where}", file=env.stderr)
    identity = {"model_version": p.info.version, "config_fingerprint": settings.fingerprint}
    try:
        if settings.output.report:
            write_report(
                settings.output.report, stats, p.info.feature_names, status, p.run_id, identity
            )
        if settings.output.metrics:
            write_metrics(settings.output.metrics, stats, status, identity)
    except OSError as exc:
        print(
            f"batchscore: error: cannot write the report or metrics: {exc.strerror}",
            file=env.stderr,
        )


def _identity(p: _Plan) -> dict[str, Any]:
    """What must match for a stopped run's state to be resumed by this one."""
    s = p.settings
    return {
        "input": os.path.abspath(s.input.path) if s.input.path != "-" else "-",
        "model": p.info.version,
        "columns": list(p.columns.names),
        "format": [p.fmt, p.gzip],
        "unordered": s.output.unordered,
        "shard": s.input.shard,
        "dedupe": s.input.dedupe,
    }


async def _run(p: _Plan, env: Environment, stats: RunStats) -> None:
    """The async part of a job: open everything, run the pipeline, commit or keep state."""
    settings = p.settings
    limits = Limits(
        concurrency=settings.fetch.concurrency,
        rate_limit=settings.fetch.rate_limit,
        observe=stats.observe,
    )
    sources = build_sources(settings.sources, limits, settings.fetch, stats)
    shard = parse_shard(settings.input.shard) if settings.input.shard else None
    opened: list[Source] = []
    with ExitStack() as stack:
        stream = open_input(settings.input.path, env, stack)
        items: Iterator[idmod.InputItem] = idmod.read_ids(
            stream,
            idmod.detect_format(settings.input.path, settings.input.format),
            settings.input.id_column,
            settings.input.id_field,
            settings.input.keep,
        )
        try:
            for source in sources:
                await source.open()
                opened.append(source)
            check_coverage(p.model, sources)
            sink = make_sink(p.output, p.fmt, p.gzip, p.columns, settings.output.overwrite, env)
            errors_target = (
                None if p.errors_path is None else make_target(p.errors_path, False, True, env)
            )
            errors = ErrorLog(errors_target)
            state: RunState | None = None
            progress_state = Progress()
            if p.resumable:
                state = RunState(Path(p.output), _identity(p))
                partials = [temp_path(Path(p.output))]
                if isinstance(errors_target, FileTarget):
                    partials.append(errors_target.temp)
                progress_state = await state.open(
                    resume=settings.output.resume,
                    overwrite=settings.output.overwrite,
                    partials=partials,
                )
                stats.restore(progress_state.counters)
            await _score(p, env, stats, sources, sink, errors, state, progress_state, shard, items)
        finally:
            for source in opened:
                await source.close()


async def _score(
    p: _Plan,
    env: Environment,
    stats: RunStats,
    sources: list[Source],
    sink: Sink,
    errors: ErrorLog,
    state: RunState | None,
    previous: Progress,
    shard: tuple[int, int] | None,
    items: Iterator[idmod.InputItem],
) -> None:
    settings = p.settings
    resuming = state is not None and (previous.mark > 0 or previous.output_bytes > 0)
    await sink.open(previous.output_bytes if resuming else None)
    await errors.open(previous.errors_bytes if resuming else None)

    async def checkpoint(mark: int, beyond: frozenset[int]) -> None:
        if state is None:
            return
        out_bytes = await sink.sync()
        err_bytes = await errors.sync()
        lines = {line for line in previous.beyond if line > mark} | set(beyond)
        await state.record(
            Progress(out_bytes, err_bytes, max(mark, previous.mark), lines, stats.counters())
        )

    progress = choose(
        env.stderr,
        quiet=settings.run.quiet,
        interval=settings.run.progress_interval,
        is_tty=env.stderr_isatty,
    )
    pipeline = Pipeline(
        sources=sources,
        model=p.model,
        sink=sink,
        errors=errors,
        progress=progress,
        stats=stats,
        options=PipelineOptions(
            batch_size=settings.score.batch_size,
            linger=settings.score.linger,
            window=settings.output.window,
            unordered=settings.output.unordered,
            allow_empty=settings.score.allow_empty,
            raw_score=settings.score.raw_score,
            explain=settings.score.explain,
            dedupe=settings.input.dedupe,
            shard=shard,
            down_after=settings.fetch.down_after,
            skip=previous.done if resuming else None,
        ),
        checkpoint=checkpoint,
    )
    received: list[signal.Signals] = []
    if env.handle_signals:
        _install_signal_handlers(pipeline, received)
    try:
        await pipeline.run(items)
    except BaseException:
        await sink.abort()
        await errors.abort()
        if state is not None:
            await state.close()
        raise
    finally:
        progress.close(stats)
        if env.handle_signals:
            _remove_signal_handlers()
    if received:
        await sink.abort()
        await errors.abort()
        if state is not None:
            await state.close()
        sig = received[0]
        raise InterruptedRun(sig, stats.done)
    await errors.commit()
    await sink.commit()
    if state is not None:
        await state.remove()


def _install_signal_handlers(pipeline: Pipeline, received: list[signal.Signals]) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if received:  # a second signal: leave at once; committed work stays resumable
            os.write(2, b"batchscore: stopped at once; rerun with --resume to continue\n")
            os._exit(int(ExitStatus.SIGINT if sig == signal.SIGINT else ExitStatus.SIGTERM))
        received.append(sig)
        os.write(2, b"batchscore: stopping: finishing IDs in flight (again to stop at once)\n")
        pipeline.stop()
        loop.call_later(GRACE_SECONDS, pipeline.cancel_in_flight)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)


def _remove_signal_handlers() -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
