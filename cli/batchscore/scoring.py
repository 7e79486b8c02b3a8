"""The scoring pass every engine runs on its share of the input, and what it reads and writes.

:func:`score_into` runs the pipeline (fetch, score, write, commit) over one stream of input
items into one set of run files; the local engine gives it the whole input, a Dask task one
partition.  Also here: the process's streams (:class:`Environment`), opening the input, reading
its header and first rows (:func:`read_input`), and making a sink for an output path.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import os
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO, TypeVar

from batchscore import idrows
from batchscore import ids as idmod
from batchscore.assembly import source_columns
from batchscore.errors import (
    InterruptedRun,
    OutputWriteError,
    UsageError,
)
from batchscore.feed import Filters, StallHook
from batchscore.model import ModelSet, scoring_plan
from batchscore.pipeline import Pipeline, PipelineOptions
from batchscore.plan import (
    check_coverage,
    input_format,
    input_path,
    is_stream_path,
)
from batchscore.progress import ProgressDisplay
from batchscore.report import RunStats
from batchscore.resolving import parse_shard
from batchscore.settings import Settings
from batchscore.signals import Stopper
from batchscore.sinks import Columns, Sink
from batchscore.sinks.errorlog import read_errors_file
from batchscore.sinks.files import (
    ByteTarget,
    FileTarget,
    StdoutTarget,
)
from batchscore.sources import Source
from batchscore.sources.limits import Limits
from batchscore.state import (
    LineRanges,
    RunFiles,
)
from batchscore.wording import counted

log = logging.getLogger("batchscore")

T = TypeVar("T")


@dataclass(frozen=True)
class Environment:
    """The process's streams and variables, passed in so tests can swap them."""

    stdin: BinaryIO
    stdout_fd: int
    stderr: TextIO
    stderr_isatty: bool
    environ: Mapping[str, str]
    handle_signals: bool = False


def open_input(
    path: str, env: Environment, stack: contextlib.AsyncExitStack[bool | None]
) -> BinaryIO:
    """The ID input as a binary stream (stdin for ``-``)."""
    if path == "-":
        if not _readable(env.stdin):
            raise UsageError(
                "the IDs are read from stdin (IDS is - or not given), but stdin is closed; "
                "pass the ID file as IDS, or pipe the IDs in"
            )
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


@dataclass(frozen=True)
class Work:
    """What scoring an input needs whatever runs it (this process, or a Dask task on a
    worker): the settings, the loaded model and the output columns."""

    settings: Settings
    models: ModelSet
    columns: Columns

    def options(self, committed: LineRanges | None) -> PipelineOptions:
        """The pipeline's options; ``committed``: input lines an earlier run wrote already."""
        settings = self.settings
        return PipelineOptions(
            batch_size=settings.score.batch_size,
            window=settings.output.window,
            workers=scoring_plan(settings.score.threads).workers,
            unordered=settings.output.unordered,
            allow_empty=settings.score.allow_empty,
            raw_score=settings.score.raw_score,
            explain=self.columns.explain,
            keep=bool(settings.input.keep),
            with_features=bool(self.columns.features),
            audit=self.columns.audit,
            filters=Filters(
                committed=committed.__contains__ if committed else None,
                shard=parse_shard(settings.input.shard) if settings.input.shard else None,
                dedupe=settings.input.dedupe,
            ),
        )


async def open_sources(
    models: ModelSet, sources: list[Source], stack: contextlib.AsyncExitStack[bool | None]
) -> None:
    """Open every source (closed with ``stack``) and check them against the models: every
    model feature provided, no feature claimed by two sources (before any output file)."""
    for source in sources:
        await source.open()
        stack.push_async_callback(source.close)
    check_coverage(models, sources)
    source_columns(sources, models.feature_names)


