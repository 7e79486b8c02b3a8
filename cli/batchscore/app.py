"""The command line: the only module that imports typer.

Options become :class:`~batchscore.settings.Settings`, the job runs, and :func:`run_cli` turns
whatever happened into an exit status and at most one line on stderr (a traceback only with
``--debug``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.core

from batchscore import __version__
from batchscore.errors import (
    BatchscoreError,
    ExitStatus,
    PipeClosedError,
    Terminated,
    quiet_unraisable,
    stop_early,
    stopping_signal,
)
from batchscore.settings import Settings
from batchscore.stamps import WHEN, StampedLines, stamp_stderr

if TYPE_CHECKING:
    from batchscore.model import ModelInfo

app = typer.Typer(  # the help text is the main callback's docstring, with its example
    name="batchscore",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_debug = False


def _version(value: bool) -> None:
    if value:
        print(f"batchscore {__version__}")
        raise typer.Exit(0)


@app.callback()
def main(
    version: Annotated[
        bool | None,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = None,
) -> None:
    """Score lists of IDs with a LightGBM model, fetching features from slow services.

    Example: batchscore score sample_data/ids.txt -c configs/sample.toml -o scores.csv
    """


def _setup_logging(debug: bool, quiet: bool) -> None:
    """One stderr handler for every logger (third-party ones too), secrets masked in every line."""
    from batchscore.redact import RedactingFormatter

    level = logging.DEBUG if debug else (logging.ERROR if quiet else logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("batchscore: %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings go through the same masked handler


def _warn_unknown_variables() -> None:
    from batchscore.settings import unknown_variables

    for warning in unknown_variables(os.environ):
        print(f"batchscore: warning: {warning}", file=sys.stderr)


class PanelCommand(typer.core.TyperCommand):
    """Help with the options grouped under their ``rich_help_panel`` titles, drawn as plain
    sections (``Input:``, ``Output:`` ...).

    Typer draws panels only through rich markup, which would read ``[default: 64]`` in a help
    text as a markup tag and drop it, and show ``<bool>`` placeholders; plain sections keep the
    defaults and the placeholders as written, and ``--help`` does not import rich.
    """

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """``MODEL...``, not typer's ``{MODEL}...`` for a repeatable argument."""
        return [p.replace("{", "").replace("}", "") for p in super().collect_usage_pieces(ctx)]

    def format_options(self, ctx: Any, formatter: Any) -> None:  # typer._click types
        """Arguments first, then each panel's options in the order they are declared."""
        arguments: list[tuple[str, str]] = []
        panels: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":  # "IDS", not typer's "IDS <str>"
                arguments.append((record[0].split(" <", 1)[0], record[1]))
            else:
                panel = getattr(param, "rich_help_panel", None) or "Options"
                panels.setdefault(panel, []).append(record)
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        for title, records in panels.items():
            with formatter.section(title):
                formatter.write_dl(records)


Opt = typer.Option
_D = Settings()  # the built-in defaults, shown in --help
INPUT, SOURCES, SCORING, OUTPUT, RUN = "Input", "Sources", "Scoring", "Output", "Run"

