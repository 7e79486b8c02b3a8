"""One scoring job: Settings in, exit status out.  Builds the parts and runs the pipeline.

Order matters and is part of the contract: the model is checked first, then the config of every
source, then the output (lock, leftovers); only then is anything fetched or any output written.
However the run ends, the summary, ``--report`` and ``--metrics`` say how, and a stopped run's
committed work stays resumable.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import glob
import itertools
import logging
import os
import re
import socket
import stat
import threading
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO, TypeVar

from batchscore import ids as idmod
from batchscore.drift import Baseline, compare, load_baseline
from batchscore.errors import (
    BatchscoreError,
    ExitStatus,
    InterruptedRun,
    ModelError,
    OutputWriteError,
    UsageError,
    status_of,
)
from batchscore.feed import Filters, StallHook, watch_stalls
from batchscore.identity import run_identity
from batchscore.model import ModelSet, read_info, scoring_plan
from batchscore.pipeline import Pipeline, PipelineOptions, allowed, source_columns
from batchscore.progress import ProgressDisplay, choose
from batchscore.report import (
    RunStats,
    counted,
    metrics_text,
    report_body,
    summary_lines,
    write_metrics_text,
    write_report,
)
from batchscore.settings import Settings, audit_columns, parse_shard
from batchscore.signals import Stopper
from batchscore.sinks import EXTENSIONS, Columns, Sink, format_of_name, output_format
from batchscore.sinks.errorlog import ErrorLog, read_errors_file
from batchscore.sinks.files import (
    ByteTarget,
    FileTarget,
    StdoutTarget,
    refuse_existing,
    temp_path,
    write_error,
)
from batchscore.sources import Source, build_sources
from batchscore.sources.input import has_input_source, input_values
from batchscore.sources.limits import Limits
from batchscore.stamps import iso_time
from batchscore.state import (
    DoneRecord,
    LineRanges,
    RunFiles,
    RunLock,
    RunState,
    state_path,
    stopped_run_replaces,
)

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


@dataclass(frozen=True)
class Outcome:
    """How a job ended."""

    status: ExitStatus
    stats: RunStats
    output: str


def expand_path(template: str, run_id: str, day: str) -> str:
    """Expand ``{date}`` (to ``day``, YYYY-MM-DD) and ``{run_id}`` in an output path."""
    return template.replace("{date}", day).replace("{run_id}", run_id)


def unfinished_days(template: str, day: str) -> list[tuple[str, Path]]:
    """Other days' runs of an output path with ``{date}`` that left state (stopped and never
    resumed): their day and their state file, oldest first."""
    if "{date}" not in template or "{run_id}" in template:
        return []
    any_day = "[0-9]" * 4 + "-" + "[0-9]" * 2 + "-" + "[0-9]" * 2

    def as_glob(part: str) -> str:
        return any_day.join(glob.escape(piece) for piece in part.split("{date}"))

    head, tail = os.path.split(template)
    shape = re.compile(r"(\d{4}-\d{2}-\d{2})".join(map(re.escape, template.split("{date}"))))
    found: dict[str, Path] = {}
    for name in glob.glob(os.path.join(as_glob(head), f".{as_glob(tail)}.state")):
        state = Path(name)
        output = os.path.join(os.path.dirname(name), state.name[1 : -len(".state")])
        match = shape.fullmatch(output)
        if match is not None and match.group(1) != day:
            found[match.group(1)] = state
    return sorted(found.items())


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


def load_models(settings: Settings) -> ModelSet:
    """Check every model of the run (safely: see :func:`~batchscore.model.read_info`) and load
    them, sharing one feature matrix."""
    infos = [(m.name, read_info(m.path)) for m in settings.models]
    return ModelSet(infos, threads=scoring_plan(settings.score.threads).threads)


def check_coverage(models: ModelSet, sources: list[Source]) -> None:
    """Every model feature must come from some source, when the sources can tell up front."""
    provided: set[str] = set()
    for source in sources:
        names = source.provides()
        if names is None:
            return
        provided |= names
    missing = [name for name in models.feature_names if name not in provided]
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
    models: ModelSet
    output: str
    fmt: str
    gzip: bool
    errors_path: str | None
    columns: Columns
    run_id: str
    resumable: bool
    done: dict[str, Any] | None = None
    replaces: bool = False
    """``--resume`` of a stopped run started with ``--overwrite``: it replaces the output too."""
    unfinished: list[tuple[str, Path]] = field(default_factory=list)
    """Other days' stopped runs of a ``{date}`` output (their state is still there)."""
    """The record of the completed run that already wrote this output (``--resume``)."""
    baseline: Baseline | None = None
    """``--baseline``'s distributions, read before this run's report can replace the file."""