async def score_into(
    work: Work,
    sources: list[Source],
    files: RunFiles,
    items: Iterator[idrows.InputItem],
    *,
    stats: RunStats,
    limits: Limits,
    progress: ProgressDisplay,
    committed: LineRanges | None = None,
    stall: StallHook | None = None,
    stopper: Stopper | None = None,
    before_commit: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Score ``items`` into ``files`` (opened) and commit them: the one scoring pass that
    every engine runs (a local run over its whole input, a Dask task over one partition).

    ``stopper`` (a local run's signals) may stop the pass: then nothing more is committed and
    :class:`InterruptedRun` is raised.  ``before_commit`` runs after the last row is written,
    before the files are committed (a partition records its counts there).
    """

    async def checkpoint(written: LineRanges) -> None:
        await files.checkpoint(written, stats.counters())

    pipeline = Pipeline(
        sources=sources,
        models=work.models,
        sink=files.sink,
        errors=files.errors,
        progress=progress,
        stats=stats,
        options=work.options(committed),
        checkpoint=checkpoint,
    )
    if stopper is not None:
        stopper.watch(pipeline, limits, progress)
    ticking = asyncio.create_task(_tick(progress, stats))
    try:
        await pipeline.run(items, stall)
        if stopper is not None and stopper.received is not None:
            raise InterruptedRun(stopper.received, stats.done)
        if before_commit is not None:
            await before_commit()
        await files.commit(pipeline.writer.written, stats.counters())
    except BaseException:
        await files.abort()
        raise
    finally:
        ticking.cancel()
        progress.close(stats)


TICK_SECONDS = 0.25
"""How often the display is refreshed when nothing completes (a slow source, retries, the
grace after a stop): it keeps moving, and shows retries as they happen."""


async def _tick(progress: ProgressDisplay, stats: RunStats) -> None:
    while True:
        await asyncio.sleep(TICK_SECONDS)
        progress.update(stats)


def read_input(
    settings: Settings,
    stream: Iterable[bytes],
    values: idrows.ChooseValues | None = None,
    left_out: Counter[str] | None = None,
) -> Iterator[idrows.InputItem]:
    """The input's items, its header and first rows checked; ``--min-ids`` enforced.

    Blocking (a CSV header, the rows that tell a wrong option from bad data, ``--min-ids``
    IDs are read here): run it off the event loop.  ``left_out``: counts, by reason, the
    ``--from-errors`` records that ``--reason`` leaves out.
    """
    items = _items(stream, settings, values, left_out)
    minimum = settings.input.min_ids
    if not minimum:
        return items
    path = input_path(settings)
    held: list[idrows.InputItem] = []
    if path != "-" and os.path.isfile(path):
        # A regular file is counted in a pass of its own: nothing is held in memory.
        with open(path, "rb") as again:
            rows = _items(again, settings, values)
            found = sum(1 for _ in itertools.islice(_ids_of(rows), minimum))
    else:
        # A stream cannot be read twice: the rows up to the minimum wait in memory.
        found = 0
        for item in items:
            held.append(item)
            if isinstance(item, idrows.IdRow):
                found += 1
                if found >= minimum:
                    break
    if found < minimum:
        raise UsageError(
            f"the input held {counted(found, 'ID')}, fewer than --min-ids {minimum:,} "
            "(an empty or truncated export upstream?)"
        )
    return itertools.chain(held, items)


def _items(
    stream: Iterable[bytes],
    settings: Settings,
    values: idrows.ChooseValues | None = None,
    left_out: Counter[str] | None = None,
) -> Iterator[idrows.InputItem]:
    s = settings.input
    if s.from_errors:
        return read_errors_file(stream, s.keep, s.reason, left_out)
    fmt = input_format(settings)
    return idmod.read_ids(stream, fmt, s.id_column, s.id_field, s.keep, s.header, values)


def _ids_of(items: Iterator[idrows.InputItem]) -> Iterator[idrows.IdRow]:
    return (item for item in items if isinstance(item, idrows.IdRow))


def _readable(stream: BinaryIO) -> bool:
    """Whether ``stream`` can be read: False for a descriptor open for writing only, which is
    what a closed stdin becomes (``batchscore.__main__``)."""
    try:
        mode = fcntl.fcntl(stream.fileno(), fcntl.F_GETFL) & os.O_ACCMODE
    except (AttributeError, ValueError, OSError):  # no descriptor: an in-memory stream
        return True
    return mode != os.O_WRONLY


def is_terminal(stream: BinaryIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def in_daemon_thread(function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """``function(*args)`` in a daemon thread, as a future (cancellable, unlike ``to_thread``:
    a thread blocked on a silent pipe must neither hold up a stop nor the process's exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = function(*args)
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                loop.call_soon_threadsafe(settle, None, exc)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="batchscore-open-input", daemon=True).start()
    return future
