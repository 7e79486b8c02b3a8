"""The plan of a run: everything decided before work starts, in one frozen record.

:func:`make_plan` reads the settings once (the model, the input's format, the output's path,
format, layout and columns, the run identity, an earlier run of the same job) and makes every
refusal that can be made before anything is created.  The lifecycle and both engines read the
:class:`Plan`; none of them changes it.
"""

from __future__ import annotations

import datetime as dt
import glob
import logging
import os
import re
import stat
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from batchscore import ids as idmod
from batchscore.done import DoneRecord
from batchscore.drift import Baseline, load_baseline
from batchscore.errors import ModelError, UsageError
from batchscore.identity import run_identity
from batchscore.model import ModelSet, read_info, scoring_plan
from batchscore.resolving import audit_columns
from batchscore.settings import Settings
from batchscore.sinks import EXTENSIONS, Columns, format_of_name, output_format
from batchscore.sinks.files import refuse_existing, write_error
from batchscore.sources import Source
from batchscore.sources.configs import InputConfig
from batchscore.state import state_path, stopped_run_replaces

log = logging.getLogger("batchscore")


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


@dataclass(frozen=True)
class Plan:
    """Everything decided before a run's work starts, built once by :func:`make_plan` and read
    by the lifecycle and either engine; nothing changes it afterwards."""

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
    unfinished: tuple[tuple[str, Path], ...] = ()
    """Other days' stopped runs of a ``{date}`` output (their state is still there)."""
    """The record of the completed run that already wrote this output (``--resume``)."""
    baseline: Baseline | None = None
    """``--baseline``'s distributions, read before this run's report can replace the file."""


def make_plan(settings: Settings) -> Plan:
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
        return _plan_folder(settings, models, output, run_id, baseline)
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
    if any(isinstance(c, InputConfig) for c in settings.sources) and in_format in (
        "text",
        "errors",
    ):
        raise UsageError(
            idmod.TEXT_HAS_NO_FEATURES
            if in_format == "text"
            else "--from-errors gives IDs only, and a source of kind input takes features from "
            "the input's columns; score the original input again (its IDs that failed are in "
            "the errors file)"
        )
    if settings.input.header and in_format == "jsonl":
        # (--no-header says what JSON lines are anyway: accepted.)
        raise UsageError(
            "--header is for text, CSV or TSV input; JSON lines have no header line (pass "
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
    p = Plan(
        settings,
        models,
        output,
        fmt,
        gzip,
        errors_path,
        columns,
        run_id,
        resumable,
        baseline=baseline,
        unfinished=tuple(unfinished_days(settings.output.path, day)) if resumable else (),
    )
    try:
        done, replaces = _check_existing(p)
    except OSError as exc:
        raise write_error(output, exc) from None
    return replace(p, done=done, replaces=replaces)


def _plan_folder(
    settings: Settings, models: ModelSet, output: str, run_id: str, baseline: Baseline | None
) -> Plan:
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
    # Its errors: one file per part (the summary's "see ..." names them all).
    errors = os.path.join(output, "errors-*.jsonl")
    return Plan(
        settings, models, output, fmt, gzip, errors, columns, run_id, True, baseline=baseline
    )


def _check_existing(p: Plan) -> tuple[dict[str, Any] | None, bool]:
    """An existing output is refused (unless --overwrite), except for ``--resume``: a stopped
    run's state may belong to a run that renamed its output already (it is finished when the
    state is opened), and an output that a completed run of the same job wrote from the same
    input makes the run a no-op (its record is returned).  Also: whether a stopped run being
    resumed was started with ``--overwrite``."""
    s = p.settings.output
    if not p.resumable or s.overwrite or not Path(p.output).exists():
        return None, False
    if not s.resume:
        refuse_existing(Path(p.output), overwrite=False)
    if state_path(Path(p.output)).exists():
        return None, stopped_run_replaces(Path(p.output))
    return done_record(p).check(), False


def done_record(p: Plan) -> DoneRecord:
    """The record a completed run of this plan leaves beside its output."""
    return DoneRecord(
        Path(p.output), plan_identity(p), input_path(p.settings), p.settings.fingerprint
    )


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


def plan_identity(p: Plan) -> dict[str, Any]:
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