def plan(settings: Settings) -> _Plan:
    """Check the model, the input options and the output path; nothing is created yet."""
    models = load_models(settings)
    baseline = (
        load_baseline(settings.drift.baseline, settings.output.report)
        if settings.drift.baseline
        else None
    )
    run_id = uuid.uuid4().hex[:12]
    day = settings.output.date or dt.date.today().isoformat()
    output = expand_path(settings.output.path, run_id, day)
    if settings.run.engine == "dask":
        folder = _plan_folder(settings, models, output, run_id)
        folder.baseline = baseline
        return folder
    fmt, gzip = output_format(output, settings.output.format)
    named, _ = format_of_name(output)
    if named is None and not settings.output.format and not is_stream_path(output):
        raise UsageError(
            f"cannot tell the output format of {output} from its name; end it with "
            f"{', '.join(EXTENSIONS)} (optionally .gz), or pass --format"
        )
    if named is not None and settings.output.format and named != settings.output.format:
        log.warning(
            "writing %s into %s, whose name says %s (as --format asked)", fmt, output, named
        )
    in_format = input_format(settings)
    if settings.input.keep and in_format == "text":
        raise UsageError("--keep needs a CSV, TSV or JSON-lines input; plain text has only IDs")
    if has_input_source(settings.sources) and in_format in ("text", "errors"):
        raise UsageError(
            idmod.TEXT_HAS_NO_FEATURES
            if in_format == "text"
            else "--from-errors gives IDs only, and a source of kind input takes features from "
            "the input's columns; score the original input again (its IDs that failed are in "
            "the errors file)"
        )
    if settings.input.header and in_format == "jsonl":
        raise UsageError(
            "--header is for text input; JSON lines have no header line (pass "
            "--input-format text if the input is not JSON lines)"
        )
    if output != "-" and Path(output).is_dir():
        raise UsageError(f"-o {output} is a folder; name a file in it, e.g. {output}/scores.csv")
    if settings.output.resume and "{run_id}" in settings.output.path:
        raise UsageError(
            "an output path with {run_id} names a new file on every run, so --resume can never "
            "continue one; use a fixed name (or {date}, which resumes within the same day)"
        )
    resumable = not is_stream_path(output)
    if resumable and not Path(output).parent.is_dir():
        raise UsageError(f"the folder for output {output} does not exist; create it first")
    errors_path = settings.output.errors or (output + ".errors.jsonl" if resumable else None)
    if errors_path is not None:
        where = Path(errors_path)
        if where.is_dir():
            raise UsageError(f"--errors {errors_path} is a folder; name a file in it")
        if not where.parent.is_dir():
            raise UsageError(
                f"the folder for the errors file {errors_path} does not exist; create it first"
            )
    retry = settings.input.from_errors
    if retry and retry != "-":
        if not Path(retry).is_file():
            raise UsageError(
                f"the --from-errors file {retry} does not exist; pass the OUTPUT.errors.jsonl "
                "of the run to retry"
            )
        if errors_path is not None and Path(retry).resolve() == Path(errors_path).resolve():
            raise UsageError(
                f"--from-errors {retry} is also this run's errors file, which would replace it; "
                "choose another -o (or --errors)"
            )
    columns = output_columns(settings, models, fmt)
    p = _Plan(settings, models, output, fmt, gzip, errors_path, columns, run_id, resumable)
    p.baseline = baseline
    if resumable:
        p.unfinished = unfinished_days(settings.output.path, day)
    try:
        p.done = _check_existing(p)
    except OSError as exc:
        raise write_error(output, exc) from None
    return p


