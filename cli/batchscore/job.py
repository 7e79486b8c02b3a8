"""One scoring job: Settings in, exit status out.  Builds the parts and runs the pipeline.

Order matters and is part of the contract: the model is checked first, then the config of every
source, then the output path; only then is anything fetched or any output file created.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

from batchscore import ids as idmod
from batchscore.errors import ConfigError, ExitStatus, ModelError, UsageError
from batchscore.model import Model, read_info
from batchscore.pipeline import Pipeline, PipelineOptions, allowed
from batchscore.progress import choose
from batchscore.report import RunStats, as_dict, summary_lines
from batchscore.settings import Settings, parse_shard
from batchscore.sinks import Columns, Sink, output_format
from batchscore.sinks.errorlog import ErrorLog
from batchscore.sinks.files import FileTarget, StdoutTarget
from batchscore.sources import Source, build_sources
from batchscore.sources.limits import Limits

log = logging.getLogger("batchscore")


@dataclass(frozen=True)
class Environment:
    """The process's streams and variables, passed in so tests can swap them."""

    stdin: BinaryIO
    stdout_fd: int
    stderr: TextIO
    stderr_isatty: bool
    environ: Mapping[str, str]


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


def make_sink(
    path: str, fmt: str, gzip: bool, columns: Columns, overwrite: bool, env: Environment
) -> Sink:
    """The sink for an output path and format."""
    from batchscore.sinks.encoders import CsvEncoder, JsonlEncoder
    from batchscore.sinks.files import StreamSink

    if fmt in ("parquet", "sqlite"):
        raise UsageError(f"--format {fmt} is not available yet; use csv or jsonl")
    encoder = CsvEncoder(columns) if fmt == "csv" else JsonlEncoder(columns)
    if path == "-":
        return StreamSink(encoder, StdoutTarget(env.stdout_fd, gzip=gzip))
    return StreamSink(encoder, FileTarget(Path(path), overwrite=overwrite, gzip=gzip))


def run_job(settings: Settings, env: Environment) -> Outcome:
    """Run a scoring job to completion and say how it ended."""
    info = read_info(str(settings.model.path))
    limits_args = {
        "concurrency": settings.fetch.concurrency,
        "rate_limit": settings.fetch.rate_limit,
    }
    stats = RunStats()
    run_id = uuid.uuid4().hex[:12]
    output = expand_path(settings.output.path, run_id, dt.datetime.now())
    fmt, gzip = output_format(output, settings.output.format)
    in_path = settings.input.path
    in_format = idmod.detect_format(in_path, settings.input.format)
    if settings.input.keep and in_format == "text":
        raise UsageError("--keep needs a CSV or JSON-lines input; plain text has only IDs")
    if output != "-" and not Path(output).parent.is_dir():
        raise UsageError(f"the folder for output {output} does not exist; create it first")
    errors_path = settings.output.errors or (None if output == "-" else output + ".errors.jsonl")
    model = Model(info, threads=settings.score.threads)
    columns = Columns(info.score_columns(), settings.input.keep, settings.score.explain)
    shard = parse_shard(settings.input.shard) if settings.input.shard else None
    if in_path != "-" and os.path.isfile(in_path):
        stats.total = idmod.count_lines(in_path)

    async def main() -> None:
        limits = Limits(**limits_args)  # type: ignore[arg-type]
        sources = build_sources(settings.sources, limits, settings.fetch)
        opened: list[Source] = []
        with ExitStack() as stack:
            stream = open_input(in_path, env, stack)
            items: Iterator[idmod.InputItem] = idmod.read_ids(
                stream,
                in_format,
                settings.input.id_column,
                settings.input.id_field,
                settings.input.keep,
            )
            try:
                for source in sources:
                    await source.open()
                    opened.append(source)
                check_coverage(model, sources)
                sink = make_sink(output, fmt, gzip, columns, settings.output.overwrite, env)
                errors = ErrorLog(
                    None
                    if errors_path is None
                    else FileTarget(Path(errors_path), overwrite=True, gzip=False)
                )
                progress = choose(
                    env.stderr,
                    quiet=settings.run.quiet,
                    interval=settings.run.progress_interval,
                    is_tty=env.stderr_isatty,
                )
                pipeline = Pipeline(
                    sources=sources,
                    model=model,
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
                    ),
                )
                await sink.open()
                await errors.open()
                try:
                    await pipeline.run(items)
                except BaseException:
                    await sink.abort()
                    await errors.abort()
                    raise
                finally:
                    progress.close(stats)
                await sink.commit()
                await errors.commit()
            finally:
                for source in opened:
                    await source.close()

    asyncio.run(main())
    status = (
        ExitStatus.OK
        if allowed(stats, settings.run.max_failed, settings.run.max_failed_rate)
        else ExitStatus.PARTIAL
    )
    if not settings.run.quiet:
        for line in summary_lines(stats):
            print(line, file=env.stderr)
        if output != "-":
            print(f"scores written to {output}", file=env.stderr)
        if stats.failed_total:
            where = (
                f"see {errors_path}" if errors_path else "pass --errors PATH to keep their records"
            )
            print(f"{stats.failed_total:,} IDs were not scored; {where}", file=env.stderr)
    if settings.output.report:
        write_report(settings, stats, info.version, info.feature_names, status, run_id)
    return Outcome(status, stats, output)


def write_report(
    settings: Settings,
    stats: RunStats,
    model_version: str,
    features: tuple[str, ...],
    status: ExitStatus,
    run_id: str,
) -> None:
    """The ``--report`` JSON."""
    import orjson

    from batchscore.report import write_atomically

    body = {
        "run_id": run_id,
        "exit_code": int(status),
        "model_version": model_version,
        "config_fingerprint": settings.fingerprint,
        **as_dict(stats, features),
    }
    path = str(settings.output.report)
    try:
        write_atomically(path, orjson.dumps(body, option=orjson.OPT_INDENT_2))
    except OSError as exc:
        raise ConfigError(f"cannot write report {path}: {exc.strerror}") from None