# Options that score and check share, declared once.
ConfigOption = Annotated[
    Path | None,
    Opt(
        "-c",
        "--config",
        metavar="PATH",
        help="TOML config file: the sources, and any setting below.",
        rich_help_panel=SOURCES,
    ),
]
ModelOption = Annotated[
    list[str] | None,
    Opt(
        "-m",
        "--model",
        metavar="[NAME=]PATH",
        help="LightGBM model file (text format), or an MLflow model folder of the lightgbm "
        "flavor. Repeat with names to score several models in one pass: -m champion=a.txt "
        "-m challenger=b.txt (columns score_champion, score_challenger).",
        rich_help_panel=SCORING,
    ),
]
InputFormatOption = Annotated[
    str | None,
    Opt(
        "--input-format",
        metavar="FMT",
        help="text|csv|tsv|jsonl [default: from IDS].",
        rich_help_panel=INPUT,
    ),
]
HeaderOption = Annotated[
    bool | None,
    Opt(
        "--header/--no-header",
        help="Whether the first line is a header [default: text none, CSV/TSV one]. --header: "
        "skip a text input's first line. --no-header: a CSV/TSV's first line is data, its "
        "columns numbered 1, 2, ... as cut -f numbers them (--id-column 1 by default, "
        "--keep 3).",
        rich_help_panel=INPUT,
    ),
]
IdColumnOption = Annotated[
    str | None,
    Opt(
        "--id-column",
        metavar="COL",
        help="CSV/TSV ID column: its name, or under --no-header its number [default: id; 1 "
        "with --no-header].",
        rich_help_panel=INPUT,
    ),
]
IdFieldOption = Annotated[
    str | None,
    Opt(
        "--id-field",
        metavar="FIELD",
        help="JSON-lines ID field [default: id].",
        rich_help_panel=INPUT,
    ),
]
DebugOption = Annotated[
    bool | None, Opt("--debug", help="Debug logs; tracebacks.", rich_help_panel=RUN)
]