def _plan_folder(settings: Settings, models: ModelSet, output: str, run_id: str) -> _Plan:
    """The plan of a run whose ``-o`` names a folder of part files (``--engine dask``): the
    format from the folder's name (``out/scores.csv``), else ``--format``, else CSV."""
    named, gzip = format_of_name(output)
    fmt = settings.output.format or named or "csv"
    if settings.output.format and named is None:
        gzip = False
    if output == "-" or (is_stream_path(output) and not Path(output).is_dir()):
        raise UsageError(
            "--engine dask writes part files into a folder: pass -o FOLDER (created if missing)"
        )
    if Path(output).exists() and not Path(output).is_dir():
        raise UsageError(
            f"-o {output} is a file; --engine dask writes part files into a folder, so name "
            "a new or empty folder"
        )
    if not Path(output).absolute().parent.is_dir():
        raise UsageError(f"the folder for output {output} does not exist; create it first")
    if settings.output.resume and "{run_id}" in settings.output.path:
        raise UsageError(
            "an output path with {run_id} names a new folder on every run, so --resume can "
            "never continue one; use a fixed name (or {date})"
        )
    columns = output_columns(settings, models, fmt)  # models checked; each worker loads its own
    return _Plan(settings, models, output, fmt, gzip, None, columns, run_id, True)


def _check_existing(p: _Plan) -> dict[str, Any] | None:
    """An existing output is refused (unless --overwrite), except for ``--resume``: a stopped
    run's state may belong to a run that renamed its output already (it is finished when the
    state is opened), and an output that a completed run of the same job wrote from the same
    input makes the run a no-op (its record is returned)."""
    s = p.settings.output
    if not p.resumable or s.overwrite or not Path(p.output).exists():
        return None
    if not s.resume:
        refuse_existing(Path(p.output), overwrite=False)
    if state_path(Path(p.output)).exists():
        p.replaces = stopped_run_replaces(Path(p.output))
        return None
    return _done_record(p).check()


def _done_record(p: _Plan) -> DoneRecord:
    return DoneRecord(Path(p.output), _identity(p), input_path(p.settings), p.settings.fingerprint)


def output_columns(settings: Settings, models: ModelSet, fmt: str) -> Columns:
    """The output's columns for these models and options.

    ``--add model_version`` is a column per named model (``model_version_NAME``); a SQLite
    output always has them (its rows are a prediction log), a Parquet file names the models in
    its metadata.  Two columns with one name are refused here, for every engine.
    """
    smallest = min(len(m.info.features) for m in models.members)
    explain = min(settings.score.explain, smallest)  # no empty explanation columns
    audit: list[str] = []
    requested = audit_columns(settings.output.add)
    if fmt == "sqlite" and "model_version" not in requested:
        requested = ("model_version", *requested)
    for name in requested:
        audit += list(models.version_columns()) if name == "model_version" else [name]
    features: tuple[str, ...] = ()
    if settings.output.with_features:
        features = models.encoder.names
        if len(set(features)) < len(features):
            twice = next(n for n in features if features.count(n) > 1)
            raise UsageError(
                f"--with-features: the models encode feature '{twice}' differently (other "
                "categories), so one column cannot hold what each saw; score them separately"
            )
    columns = Columns(
        models.score_columns,
        settings.input.keep,
        explain,
        features=features,
        audit=tuple(audit),
        explain_prefixes=models.explain_prefixes(),
        models=tuple(models.versions.items()),
    )
    _check_kept_names(columns)
    _check_distinct_names(columns, fmt)
    return columns


def _check_kept_names(columns: Columns) -> None:
    """A kept input column may not share a name with another output column."""
    names = list(columns.names)
    for name in columns.keep:
        if names.count(name) > 1:
            raise UsageError(
                f"--keep {name} would give the output two columns named '{name}'; keep each "
                "column once, and not one named like an output column (id, score, explain_..., "
                "feature_..., model_version, scored_at)"
            )


