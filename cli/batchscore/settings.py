"""Settings for one run: the frozen records every part reads (resolved and validated once by
:mod:`batchscore.resolving`: built-in defaults < config file < environment < flags).

Every command-line option of ``score`` has a config key (``section.key``) and an environment
variable ``BATCHSCORE_<FLAG>``; :data:`OPTIONS` is that table, the one place that says so.
The result is a frozen :class:`Settings`; nothing downstream reads the environment or argv.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from batchscore.configtools import suggest

if TYPE_CHECKING:
    from batchscore.sources.configs import SourceConfig


@dataclass(frozen=True)
class InputSettings:
    """Where IDs come from and how they are read."""

    path: str = "-"
    format: str | None = None  # text | csv | tsv | jsonl; None = from the extension
    # Whether the first line is a header (--header/--no-header); None: the format's way (a
    # text input has none, a CSV or TSV has one).  A CSV or TSV without one has its columns
    # numbered from 1, and its ID column defaults to 1 (see resolve).
    header: bool | None = None
    id_column: str = "id"
    id_field: str = "id"
    keep: tuple[str, ...] = ()
    dedupe: bool = False
    shard: str | None = None  # "K/N"
    from_errors: str | None = None  # an errors file whose IDs are the input (instead of path)
    reason: tuple[str, ...] = ()  # --from-errors: only records of these reasons (all if empty)
    min_ids: int = 0  # fewer IDs in the input than this: exit 2 (an empty or truncated export)


@dataclass(frozen=True)
class ModelSettings:
    """The model file (one model; several are ``[[models]]`` tables or repeated ``-m``)."""

    path: str | None = None


@dataclass(frozen=True)
class NamedModel:
    """One model of a run: its name (``""`` for the one unnamed model: column ``score``) and
    its path (a LightGBM model file or an MLflow folder)."""

    name: str
    path: str


@dataclass(frozen=True)
class FetchSettings:
    """Limits and retry policy shared by every source."""

    concurrency: int | str = "auto"  # a number: that many in flight over all sources
    max_concurrency: int = 256  # auto: the ceiling over all sources together
    retries: int = 4
    rate_limit: float = 0.0
    backoff_base: float = 0.1
    backoff_max: float = 10.0
    retry_after_cap: float = 60.0
    down_after: int = 50  # failed attempts in a row of one source before the run stops

    @property
    def ceiling(self) -> int:
        """The most requests in flight over all sources: the number, or under ``auto``
        ``max_concurrency``."""
        return self.concurrency if isinstance(self.concurrency, int) else self.max_concurrency


@dataclass(frozen=True)
class ScoreSettings:
    """How rows are scored."""

    batch_size: int = 1024
    threads: int | None = (
        None  # None: a scoring thread per core (1 LightGBM thread each); N: one, N threads
    )
    allow_empty: bool = False
    raw_score: bool = False
    explain: int = 0


@dataclass(frozen=True)
class OutputSettings:
    """Where results and error records go."""

    path: str = "-"
    format: str | None = None
    errors: str | None = None
    overwrite: bool = False
    unordered: bool = False
    resume: bool = False
    report: str | None = None
    metrics: str | None = None
    window: int = 0  # rows in flight between reading and writing; 0 = derived from batch sizes
    date: str | None = None  # what {date} in the output path expands to; None = today
    with_features: bool = False  # the feature values the model saw, one column per feature
    add: tuple[str, ...] = ()  # audit columns: AUDIT_COLUMNS
    merge: bool = False  # --engine dask: also write the parts as one file, in input order


@dataclass(frozen=True)
class RunSettings:
    """Failure allowance and what the user sees."""

    max_failed: int = 0
    max_failed_rate: float = 0.0
    progress_interval: float = 30.0
    timestamps: str = "auto"  # auto | always | never: an ISO 8601 time before each stderr line
    quiet: bool = False
    debug: bool = False
    engine: str = "local"  # local | dask
    scheduler: str | None = None  # a Dask scheduler's address; None: a local cluster
    partition_size: int = 0  # input lines per Dask partition; 0 = chosen from the input size


@dataclass(frozen=True)
class DriftSettings:
    """The run's distributions against an earlier run's report."""

    baseline: str | None = None  # a --report JSON of an earlier run
    max_psi: float | None = None  # a score PSI above this: exit 5 (after complete outputs)


SECTIONS: dict[str, type[Any]] = {
    "input": InputSettings,
    "model": ModelSettings,
    "fetch": FetchSettings,
    "score": ScoreSettings,
    "output": OutputSettings,
    "run": RunSettings,
    "drift": DriftSettings,
}


@dataclass(frozen=True)
class Option:
    """One flag of ``score``: its config key and environment variable."""

    flag: str  # python name of the flag, e.g. "batch_size" for --batch-size
    section: str
    key: str

    @property
    def env(self) -> str:
        """The environment variable that sets this option."""
        return "BATCHSCORE_" + self.flag.upper()


OPTIONS: tuple[Option, ...] = (
    Option("ids", "input", "path"),
    Option("input_format", "input", "format"),
    Option("header", "input", "header"),
    Option("id_column", "input", "id_column"),
    Option("id_field", "input", "id_field"),
    Option("keep", "input", "keep"),
    Option("dedupe", "input", "dedupe"),
    Option("shard", "input", "shard"),
    Option("from_errors", "input", "from_errors"),
    Option("reason", "input", "reason"),
    Option("min_ids", "input", "min_ids"),
    Option("model", "model", "path"),
    Option("concurrency", "fetch", "concurrency"),
    Option("max_concurrency", "fetch", "max_concurrency"),
    Option("retries", "fetch", "retries"),
    Option("rate_limit", "fetch", "rate_limit"),
    Option("batch_size", "score", "batch_size"),
    Option("threads", "score", "threads"),
    Option("allow_empty", "score", "allow_empty"),
    Option("raw_score", "score", "raw_score"),
    Option("explain", "score", "explain"),
    Option("output", "output", "path"),
    Option("format", "output", "format"),
    Option("errors", "output", "errors"),
    Option("overwrite", "output", "overwrite"),
    Option("unordered", "output", "unordered"),
    Option("resume", "output", "resume"),
    Option("report", "output", "report"),
    Option("metrics", "output", "metrics"),
    Option("date", "output", "date"),
    Option("with_features", "output", "with_features"),
    Option("add", "output", "add"),
    Option("max_failed", "run", "max_failed"),
    Option("max_failed_rate", "run", "max_failed_rate"),
    Option("progress_interval", "run", "progress_interval"),
    Option("timestamps", "run", "timestamps"),
    Option("quiet", "run", "quiet"),
    Option("debug", "run", "debug"),
    Option("engine", "run", "engine"),
    Option("scheduler", "run", "scheduler"),
    Option("partition_size", "run", "partition_size"),
    Option("merge", "output", "merge"),
    Option("baseline", "drift", "baseline"),
    Option("max_drift", "drift", "max_psi"),
)

ENGINES = ("local", "dask")


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``BATCHSCORE_*`` variable that is no setting (a typo is otherwise
    silently ignored: ``BATCHSCORE_CONCURENCY=8`` would leave the default), naming the nearest."""
    known = {opt.env for opt in OPTIONS} | {"BATCHSCORE_CONFIG"}
    return [
        f"{name} is not a batchscore setting{suggest(name, sorted(known))}; it is ignored"
        for name in sorted(environ)
        if name.startswith("BATCHSCORE_") and name not in known
    ]


SOURCE_KINDS = ("sqlite", "http", "feast", "postgres", "input")
INPUT_FORMATS = ("text", "csv", "tsv", "jsonl")

AUDIT_COLUMNS = ("model_version", "scored_at")
"""The columns ``--add`` can append: the model file's version (hash), and when a row's batch
was scored (UTC, ISO-8601)."""


@dataclass(frozen=True)
class Settings:
    """Everything one run needs, validated. Paths are as given (relative to the cwd)."""

    input: InputSettings = field(default_factory=InputSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    fetch: FetchSettings = field(default_factory=FetchSettings)
    score: ScoreSettings = field(default_factory=ScoreSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    run: RunSettings = field(default_factory=RunSettings)
    drift: DriftSettings = field(default_factory=DriftSettings)
    sources: tuple[SourceConfig, ...] = ()  # the [[sources]] tables, checked
    models: tuple[NamedModel, ...] = ()  # the models scored (one, unnamed, from [model] path)
    config_path: str | None = None
    fingerprint: str = ""
    # What the config's ${VAR} references expanded to: secrets, whatever key holds them.
    secrets: tuple[str, ...] = field(default=(), repr=False, compare=False)