@app.command("score", cls=PanelCommand)
def score(
    ctx: typer.Context,
    ids: Annotated[
        str | None,
        typer.Argument(metavar="IDS", help="ID list: a file, or - / omitted for stdin."),
    ] = None,
    input_format: InputFormatOption = None,
    header: HeaderOption = None,
    id_column: IdColumnOption = None,
    id_field: IdFieldOption = None,
    keep: Annotated[
        list[str] | None,
        Opt(
            "--keep",
            metavar="COL",
            help="Input column to carry through (repeatable).",
            rich_help_panel=INPUT,
        ),
    ] = None,
    dedupe: Annotated[
        bool | None, Opt("--dedupe", help="Score each ID once.", rich_help_panel=INPUT)
    ] = None,
    shard: Annotated[
        str | None,
        Opt("--shard", metavar="K/N", help="Score shard K of N (K from 0).", rich_help_panel=INPUT),
    ] = None,
    from_errors: Annotated[
        str | None,
        Opt(
            "--from-errors",
            metavar="PATH",
            help="Score the IDs (and --keep columns) of an errors file instead of IDS: "
            "a retry of the failures.",
            rich_help_panel=INPUT,
        ),
    ] = None,
    reason: Annotated[
        list[str] | None,
        Opt(
            "--reason",
            metavar="R",
            help="With --from-errors: score again only the records of this reason "
            "(repeatable), e.g. fetch_failed but not not_found; the others are left out, "
            "counted in the summary.",
            rich_help_panel=INPUT,
        ),
    ] = None,
    min_ids: Annotated[
        int | None,
        Opt(
            "--min-ids",
            metavar="N",
            help="Fewer IDs in the input is exit 2, before any fetch [default: 0].",
            rich_help_panel=INPUT,
        ),
    ] = None,
    config: ConfigOption = None,
    concurrency: Annotated[
        str | None,
        Opt(
            "--concurrency",
            metavar="N|auto",
            help="Requests in flight over all sources, or auto: each source's own limit, "
            "found as the run goes (grows while answers come faster, backs off on 429/503/"
            f"timeouts or queueing) [default: {_D.fetch.concurrency}].",
            rich_help_panel=SOURCES,
        ),
    ] = None,
    max_concurrency: Annotated[
        int | None,
        Opt(
            "--max-concurrency",
            metavar="N",
            help="With --concurrency auto: the most requests in flight over all sources "
            f"[default: {_D.fetch.max_concurrency}].",
            rich_help_panel=SOURCES,
        ),
    ] = None,
    rate_limit: Annotated[
        float | None,
        Opt(
            "--rate-limit",
            metavar="R",
            help="Requests per second [default: no limit].",
            rich_help_panel=SOURCES,
        ),
    ] = None,
    retries: Annotated[
        int | None,
        Opt(
            "--retries",
            metavar="N",
            help=f"Extra attempts [default: {_D.fetch.retries}].",
            rich_help_panel=SOURCES,
        ),
    ] = None,
    model: ModelOption = None,
    batch_size: Annotated[
        int | None,
        Opt(
            "--batch-size",
            metavar="N",
            help=f"Rows per batch [default: {_D.score.batch_size}].",
            rich_help_panel=SCORING,
        ),
    ] = None,
    threads: Annotated[
        int | None,
        Opt(
            "--threads",
            metavar="N",
            help="LightGBM threads of one scoring thread (0 = all cores); "
            "unset: a scoring thread per core.",
            rich_help_panel=SCORING,
        ),
    ] = None,
    raw_score: Annotated[
        bool | None, Opt("--raw-score", help="Raw margins.", rich_help_panel=SCORING)
    ] = None,
    explain: Annotated[
        int | None,
        Opt(
            "--explain",
            metavar="K",
            help="Per row, the K features with the largest |contribution| (LightGBM pred_contrib: "
            "raw margin, log-odds for binary; with the bias they sum to the raw score; multiclass: "
            "the predicted class), each with the value the model saw "
            "(explain_N_feature, explain_N_value, explain_N_contribution). Scoring is many "
            "times slower with it (LightGBM computes every feature's contribution); "
            "`check` with [score] explain in the config estimates the run with it "
            "[default: 0].",
            rich_help_panel=SCORING,
        ),
    ] = None,
    output: Annotated[
        str | None,
        Opt(
            "-o",
            "--output",
            metavar="PATH",
            help="Output file, - for stdout [default: -].",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    format: Annotated[
        str | None,
        Opt(
            "--format",
            metavar="FMT",
            help="csv|jsonl|parquet|sqlite [default: from -o].",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    errors: Annotated[
        str | None,
        Opt(
            "--errors",
            metavar="PATH",
            help="Errors file [default: OUTPUT.errors.jsonl].",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    unordered: Annotated[
        bool | None,
        Opt("--unordered", help="Write in completion order.", rich_help_panel=OUTPUT),
    ] = None,
    with_features: Annotated[
        bool | None,
        Opt(
            "--with-features",
            help="Add the feature values the model saw, one column feature_NAME per model "
            "feature, in model order (categoricals as their codes).",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    add: Annotated[
        list[str] | None,
        Opt(
            "--add",
            metavar="COL",
            help="Add an audit column: model_version (the model file's hash) or scored_at "
            "(UTC time of the row's batch); repeatable.",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    resume: Annotated[
        bool | None,
        Opt(
            "--resume",
            help="Continue a stopped run. Safe on every run: with nothing to resume it starts, "
            "after a completed run of the same job it does nothing (exit 0).",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    date: Annotated[
        str | None,
        Opt(
            "--date",
            metavar="YYYY-MM-DD",
            help="What {date} in -o expands to (to resume another day's run) [default: today].",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    overwrite: Annotated[
        bool | None,
        Opt("--overwrite", help="Replace an existing output.", rich_help_panel=OUTPUT),
    ] = None,
    report: Annotated[
        str | None,
        Opt("--report", metavar="PATH", help="Run report JSON path.", rich_help_panel=OUTPUT),
    ] = None,
    metrics: Annotated[
        str | None,
        Opt("--metrics", metavar="PATH", help="Prometheus textfile path.", rich_help_panel=OUTPUT),
    ] = None,
    baseline: Annotated[
        str | None,
        Opt(
            "--baseline",
            metavar="REPORT",
            help="Compare the score and feature distributions with an earlier run's --report "
            "(PSI, KS; the same path as --report works).",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    max_drift: Annotated[
        float | None,
        Opt(
            "--max-drift",
            metavar="PSI",
            help="Exit 5 (after complete outputs) when a score's PSI against --baseline is "
            "above this (0.25: a large shift).",
            rich_help_panel=RUN,
        ),
    ] = None,
    max_failed: Annotated[
        int | None,
        Opt(
            "--max-failed",
            metavar="N",
            help="Failed IDs allowed [default: 0].",
            rich_help_panel=RUN,
        ),
    ] = None,
    max_failed_rate: Annotated[
        float | None,
        Opt(
            "--max-failed-rate",
            metavar="R",
            help="Failed share allowed, 0-1 [default: 0].",
            rich_help_panel=RUN,
        ),
    ] = None,
    progress_interval: Annotated[
        float | None,
        Opt(
            "--progress-interval",
            metavar="S",
            help="Seconds between log lines [default: 30].",
            rich_help_panel=RUN,
        ),
    ] = None,
    timestamps: Annotated[
        str | None,
        Opt(
            "--timestamps",
            metavar="WHEN",
            help="auto|always|never: an ISO 8601 time at the start of each stderr line "
            "(auto: when stderr is not a terminal, as in a cron log) [default: auto].",
            rich_help_panel=RUN,
        ),
    ] = None,
    quiet: Annotated[
        bool | None, Opt("--quiet", "-q", help="Only errors.", rich_help_panel=RUN)
    ] = None,
    debug: DebugOption = None,
    engine: Annotated[
        str | None,
        Opt(
            "--engine",
            metavar="ENGINE",
            help="local (this process) or dask: partitions of the input run on Dask workers "
            "(extra batchscore[dask]); -o then names a folder of part files [default: local].",
            rich_help_panel=RUN,
        ),
    ] = None,
    scheduler: Annotated[
        str | None,
        Opt(
            "--scheduler",
            metavar="ADDR",
            help="With --engine dask: the scheduler of an existing cluster (tcp://host:8786) "
            "[default: a local cluster, one worker process per core].",
            rich_help_panel=RUN,
        ),
    ] = None,
    partition_size: Annotated[
        int | None,
        Opt(
            "--partition-size",
            metavar="N",
            help="With --engine dask: input lines per partition (one Dask task, one part file; "
            "a stop keeps whole parts) [default: about 4 partitions per worker, 1,000 to "
            "10,000 lines].",
            rich_help_panel=RUN,
        ),
    ] = None,
    merge: Annotated[
        bool | None,
        Opt(
            "--merge",
            help="With --engine dask: also write the parts as one file in input order, "
            "FOLDER/merged.EXT (csv or jsonl).",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
) -> None:
    """Score IDS with a LightGBM model, fetching their features from the configured sources.

    Example: batchscore score sample_data/ids.txt -c configs/sample.toml -o scores.csv

    Pipelines: cut -f1 accounts.tsv | batchscore score - -c x.toml | sort -t, -k2 -gr | head

    Cron: pass --resume on every run (it continues a stopped run, does nothing after a
    completed one) with --report/--metrics for monitoring.

    \b
    Exit status:
      0    every ID scored, or failures within --max-failed / --max-failed-rate
      1    internal error (a bug): rerun with --debug, report it
      2    usage or config error, before anything is fetched
      3    finished, but more IDs failed than allowed (see the errors file)
      4    a source is down or rejects our credentials; rerun with --resume
      5    finished, outputs complete, but a score drifted beyond --max-drift
      74   the output cannot be written; rerun with --resume
      75   another run holds the output
      130  interrupted (SIGINT), 143 terminated (SIGTERM); rerun with --resume
      141  the output pipe was closed by its reader
    """
    global _debug
    from batchscore.lifecycle import run_job
    from batchscore.resolving import resolve
    from batchscore.scoring import Environment

    # Exactly the command's parameters as parsed (None: not given), by their names.
    flags: dict[str, Any] = dict(ctx.params)
    flags.pop("config")
    _debug = bool(debug) or os.environ.get("BATCHSCORE_DEBUG", "") in {"1", "true", "yes"}
    if timestamps in WHEN:  # a settings error (a bad config key) is stamped as the flag says
        stamp_stderr(timestamps)
    settings = resolve(flags, str(config) if config else None, os.environ)
    _debug = settings.run.debug
    stamp_stderr(settings.run.timestamps)
    _setup_logging(settings.run.debug, settings.run.quiet)
    _warn_unknown_variables()
    env = Environment(
        stdin=sys.stdin.buffer,
        stdout_fd=1,
        stderr=sys.stderr,
        stderr_isatty=sys.stderr.isatty(),
        environ=os.environ,
        handle_signals=True,
    )
    outcome = run_job(settings, env)
    raise typer.Exit(int(outcome.status))


@app.command("check", cls=PanelCommand)
def check(
    ids: Annotated[
        str | None,
        typer.Argument(
            metavar="IDS", help="ID list to sample and to estimate the run time for (optional)."
        ),
    ] = None,
    config: ConfigOption = None,
    model: ModelOption = None,
    sample: Annotated[
        int,
        Opt("--sample", metavar="N", help="IDs to fetch from the list.", rich_help_panel=INPUT),
    ] = 20,
    input_format: InputFormatOption = None,
    header: HeaderOption = None,
    id_column: IdColumnOption = None,
    id_field: IdFieldOption = None,
    debug: DebugOption = None,
) -> None:
    """Pre-flight: config, model, every source reachable, a sample fetch, coverage, latency, ETA.

    Fetches the first --sample IDs of IDS from every source (without IDS, one probe request per
    source), shows which model features no source gave and which are mostly missing, the
    latency per source and an estimate of the run time for the whole list. Exit 0 when a real
    run would work, 2 for a config or model problem, 4 when a source is unreachable or rejects
    the credentials.

    Example: batchscore check -c configs/http.toml sample_data/ids.txt --sample 50
    """
    global _debug
    from batchscore.check import run_check
    from batchscore.resolving import resolve

    _debug = bool(debug) or os.environ.get("BATCHSCORE_DEBUG", "") in {"1", "true", "yes"}
    flags = {
        "model": model,
        "debug": debug,
        "input_format": input_format,
        "header": header,
        "id_column": id_column,
        "id_field": id_field,
    }
    settings = resolve(flags, str(config) if config else None, os.environ)
    _debug = settings.run.debug
    stamp_stderr(settings.run.timestamps)
    _setup_logging(settings.run.debug, quiet=False)
    _warn_unknown_variables()
    raise typer.Exit(run_check(settings, ids, sample, sys.stdout))


@app.command("model-info", cls=PanelCommand)
def model_info(
    models: Annotated[
        list[str],
        typer.Argument(
            metavar="MODEL",
            help="LightGBM model file, or an MLflow model folder; several as NAME=PATH.",
        ),
    ],
    json_output: Annotated[bool, Opt("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Describe a model: objective, trees, classes, features with training ranges, version.

    For an MLflow model folder, also the booster file in it, the run id and the signature's
    inputs. Several models (NAME=PATH ...): one description each, named.
    Example: batchscore model-info sample_data/model.txt
    """
    from batchscore.model import read_info
    from batchscore.resolving import check_model_names, named_model

    named = [named_model(given) for given in models]
    check_model_names(named)
    infos = [(m.name, read_info(m.path, given_as="the MODEL argument")) for m in named]
    if json_output:
        import dataclasses

        import orjson

        bodies = [
            {**({"name": name} if name else {}), **dataclasses.asdict(info)} for name, info in infos
        ]
        body: Any = bodies[0] if len(bodies) == 1 else bodies
        print(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
        return
    for n, (name, info) in enumerate(infos):
        if n:
            print()
        if name:
            print(f"name       {name}")
        _describe(info)


def _describe(info: ModelInfo) -> None:
    """``model-info``'s table for one model."""
    print(f"model      {info.path}")
    if info.mlflow is not None:
        print(f"booster    {info.booster_file}")
        print(f"run_id     {info.mlflow.run_id or '(none)'}")
    print(f"version    {info.version}")
    print(f"objective  {info.objective}")
    print(f"trees      {info.num_trees}")
    print(f"classes    {info.num_class}")
    print(f"features   {len(info.features)}")
    width = max((len(f.name) for f in info.features), default=4)
    for f in info.features:
        if f.categorical:
            kind = "categorical"
            detail = ", ".join(map(str, f.categories)) if f.categories else "integer codes"
        else:
            kind = "numeric"
            detail = (
                f"[{f.low:g}, {f.high:g}]" if f.low is not None and f.high is not None else "unused"
            )
        print(f"  {f.name:<{width}}  {kind:<11}  {detail}")
    inputs = info.mlflow.signature_inputs if info.mlflow is not None else ()
    if inputs:
        print(f"signature  {len(inputs)} inputs")
        width = max(len(i.name or "(tensor)") for i in inputs)
        for i in inputs:
            print(f"  {i.name or '(tensor)':<{width}}  {i.type}")


def _terminated(signum: int, frame: object) -> None:
    stop_early(signum, Terminated(signum))


def _interrupted(signum: int, frame: object) -> None:
    stop_early(signum, KeyboardInterrupt())


def run_cli(argv: list[str]) -> int:
    """Run the command line; return the exit status. The one place errors become messages.

    Every message and traceback goes through :func:`batchscore.redact.redact`: no secret from a
    source's config reaches stderr, ``--debug`` included (the traceback is printed here, masked,
    instead of being re-raised).
    """
    # Every line on stderr (progress, summary, warnings, this function's error line) passes
    # one stamper: a time first when not on a terminal.  Its mode is known before the settings
    # are, from the variable, so that an early usage error is stamped as later lines would be.
    when = os.environ.get("BATCHSCORE_TIMESTAMPS", "auto")
    with contextlib.redirect_stderr(StampedLines(sys.stderr, when if when in WHEN else "auto")):
        return _run_cli(argv)


def _run_cli(argv: list[str]) -> int:
    from batchscore.redact import format_exception, redact

    # Until the pipeline installs its own handlers, SIGTERM ends the command like Ctrl-C does
    # (an exception that unwinds cleanly and releases the run lock), with status 143.
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGINT, _interrupted)
    sys.unraisablehook = quiet_unraisable(sys.unraisablehook)
    try:
        result = app(argv, prog_name="batchscore", standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except PipeClosedError:
        # The reader went away (`| head`): no message, and nothing more may reach stdout.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return int(ExitStatus.PIPE_CLOSED)
    except BatchscoreError as exc:
        if _debug:
            print(format_exception(exc), end="", file=sys.stderr)
        print(f"batchscore: error: {redact(exc.message)}", file=sys.stderr)
        return int(exc.exit_status)
    except KeyboardInterrupt:
        print("batchscore: interrupted", file=sys.stderr)
        return int(ExitStatus.SIGINT)
    except Terminated:
        print("batchscore: stopped by SIGTERM", file=sys.stderr)
        return int(ExitStatus.SIGTERM)
    except typer.Abort:
        return int(ExitStatus.SIGINT)
    except Exception as exc:
        stopped = stopping_signal(exc)
        if stopped is not None:  # a signal that came out wrapped (see stopping_signal)
            name = "interrupted" if stopped == ExitStatus.SIGINT else "stopped by SIGTERM"
            print(f"batchscore: {name}", file=sys.stderr)
            return int(stopped)
        # Typer's bundled click raises usage errors (bad flag, missing argument) that know how
        # to show themselves; they are the user's mistake, not a bug.
        show = getattr(exc, "show", None)
        if callable(show) and isinstance(getattr(exc, "exit_code", None), int):
            show(file=sys.stderr)
            return int(ExitStatus.USAGE)
        if _debug:
            print(format_exception(exc), end="", file=sys.stderr)
        print(
            f"batchscore: internal error: {type(exc).__name__}: {redact(str(exc))}. "
            "This is a bug; rerun with --debug for the traceback and report it.",
            file=sys.stderr,
        )
        return int(ExitStatus.INTERNAL)
    return result if isinstance(result, int) else 0