def _check_distinct_names(columns: Columns, fmt: str) -> None:
    """No two output columns may share a name (a SQLite table's names are compared without
    case): ``-m a=...`` multiclass gives ``score_a_0``, as does ``-m a_0=...``, and ``-m A=``
    beside ``-m a=`` makes two ``score_a`` columns in SQLite.  Refused before any file exists,
    not found by ``CREATE TABLE`` once the run has started."""
    seen: dict[str, str] = {}
    for name in columns.names:
        key = name.casefold() if fmt == "sqlite" else name
        if key in seen:
            same = f"'{name}'" if seen[key] == name else f"'{seen[key]}' and '{name}'"
            raise UsageError(
                f"the output would have two columns named {same}"
                + (" (SQLite compares column names without case)" if seen[key] != name else "")
                + "; rename a model (-m NAME=PATH) or a --keep column so that each is unique"
            )
        seen[key] = name


def input_path(settings: Settings) -> str:
    """Where the IDs come from: the errors file of ``--from-errors``, or IDS."""
    return settings.input.from_errors or settings.input.path


def input_format(settings: Settings) -> str:
    """The input's format (``errors`` for ``--from-errors``)."""
    if settings.input.from_errors:
        return "errors"
    return idmod.detect_format(settings.input.path, settings.input.format)


def run_job(settings: Settings, env: Environment) -> Outcome:
    """Run a scoring job and say how it ended; errors after the start are reported, then raised.

    ``--metrics`` and ``--report`` are written however the run ends, so a monitor never reads
    the status of an older run (a run refused before it started included).
    """
    if settings.run.engine == "dask":
        from batchscore.dask_engine import run_dask_job

        return run_dask_job(settings, env)
    stats = RunStats()
    try:
        p = plan(settings)
    except BatchscoreError as exc:
        # Written if they can be; the refusal is what the user must see.
        _write_outcome_files(settings, stats, exc.exit_status, "", {}, ())
        raise
    if p.done is not None:  # --resume of a job that completed already: nothing to do
        stats.restore(p.done["counters"])
        status = judge_drift(p, stats, _status(None, stats, settings))
        status = _finish(p, env, stats, status, earlier=None)
        return Outcome(status, stats, p.output)
    run = _Run(p, env, stats)
    in_path = input_path(settings)
    if in_path != "-" and os.path.isfile(in_path):
        skipped = idmod.header_lines(input_format(settings), settings.input.header)
        stats.total = max(idmod.count_lines(in_path) - skipped, 0)  # a header is no ID
    lock = _lock(p)
    if lock is not None:
        lock.acquire()
    error: BaseException | None = None
    try:
        asyncio.run(run.run())
    except BaseException as exc:
        error = exc
    finally:
        if lock is not None:
            lock.release()
    status = judge_drift(p, stats, _status(error, stats, settings))
    earlier = (
        "the stopped run had written every row already; its files are now in place"
        if run.finished_earlier
        else None
    )
    status = _finish(p, env, stats, status, earlier=earlier)
    if error is not None:
        raise error
    return Outcome(status, stats, p.output)


def _lock(p: _Plan) -> RunLock | None:
    """The locks on every file the run writes: its output and its errors file (two runs with
    one ``--errors`` would interleave their records)."""
    errors = (
        [(Path(p.errors_path), "--errors")]
        if p.errors_path is not None and not is_stream_path(p.errors_path)
        else []
    )
    if p.resumable:
        return RunLock(Path(p.output), *errors)
    return RunLock(errors[0][0], option="--errors") if errors else None


def _status(error: BaseException | None, stats: RunStats, settings: Settings) -> ExitStatus:
    if error is None:
        ok = allowed(stats, settings.run.max_failed, settings.run.max_failed_rate)
        return ExitStatus.OK if ok else ExitStatus.PARTIAL
    return status_of(error)


