"""One partition of a ``--engine dask`` run, on a worker: consecutive lines of the input scored
by the same pipeline as a local run (:func:`batchscore.scoring.score_into`), into a part file.

What every partition of a run shares (the settings, the model's bytes, the output columns) is
sent to each worker process once, as a Dask worker plugin (:class:`JobPlugin`); a task carries
only its :class:`Partition` (which lines, where they are in the file).  The plugin's repr never
shows the settings, so a source's token or password cannot reach a Dask log, a dashboard or a
task's repr; the worker registers those secrets with :mod:`batchscore.redact` before anything
can print them, and a task returns its error as a redacted one-line message instead of raising
it (a raised error would be logged by Dask with its traceback).

A partition's files appear atomically, last of all the part itself:

1. the pipeline writes ``.part-NNNNN.EXT.<attempt>.tmp`` and its errors file beside it (each
   through the sinks' own temporary names; ``<attempt>`` is new for every attempt, so a
   re-run of a lost worker's partition never writes into a file another attempt still holds);
2. ``.part-NNNNN.EXT.done`` records the partition's lines and counts;
3. the errors file is renamed to ``errors-NNNNN.jsonl``, then the part to
   ``part-NNNNN.EXT``.

So a part file that exists is complete, and its counts and errors are there: ``--resume``
skips it.  A re-run replaces a part as a whole, so every ID is in exactly one part however
often its partition ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import orjson
from distributed import WorkerPlugin, get_worker

from batchscore import ids as idmod
from batchscore.atomic import fsync_folder, write_atomically
from batchscore.errors import BatchscoreError, ExitStatus
from batchscore.idrows import ChooseValues
from batchscore.model import ModelSet, read_info
from batchscore.redact import (
    RedactingFormatter,
    format_exception,
    redact,
    register_secrets,
    register_sources,
)
from batchscore.report import RunStats
from batchscore.settings import Settings
from batchscore.sinks import Columns
from batchscore.sinks.errorlog import ErrorLog
from batchscore.sinks.files import FileTarget
from batchscore.sources.build import build_sources
from batchscore.sources.configs import secret_tables
from batchscore.sources.input import input_values
from batchscore.sources.limits import Limits
from batchscore.sources.retry import SourceHealth
from batchscore.state import RunFiles


@dataclass(frozen=True)
class Partition:
    """Input lines ``first_line`` to ``last_line`` (as an editor numbers them), which are bytes
    ``start`` to ``end`` of the input file."""

    index: int
    first_line: int
    last_line: int
    start: int
    end: int


def part_name(index: int, ext: str) -> str:
    """``part-00007.csv``: five digits, so a plain sort lists the parts in input order."""
    return f"part-{index:05d}.{ext}"


def errors_name(index: int) -> str:
    """The errors file beside a part: ``errors-00007.jsonl`` (not ``part-...``, so that a
    ``part-*.jsonl`` glob finds the parts alone)."""
    return f"errors-{index:05d}.jsonl"


def done_name(part: str) -> str:
    """The record of a finished partition, written just before its part appears."""
    return f".{part}.done"


@dataclass(frozen=True)
class Job:
    """What every partition of one run shares."""

    run_id: str
    settings: Settings  # paths made absolute; score.threads set for one core per task
    models: tuple[tuple[str, bytes, str], ...]  # per model: name, booster file, version
    columns: Columns
    input_path: str  # absolute
    input_format: str
    header: bytes | None  # a CSV/TSV input's header line, given to every partition
    folder: str  # absolute
    fmt: str
    gzip: bool
    ext: str
    topic: str  # the Dask event topic the partitions' progress goes to
    header_at: int = 0  # a text input's --header line, skipped by the partition holding it
    input_fields: tuple[str, ...] | None = None  # what an input source chose its columns from

    def __repr__(self) -> str:
        # Never the settings: they hold the sources' secrets.
        return f"<batchscore job {self.run_id}: {self.input_path} -> {self.folder}>"


class JobPlugin(WorkerPlugin):
    """Puts a :class:`Job` on every worker process (also those that join or restart later)
    and loads its model there once, for every task of the run."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.name = plugin_name(job.run_id)
        self._models: ModelSet | None = None
        self._lock = threading.Lock()
        self._folder: str | None = None

    def __repr__(self) -> str:
        return f"<JobPlugin {self.job!r}>"

    def __getstate__(self) -> dict[str, Any]:
        return {"job": self.job, "name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.job = state["job"]
        self.name = state["name"]
        self._models = None
        self._lock = threading.Lock()
        self._folder = None

    def setup(self, worker: Any) -> None:
        """Register the run's secrets before anything on this worker can print them; send
        batchscore's log lines through the redacting formatter."""
        register_sources(secret_tables(self.job.settings.sources))
        register_secrets(self.job.settings.secrets)
        logger = logging.getLogger("batchscore")
        if not any(isinstance(h.formatter, RedactingFormatter) for h in logger.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(
                RedactingFormatter("batchscore (worker): %(levelname)s %(name)s: %(message)s")
            )
            logger.addHandler(handler)
            logger.propagate = False
        run = self.job.settings.run
        logger.setLevel(
            logging.DEBUG if run.debug else logging.ERROR if run.quiet else logging.WARNING
        )

    def teardown(self, worker: Any) -> None:
        """The run is over: drop the models and their files."""
        self._models = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)

    def models(self) -> ModelSet:
        """The run's models, loaded once per worker process (tasks run in several threads)."""
        with self._lock:
            if self._models is None:
                self._folder = tempfile.mkdtemp(prefix="batchscore-model-")
                infos = []
                for i, (name, text, version) in enumerate(self.job.models):
                    path = os.path.join(self._folder, f"model-{i}.txt")
                    with open(path, "wb") as f:
                        f.write(text)
                    info = read_info(path)
                    if info.version != version:  # pragma: no cover - a bug
                        raise RuntimeError("a model's bytes changed on their way to the worker")
                    infos.append((name, info))
                self._models = ModelSet(infos, threads=self.job.settings.score.threads or 0)
            return self._models


def dask_setup(worker: Any) -> None:
    """Dask's preload hook, run in each worker process of this run's own local cluster as it
    starts: the worker ignores SIGINT.  A Ctrl-C at a terminal reaches the whole process group,
    the workers too; the driver handles it (it stops the cluster, its workers with it), while a
    worker that took it printed a KeyboardInterrupt traceback of its own over the summary."""
    del worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def plugin_name(run_id: str) -> str:
    """The worker plugin's name for a run."""
    return f"batchscore-{run_id}"


class SourceTally(NamedTuple):
    """How one source fared in a partition (its :class:`SourceHealth` at the end): answers,
    failures in a row, and the reason of the last failure."""

    answers: int
    failures: int
    reason: str


def left_failing(health: dict[str, SourceTally]) -> bool:
    """Whether a source was failing as the partition ended (its last attempts failed in a row:
    down while it ran, or as it went down).  Such a part is set aside: a stopped run removes
    it, so that ``--resume`` fetches its IDs again instead of keeping them as failures."""
    return any(tally.failures for tally in health.values())


@dataclass
class PartResult:
    """How a partition ended: ``status`` 0 (its part is written) or the exit status of the
    error that stopped it, with that error's message (secrets masked), and what it counted."""

    index: int
    status: int
    message: str
    stats: RunStats
    health: dict[str, SourceTally] = field(default_factory=dict)
    """Per source that counts failures in a row: attempts it answered, the failed attempts
    in a row it ended with, and the last one's reason.  A partition's own count starts at 0,
    so the driver joins them: a source down across many small partitions is down."""


def run_partition(plugin: str, part: Partition) -> PartResult:
    """The Dask task: score one partition into its part file."""
    worker = get_worker()
    job_plugin = worker.plugins[plugin]
    assert isinstance(job_plugin, JobPlugin)
    job = job_plugin.job
    stats = RunStats()
    health: dict[str, SourceTally] = {}
    status, message = ExitStatus.OK, ""
    try:
        models = job_plugin.models()
        progress = _Publisher(worker, job.topic, part.index)
        progress.started()
        asyncio.run(_score_partition(job, models, part, stats, progress, health))
    except BatchscoreError as exc:
        status, message = exc.exit_status, redact(exc.message)
    except Exception as exc:  # a bug: said by the driver, never logged here with its args
        status = ExitStatus.INTERNAL
        message = (
            format_exception(exc)
            if job.settings.run.debug
            else redact(f"{type(exc).__name__}: {exc}")
        )
    stats.seconds = defaultdict(float, stats.seconds)  # picklable (no lambda factory)
    return PartResult(part.index, int(status), message, stats, health)


class _Publisher:
    """The partition's news to the driver's one display, as a Dask event: that it started (the
    driver names the partitions a stop drops).  Its rows are not news until its part is
    committed: the driver counts a partition from its result, so that the display never shows
    rows a stop would throw away."""

    def __init__(self, worker: Any, topic: str, index: int) -> None:
        self.worker = worker
        self.topic = topic
        self.index = index
        self.attempt = uuid.uuid4().hex[:8]

    def started(self) -> None:
        """Say that this attempt of the partition runs."""
        self.worker.log_event(self.topic, {"part": self.index, "attempt": self.attempt})

    def update(self, stats: RunStats) -> None:
        """Nothing: see the class."""

    def stopping(self, message: str) -> None:
        """Nothing: a partition is stopped by its driver, which says so."""

    def close(self, stats: RunStats) -> None:
        """Nothing: the task's result carries the final counts."""


class _Lines:
    """The lines of one partition of a file (bytes ``start`` to ``end``), after ``header``."""

    def __init__(self, file: BinaryIO, part: Partition, header: bytes | None) -> None:
        self.file = file
        self.part = part
        self.header = header

    def __iter__(self) -> Iterator[bytes]:
        if self.header is not None:
            yield self.header
        self.file.seek(self.part.start)
        left = self.part.end - self.part.start
        for line in self.file:
            if left <= 0:
                break
            left -= len(line)
            yield line if left >= 0 else line[:left]


def _environment() -> Any:
    """The Environment a sink factory asks for; a partition never writes to a stream."""
    from batchscore.scoring import Environment

    return Environment(
        stdin=io.BytesIO(),
        stdout_fd=-1,
        stderr=sys.stderr,
        stderr_isatty=False,
        environ={},
    )


async def _score_partition(
    job: Job,
    models: ModelSet,
    part: Partition,
    stats: RunStats,
    progress: _Publisher,
    health: dict[str, SourceTally],
) -> None:
    from batchscore.scoring import Work, make_sink, open_sources, score_into

    settings = job.settings
    folder = Path(job.folder)
    name = part_name(part.index, job.ext)
    attempt = progress.attempt
    staged = folder / f".{name}.{attempt}.tmp"
    staged_errors = folder / f".{errors_name(part.index)}.{attempt}.tmp"
    limits = Limits.of(settings.fetch, stats.observe, stats.limit_changed)
    sources = build_sources(settings.sources, limits, settings.fetch, stats)
    async with contextlib.AsyncExitStack() as stack:
        # Opened here, read by the pipeline's reader thread (the job's reader is blocking).
        file = stack.enter_context(open(job.input_path, "rb"))  # noqa: ASYNC230, SIM115
        header = job.header is not None
        items = idmod.read_ids(
            _Lines(file, part, job.header),
            job.input_format,
            settings.input.id_column,
            settings.input.id_field,
            settings.input.keep,
            # A CSV or TSV partition has the header line if the file has one (--no-header:
            # none).  The text reader skips the first non-blank line: the header, where it is
            # in this partition (only blank lines come before it in the file).
            header=header
            if job.input_format in ("csv", "tsv")
            else part.first_line <= job.header_at <= part.last_line,
            values=_chosen_columns(job, sources, models),
            start=part.first_line - 1 if header else part.first_line,
            whole=False,
        )
        await open_sources(models, sources, stack)
        files = RunFiles(
            sink=make_sink(str(staged), job.fmt, job.gzip, job.columns, True, _environment()),
            errors=ErrorLog(
                FileTarget(staged_errors, overwrite=True, gzip=False), settings.input.keep
            ),
            state=None,
            output_partial=None,
            errors_partial=None,
        )
        await stack.enter_async_context(files)  # closed on every path
        await files.open(resume=False, overwrite=True)
        try:
            await score_into(
                Work(settings, models, job.columns),
                sources,
                files,
                items,
                stats=stats,
                limits=limits,
                progress=progress,
            )
            for source in sources:
                if isinstance(h := getattr(source, "health", None), SourceHealth):
                    health[source.name] = SourceTally(h.answers, h.failures, h.last_reason)
            record = {
                "index": part.index,
                "first_line": part.first_line,
                "last_line": part.last_line,
                "model_versions": [version for _, _, version in job.models],
                "counters": stats.counters(),
                # A source was failing as it ended (down): --resume runs it again.
                "dead": left_failing(health),
            }
            await asyncio.to_thread(
                _publish, folder, part.index, name, staged, staged_errors, record
            )
        finally:
            # A partition that stopped leaves nothing behind: a partition has no --resume of
            # its own (the sinks' temporary files too: ``.<staged>.partial``).
            for leftover in (
                staged,
                staged_errors,
                staged.with_name(f".{staged.name}.partial"),
                staged_errors.with_name(f".{staged_errors.name}.partial"),
            ):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()


def _chosen_columns(job: Job, sources: list[Any], models: ModelSet) -> ChooseValues | None:
    """The columns an input source carries, as the driver chose them from the input as a whole
    (:attr:`Job.input_fields`), chosen now: before the chunks are cut, which carry them.  (A
    JSON-lines reader would choose them lazily, from this partition's first line with an ID.)"""
    id_name = idmod.id_key(
        job.input_format, job.settings.input.id_column, job.settings.input.id_field
    )
    choose = input_values(sources, id_name, models.feature_names)
    if choose is None or job.input_fields is None:
        return choose
    chosen = tuple(choose(job.input_fields, "the input"))

    def as_chosen(fields: Sequence[str], what: str) -> Sequence[str]:
        return chosen

    return as_chosen


def _publish(
    folder: Path, index: int, name: str, staged: Path, staged_errors: Path, record: dict[str, Any]
) -> None:
    """Steps 2 and 3: the done record, the errors file, then the part (see the module)."""
    write_atomically(folder / done_name(name), orjson.dumps(record))
    os.replace(staged_errors, folder / errors_name(index))
    os.replace(staged, folder / name)
    fsync_folder(folder)


__all__ = [
    "Job",
    "JobPlugin",
    "PartResult",
    "Partition",
    "done_name",
    "errors_name",
    "part_name",
    "plugin_name",
    "run_partition",
]