def judge_drift(p: _Plan, stats: RunStats, status: ExitStatus) -> ExitStatus:
    """Compare the run's distributions with ``--baseline`` (kept in ``stats.drift`` for the
    summary, report and metrics); a run that would exit 0 exits 5 when a score's PSI is above
    ``--max-drift``.  Its outputs are complete: the scores are right, the world moved."""
    if p.baseline is None or not stats.distributions:
        return status
    stats.drift = compare(stats.distributions, p.baseline)
    limit = p.settings.drift.max_psi
    score_psi = stats.drift.score_psi
    if status == ExitStatus.OK and limit is not None and (score_psi or 0.0) > limit:
        return ExitStatus.DRIFT
    return status


def _finish(
    p: _Plan, env: Environment, stats: RunStats, status: ExitStatus, *, earlier: str | None
) -> ExitStatus:
    """The summary on stderr, the report and the metrics; the run's exit status (74 when a
    finished run's report or metrics cannot be written).  ``earlier``: this run found the work
    done by an earlier one (said first)."""
    settings = p.settings
    finished_earlier = earlier is not None
    started = status not in (ExitStatus.USAGE, ExitStatus.LOCKED)  # those stop before any work
    if p.done is not None and not settings.run.quiet:
        print(
            f"{p.output} is complete already (the same job finished it from the same input at "
            f"{p.done['finished']}: {stats.scored:,} scored, {stats.failed_total:,} failed); "
            "nothing to do",
            file=env.stderr,
        )
    elif started and not settings.run.quiet and status != ExitStatus.PIPE_CLOSED:
        if earlier is not None:
            print(earlier, file=env.stderr)
        for line in summary_lines(stats):
            print(line, file=env.stderr)
        complete = status in (ExitStatus.OK, ExitStatus.PARTIAL, ExitStatus.DRIFT)
        if complete and p.output != "-":
            print(f"scores written to {p.output}", file=env.stderr)
        if stats.failed_total and complete:
            where = f"see {p.errors_path}" if p.errors_path else "pass --errors PATH to keep them"
            were = "was" if stats.failed_total == 1 else "were"
            print(
                f"{counted(stats.failed_total, 'ID')} {were} not scored; {where}", file=env.stderr
            )
        header = _header_taken_for_an_id(settings, stats)
        if header is not None:
            print(
                f"batchscore: warning: line 1 {header!r} was not found and looks like a header, "
                "not an ID: pass --header to skip it (or --input-format csv for a CSV)",
                file=env.stderr,
            )
        if status == ExitStatus.OK and stats.read == 0 and not finished_earlier:
            print(
                "batchscore: warning: the input held no IDs (an empty export upstream?); "
                "pass --min-ids N to make an input with fewer than N IDs exit 2",
                file=env.stderr,
            )
    if status == ExitStatus.PARTIAL and not settings.run.quiet:
        run = settings.run
        allowance = f"--max-failed {run.max_failed}" + (
            f" / --max-failed-rate {run.max_failed_rate:g}" if run.max_failed_rate else ""
        )
        print(
            f"exit 3: {counted(stats.failed_total, 'failed ID')} "
            + ("is" if stats.failed_total == 1 else "are")
            + f" more than {allowance} allows; raise the allowance if "
            + ("it is" if stats.failed_total == 1 else "they are")
            + " expected",
            file=env.stderr,
        )
    if status == ExitStatus.DRIFT and stats.drift is not None and not settings.run.quiet:
        worst = max(stats.drift.scores, key=lambda c: c.psi)
        print(
            f"exit 5: {worst.column} moved from the baseline by PSI {worst.psi:.3f}, more than "
            f"--max-drift {settings.drift.max_psi:g}; the outputs are complete",
            file=env.stderr,
        )
    if started and settings.drift.baseline and p.baseline is None:
        print(  # also under --quiet: the comparison asked for did not happen
            f"batchscore: warning: no baseline at {settings.drift.baseline} yet (the first run "
            "of this job?); nothing compared, this run's report is the next run's baseline",
            file=env.stderr,
        )
    if started and p.unfinished:
        for day, state in p.unfinished:  # also under --quiet: work is waiting
            print(
                f"batchscore: warning: the run for {day} stopped before it finished (its state "
                f"{state} is still there); resume it with --date {day} --resume",
                file=env.stderr,
            )
    identity = {**_model_identity(p.models), "config_fingerprint": settings.fingerprint}
    unfinished = [{"date": day, "state": str(state)} for day, state in p.unfinished]
    notes = {
        **_run_facts(settings, stats, p.output, p.errors_path),
        **({"unfinished_runs": unfinished} if unfinished else {}),
    }
    features = _feature_lists(p.models)
    kept = p.done.get("monitoring") if p.done is not None else None
    noop = isinstance(kept, dict)
    if isinstance(kept, dict):  # a no-op: the figures of the run that wrote the output
        body = {**kept["report"], "noop": True, "noop_at": iso_time()}
        text = str(kept["metrics"])
    else:
        body = report_body(stats, features, status, p.run_id, identity | notes)
        text = metrics_text(stats, status, identity)
        local = settings.run.engine == "local"  # a Dask folder keeps its own record
        if p.done is None and p.resumable and settings.output.resume and local:
            _done_record(p).attach({"report": body, "metrics": text})
    failures = _write_monitoring(settings, body, text, noop=noop)
    if failures and status in (ExitStatus.OK, ExitStatus.PARTIAL):
        # The output is complete, but a monitor reading the metrics would see an older run:
        # that is output that cannot be written.  What could be written says 74 too.
        status = ExitStatus.CANT_WRITE
        if not noop:
            body = report_body(stats, features, status, p.run_id, identity | notes)
            _write_monitoring(settings, body, metrics_text(stats, status, identity))
        failures = [f"{f}; the output is complete, only this file is missing" for f in failures]
    for failure in failures:
        print(f"batchscore: error: {failure}", file=env.stderr)
    return status


def _model_identity(models: ModelSet) -> dict[str, Any]:
    """The models in the report and metrics: ``model_version`` (``NAME=VERSION,...`` for named
    models: one metrics label) and, per model, its name, path and version."""
    listed = [
        {"name": m.name, "path": m.info.path, "version": m.info.version} for m in models.members
    ]
    return {"model_version": models.version_label, "models": listed}


def _feature_lists(models: ModelSet) -> list[tuple[str, tuple[str, ...]]]:
    """Each model's name and features, in its order (the report's data quality per model)."""
    return [(m.name, m.info.feature_names) for m in models.members]


def _header_taken_for_an_id(settings: Settings, stats: RunStats) -> str | None:
    """The first line of a plain text input, when it reads like a column name and no source
    found it (``cut -d, -f1 file.csv`` keeps the header): only a warning, since an ID may
    look like anything."""
    s = settings.input
    if s.header or idmod.detect_format(s.path, s.format) != "text" or not stats.first_failures:
        return None
    first = stats.first_failures[0]
    if first.line != 1 or first.reason != "not_found" or first.id is None:
        return None
    return first.id if idmod.looks_like_header(first.id, (s.id_column, s.id_field)) else None


def _write_outcome_files(
    settings: Settings,
    stats: RunStats,
    status: ExitStatus,
    run_id: str,
    identity: dict[str, Any],
    features: Sequence[tuple[str, Sequence[str]]],
    notes: dict[str, Any] | None = None,
) -> list[str]:
    """``--report`` (with ``notes``) and ``--metrics``, if asked for (see
    :func:`_write_monitoring`)."""
    facts = _run_facts(settings, stats, settings.output.path, settings.output.errors)
    body = report_body(stats, features, status, run_id, {**identity, **facts, **(notes or {})})
    return _write_monitoring(settings, body, metrics_text(stats, status, identity))


def _write_monitoring(
    settings: Settings, body: dict[str, Any], text: str, noop: bool = False
) -> list[str]:
    """Write the report ``body`` and the metrics ``text`` where the settings ask, each whatever
    became of the other; a message for each that could not be written, naming it and why."""
    failures = []
    report, metrics = settings.output.report, settings.output.metrics
    if report:
        try:
            write_report(report, body)
        except OSError as exc:
            failures.append(f"cannot write the --report file {report}: {exc.strerror or exc}")
    if metrics:
        try:
            write_metrics_text(metrics, text, noop=noop)
        except OSError as exc:
            failures.append(f"cannot write the --metrics file {metrics}: {exc.strerror or exc}")
    return failures


def _run_facts(
    settings: Settings, stats: RunStats, output: str, errors: str | None
) -> dict[str, Any]:
    """What an on-call reader of the report looks for first: which files, when, where, which
    batchscore.  Paths pass through :func:`~batchscore.redact.redact` (a URL-like path may
    hold a token)."""
    from batchscore import __version__
    from batchscore.redact import redact

    def shown(path: str) -> str:
        return redact(path if path == "-" else os.path.abspath(path))

    return {
        "input": shown(input_path(settings)),
        "output": shown(output),
        "errors": shown(errors) if errors else None,
        "started_at": iso_time(stats.started_at),
        "ended_at": iso_time(),
        "host": socket.gethostname(),
        "batchscore_version": __version__,
        "noop": False,
    }


def _identity(p: _Plan) -> dict[str, Any]:
    """What must match for a stopped run's state to be resumed by this one."""
    return run_identity(
        p.settings,
        input_path=input_path(p.settings),
        input_format=input_format(p.settings),
        models=p.models,
        columns=p.columns,
        fmt=p.fmt,
        gzip=p.gzip,
        errors_path=p.errors_path,
    )


class _Run:
    """The async part of one job: open everything, run the pipeline, commit or keep state."""

    def __init__(self, p: _Plan, env: Environment, stats: RunStats) -> None:
        self.p = p
        self.env = env
        self.stats = stats
        self.settings = p.settings
        self.limits = Limits.of(self.settings.fetch, stats.observe, stats.limit_changed)
        self.stopper = Stopper()
        self.finished_earlier = False  # --resume found a complete run: only renames were left

    async def run(self) -> None:
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
            if source_path == "-" and _is_terminal(self.env.stdin):
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
            items: Iterator[idmod.InputItem] = await reading
            self.stopper.cancel_on_signal(None)
            await open_sources(p.models, sources, stack)
            files = await stack.enter_async_context(self._files())  # closed on every path
            previous = await files.open(
                resume=settings.output.resume, overwrite=settings.output.overwrite
            )
            if previous.complete:
                await files.finish()
                self.stats.restore(previous.counters)
                self.finished_earlier = True
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
            state=RunState(Path(p.output), _identity(p), replaces=settings.output.overwrite)
            if p.resumable
            else None,
            output_partial=temp_path(Path(p.output)) if p.resumable else None,
            errors_partial=errors_target.temp if isinstance(errors_target, FileTarget) else None,
            done=_done_record(p) if p.resumable and settings.output.resume else None,
        )


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
    items: Iterator[idmod.InputItem],
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
    values: idmod.ChooseValues | None = None,
    left_out: Counter[str] | None = None,
) -> Iterator[idmod.InputItem]:
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
    held: list[idmod.InputItem] = []
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
            if isinstance(item, idmod.IdRow):
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
    values: idmod.ChooseValues | None = None,
    left_out: Counter[str] | None = None,
) -> Iterator[idmod.InputItem]:
    s = settings.input
    if s.from_errors:
        return read_errors_file(stream, s.keep, s.reason, left_out)
    fmt = input_format(settings)
    return idmod.read_ids(stream, fmt, s.id_column, s.id_field, s.keep, s.header, values)


def _ids_of(items: Iterator[idmod.InputItem]) -> Iterator[idmod.IdRow]:
    return (item for item in items if isinstance(item, idmod.IdRow))


def _readable(stream: BinaryIO) -> bool:
    """Whether ``stream`` can be read: False for a descriptor open for writing only, which is
    what a closed stdin becomes (``batchscore.__main__``)."""
    try:
        mode = fcntl.fcntl(stream.fileno(), fcntl.F_GETFL) & os.O_ACCMODE
    except (AttributeError, ValueError, OSError):  # no descriptor: an in-memory stream
        return True
    return mode != os.O_WRONLY


def _is_terminal(stream: BinaryIO) -> bool:
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
