"""Settings resolved: defaults < config file < ``BATCHSCORE_*`` variables < flags, merged into
one frozen :class:`~batchscore.settings.Settings` and validated once.  A message about a bad
value names it as the user gave it (the flag, the variable, or the config key and file).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import sys
import tomllib
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchscore.configtools import build, check_keys, coerce, expand_env, suggest
from batchscore.errors import ConfigError
from batchscore.redact import register_secrets, register_sources
from batchscore.settings import (
    AUDIT_COLUMNS,
    ENGINES,
    INPUT_FORMATS,
    OPTIONS,
    SECTIONS,
    SOURCE_KINDS,
    NamedModel,
    Option,
    Settings,
)

if TYPE_CHECKING:
    from batchscore.sources.configs import SourceConfig


def load_config_file(
    path: str, environ: Mapping[str, str]
) -> tuple[dict[str, Any], str, tuple[str, ...]]:
    """Read a TOML config, expand ``${VAR}`` references; return it, its fingerprint and the
    values the references expanded to.

    The fingerprint hashes the file before expansion, so secrets never feed into it.  Every
    expanded value is a secret from here on (:mod:`batchscore.redact`), under whatever key and
    of whatever type: a message about a value of the wrong type (``headers`` written as a
    list) must not show the token in it either.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist; check the path given to -c"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    values: set[str] = set()
    expanded: dict[str, Any] = expand_env(data, "config", environ, values)
    secrets = tuple(sorted(values))
    register_secrets(secrets)
    return expanded, fingerprint(data), secrets


def resolve(
    flags: Mapping[str, Any],
    config_path: str | None,
    environ: Mapping[str, str],
) -> Settings:
    """Merge defaults, the config file, ``BATCHSCORE_*`` variables and flags into Settings.

    ``flags`` holds only the flags the user gave (name -> value, ``None`` meaning not given).
    """
    config_path = config_path or environ.get("BATCHSCORE_CONFIG") or None
    data, digest, secrets = load_config_file(config_path, environ) if config_path else ({}, "", ())
    check_keys(data, [*SECTIONS, "sources", "models"], "the config file")
    flags = dict(flags)
    model_flags = flags.pop("model", None)
    if isinstance(model_flags, str):
        model_flags = [model_flags]

    merged: dict[str, dict[str, Any]] = {}
    origins = Origins(config_path)
    for section in SECTIONS:
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] in the config file must be a table")
        _check_placement(section, table)
        merged[section] = dict(table)
        for key, value in table.items():
            origins.from_config(section, key, value)

    for opt in OPTIONS:
        if opt.env in environ and environ[opt.env] != "":
            # Checked here so that a bad value is reported under the variable that set it.
            field_type = typing.get_type_hints(SECTIONS[opt.section])[opt.key]
            merged[opt.section][opt.key] = coerce(environ[opt.env], field_type, opt.env)
            origins.from_env(opt, environ[opt.env])
    for opt in OPTIONS:
        value = flags.get(opt.flag)
        if value is not None and value not in ((), []):
            merged[opt.section][opt.key] = value
            origins.from_flag(opt, value)

    sections = {name: build(cls, merged[name], f"[{name}]") for name, cls in SECTIONS.items()}
    if sections["input"].header is False and not origins.given("input", "id_column"):
        # --no-header: the columns have numbers, not names, and the IDs are in the first.
        sections["input"] = dataclasses.replace(sections["input"], id_column="1")
    sources = data.get("sources", [])
    if not isinstance(sources, list) or not all(isinstance(s, dict) for s in sources):
        raise ConfigError("sources in the config file must be an array of tables ([[sources]])")
    settings = Settings(
        **sections,
        models=_models(model_flags or [], sections["model"], data.get("models")),
        config_path=config_path,
        fingerprint=digest,
        secrets=secrets,
    )
    settings = dataclasses.replace(settings, sources=validate(settings, sources, origins))
    if settings.input.reason and not settings.input.from_errors:
        raise ConfigError(
            f"{origins('input', 'reason')} picks records of an errors file; add --from-errors "
            "PATH (the OUTPUT.errors.jsonl of the run to retry)"
        )
    if settings.input.from_errors and flags.get("ids") is not None:
        raise ConfigError(
            "IDS and --from-errors both name the input; pass one of them (--from-errors "
            "takes the IDs of an errors file)"
        )
    if flags.get("id_column") is not None and not settings.input.from_errors:
        from batchscore.ids import detect_format

        if detect_format(settings.input.path, settings.input.format) == "text":
            shown = "stdin" if settings.input.path == "-" else settings.input.path
            raise ConfigError(
                f"--id-column names a column of a CSV or TSV input, and {shown} is read as "
                "plain text (one ID per line); pass --input-format csv or tsv, or drop --id-column"
            )
    return settings


MODEL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}", re.ASCII)
"""A model's name: it becomes part of column names (``score_NAME``)."""


def named_model(given: str) -> NamedModel:
    """``NAME=PATH`` or ``PATH`` (a path with ``=`` in it: write it as ``./a=b.txt``)."""
    name, sep, path = given.partition("=")
    if sep and MODEL_NAME.fullmatch(name):
        if not path:
            raise ConfigError(f"-m {given} names no model; pass -m {name}=PATH")
        return NamedModel(name, path)
    return NamedModel("", given)


def _models(flags: Sequence[str], table: Any, tables: Any) -> tuple[NamedModel, ...]:
    """The models of a run: repeated ``-m [NAME=]PATH`` flags win over the config's
    ``[[models]]`` tables (``name``, ``path``), or ``[model] path`` (also set by
    ``BATCHSCORE_MODEL``); one model may be unnamed, several must all be named."""
    models: list[NamedModel] = []
    if flags:
        models = [named_model(given) for given in flags]
    elif tables is not None:
        if table.path is not None:
            raise ConfigError(
                "the config file has both [model] path and [[models]]; keep one of them"
            )
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise ConfigError("models in the config file must be an array of tables ([[models]])")
        for i, entry in enumerate(tables):
            check_keys(entry, ["name", "path"], f"[[models]] #{i + 1}")
            name, path = entry.get("name"), entry.get("path")
            if not isinstance(path, str) or not path:
                raise ConfigError(f"[[models]] #{i + 1} needs a path (a model file or folder)")
            if not isinstance(name, str):
                raise ConfigError(
                    f'[[models]] #{i + 1} ({path}) needs a name, e.g. name = "champion"'
                )
            models.append(NamedModel(name, path))
    elif table.path is not None:
        models.append(NamedModel("", str(table.path)))
    check_model_names(models)
    return tuple(models)


def check_model_names(models: Sequence[NamedModel]) -> None:
    """Names that make valid, distinct columns; with several models, every one named."""
    for model in models:
        if model.name and not MODEL_NAME.fullmatch(model.name):
            raise ConfigError(
                f"model name '{model.name}' must be a letter then letters, digits or _ "
                "(it names the columns score_NAME)"
            )
    if len(models) > 1:
        unnamed = [m.path for m in models if not m.name]
        if unnamed:
            raise ConfigError(
                f"with several models each needs a name: -m NAME={unnamed[0]} "
                "(the name makes its column score_NAME)"
            )
        names = [m.name for m in models]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"two models are named '{twice[0]}'; give each a unique name")


def _shown(value: Any) -> str:
    """A value as the user would have typed it in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        import orjson

        return orjson.dumps(value).decode()
    return str(value)


class Origins:
    """Where each setting's value came from, so that a message names what the user wrote:
    ``[fetch] concurrency = 0 in c.toml``, ``BATCHSCORE_CONCURRENCY=0`` or ``--concurrency 0``.
    """

    def __init__(self, config_path: str | None = None) -> None:
        self.config_path = config_path
        self._where: dict[tuple[str, str], str] = {}

    def from_config(self, section: str, key: str, value: Any) -> None:
        """The value of ``[section] key`` came from the config file."""
        self._where[section, key] = f"[{section}] {key} = {_shown(value)} in {self.config_path}"

    def from_env(self, opt: Option, text: str) -> None:
        """The value came from ``opt``'s environment variable."""
        self._where[opt.section, opt.key] = f"{opt.env}={text}"

    def from_flag(self, opt: Option, value: Any) -> None:
        """The value came from ``opt``'s flag."""
        flag = _flag_name(opt)
        if isinstance(value, bool):  # False: the negative of a flag pair (--no-header)
            self._where[opt.section, opt.key] = flag if value else "--no-" + flag[2:]
        elif isinstance(value, (list, tuple)):  # a repeatable flag, as it was typed
            self._where[opt.section, opt.key] = " ".join(f"{flag} {v}" for v in value)
        else:
            self._where[opt.section, opt.key] = f"{flag} {value}"

    def given(self, section: str, key: str) -> bool:
        """Whether the user gave ``[section] key`` (in the config, a variable or a flag)."""
        return (section, key) in self._where

    def __call__(self, section: str, key: str) -> str:
        """How the user gave ``[section] key`` (its flag when it is a default)."""
        found = self._where.get((section, key))
        if found is not None:
            return found
        for opt in OPTIONS:
            if (opt.section, opt.key) == (section, key):
                return _flag_name(opt)
        return f"[{section}] {key}"


def _flag_name(opt: Option) -> str:
    return "IDS" if opt.flag == "ids" else "--" + opt.flag.replace("_", "-")


def _check_placement(section: str, table: Mapping[str, Any]) -> None:
    """A key of another table (``max_failed`` under ``[score]``) is named with its table."""
    own = {f.name for f in dataclasses.fields(SECTIONS[section])}
    for key in table:
        if key in own:
            continue
        homes = [
            name
            for name, cls in SECTIONS.items()
            if key in {f.name for f in dataclasses.fields(cls)}
        ]
        if homes:
            raise ConfigError(
                f"'{key}' is under [{section}] in the config file but belongs in [{homes[0]}]; "
                "move it there"
            )


def fingerprint(config: Mapping[str, Any]) -> str:
    """A short stable hash of a config's content."""
    import orjson

    blob = orjson.dumps(_within_64_bits(config), option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.sha256(blob).hexdigest()[:16]


def _within_64_bits(value: Any) -> Any:
    """``value`` with each whole number orjson cannot write (past 64 bits: a mistyped count,
    which the checks after the fingerprint refuse by name) as its digits; every other value,
    so every usable config's fingerprint, unchanged."""
    if isinstance(value, dict):
        return {key: _within_64_bits(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_within_64_bits(item) for item in value]
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return str(value)
    return value


MAX_INT = sys.maxsize
"""The largest whole number a setting takes (Python's index size: a count beyond it cannot be
used, only mistyped)."""


MAX_THREADS = 1024
"""The most LightGBM threads ``--threads`` asks for.  A fixed cap, not a multiple of this
machine's cores, because the setting also goes to Dask workers on other machines; it is above
the hardware threads of the largest servers (a predict gains nothing past them), and far below
what fails: libgomp cannot start 40,000 threads, and 65,536 crash LightGBM."""


def validate(
    s: Settings, tables: Sequence[Mapping[str, Any]], where: Origins | None = None
) -> tuple[SourceConfig, ...]:
    """Cross-field checks that no single field can make; a message names the value as the
    user gave it (flag, variable, or config key and file: see :class:`Origins`).  Returns the
    ``[[sources]]`` ``tables`` as typed records, checked last."""
    at = where or Origins()
    for section in SECTIONS:
        values = getattr(s, section)
        for f in dataclasses.fields(values):
            value = getattr(values, f.name)
            if isinstance(value, int) and not isinstance(value, bool) and value > MAX_INT:
                raise ConfigError(f"{at(section, f.name)} is too large: at most {MAX_INT:,}")
    if s.score.threads is not None and s.score.threads > MAX_THREADS:
        raise ConfigError(
            f"{at('score', 'threads')}: at most {MAX_THREADS:,} LightGBM threads (more threads "
            "than the machine's cores make a predict no faster, and thousands fail to start)"
        )
    if isinstance(s.fetch.concurrency, str) and s.fetch.concurrency != "auto":
        raise ConfigError(
            f"{at('fetch', 'concurrency')} must be auto or a number"
            + suggest(s.fetch.concurrency, ["auto"])
        )
    if isinstance(s.fetch.concurrency, int) and s.fetch.concurrency < 1:
        raise ConfigError(f"{at('fetch', 'concurrency')} must be at least 1, or auto")
    if s.fetch.max_concurrency < 1:
        raise ConfigError(f"{at('fetch', 'max_concurrency')} must be at least 1")
    if s.fetch.retries < 0:
        raise ConfigError(f"{at('fetch', 'retries')} must be 0 or more")
    if s.fetch.rate_limit < 0:
        raise ConfigError(f"{at('fetch', 'rate_limit')} must be 0 (no limit) or more")
    for key in ("backoff_base", "backoff_max", "retry_after_cap"):
        if getattr(s.fetch, key) < 0:
            raise ConfigError(f"{at('fetch', key)} must be 0 or more seconds")
    if s.fetch.down_after < 1:
        raise ConfigError(f"{at('fetch', 'down_after')} must be at least 1")
    if s.score.batch_size < 1:
        raise ConfigError(f"{at('score', 'batch_size')} must be at least 1")
    if s.score.threads is not None and s.score.threads < 0:
        raise ConfigError(f"{at('score', 'threads')} must be 0 (all cores) or more")
    if s.score.explain < 0:
        raise ConfigError(f"{at('score', 'explain')} must be 0 or more")
    if s.output.window < 0:
        raise ConfigError(f"{at('output', 'window')} must be 0 (derived) or more")
    if s.run.max_failed < 0:
        raise ConfigError(f"{at('run', 'max_failed')} must be 0 or more")
    if not 0.0 <= s.run.max_failed_rate <= 1.0:
        raise ConfigError(f"{at('run', 'max_failed_rate')} must be between 0 and 1")
    if s.run.progress_interval <= 0:
        raise ConfigError(f"{at('run', 'progress_interval')} must be more than 0 seconds")
    if s.run.timestamps not in ("auto", "always", "never"):
        raise ConfigError(
            f"{at('run', 'timestamps')} must be auto, always or never"
            + suggest(str(s.run.timestamps), ("auto", "always", "never"))
        )
    if s.input.min_ids < 0:
        raise ConfigError(f"{at('input', 'min_ids')} must be 0 (no minimum) or more")
    if s.input.format not in (None, *INPUT_FORMATS):
        raise ConfigError(
            f"{at('input', 'format')} must be text, csv, tsv or jsonl"
            + suggest(str(s.input.format), INPUT_FORMATS)
        )
    if s.input.header and s.input.format == "jsonl":
        raise ConfigError(
            f"{at('input', 'header')} is for text, CSV or TSV input; JSON lines have no header "
            f"line (and {at('input', 'format')} says JSON lines)"
        )
    if s.output.format not in (None, "csv", "jsonl", "parquet", "sqlite"):
        raise ConfigError(
            f"{at('output', 'format')} must be csv, jsonl, parquet or sqlite"
            + suggest(str(s.output.format), ["csv", "jsonl", "parquet", "sqlite"])
        )
    if s.output.resume and s.output.overwrite:
        raise ConfigError(
            f"{at('output', 'resume')} and {at('output', 'overwrite')} contradict each other; "
            "pass one of them"
        )
    if s.input.shard is not None:
        parse_shard(s.input.shard, at("input", "shard"))
    if s.output.date is not None:
        parse_date(s.output.date, at("output", "date"))
    audit_columns(s.output.add)
    if s.run.engine not in ENGINES:
        raise ConfigError(
            f"{at('run', 'engine')}: the engine must be local or dask"
            + suggest(str(s.run.engine), ENGINES)
        )
    if s.run.engine != "dask":
        for section, key, flag in (
            ("run", "scheduler", s.run.scheduler is not None),
            ("run", "partition_size", s.run.partition_size != 0),
            ("output", "merge", s.output.merge),
        ):
            if flag:  # said plainly rather than ignored: a cluster option on a local run
                raise ConfigError(f"{at(section, key)} is for --engine dask; add --engine dask")
    if s.drift.max_psi is not None and s.drift.max_psi < 0:
        raise ConfigError(f"{at('drift', 'max_psi')} must be 0 or more (a PSI)")
    if s.drift.max_psi is not None and s.drift.baseline is None:
        raise ConfigError(
            f"{at('drift', 'max_psi')} compares the scores with a baseline: add --baseline "
            "REPORT.json (the --report of an earlier run)"
        )
    if s.run.partition_size < 0:
        raise ConfigError(f"{at('run', 'partition_size')} must be 0 (chosen) or more lines")
    if not s.models:
        raise ConfigError("no model given; pass -m MODEL or set [model] path in the config")
    if not tables:
        raise ConfigError(
            'no feature sources; add a [[sources]] table to the config (-c) (kind = "input" '
            "takes the features from the input file's own columns)"
        )
    return source_configs(tables)


def source_configs(tables: Sequence[Mapping[str, Any]]) -> tuple[SourceConfig, ...]:
    """The ``[[sources]]`` tables as typed records: kinds and names first, then each kind's
    own keys (:mod:`batchscore.sources.configs`, imported only now: the ``--help`` path stays
    free of numpy).  The secrets in the tables are registered before anything can quote them."""
    from batchscore.sources.configs import parse_sources

    names: set[str] = set()
    for i, src in enumerate(tables):
        kind = src.get("kind")
        if kind not in SOURCE_KINDS:
            raise ConfigError(
                f"sources[{i}].kind must be one of {', '.join(SOURCE_KINDS)}, not {kind!r}"
                + suggest(str(kind), SOURCE_KINDS)
            )
        name = str(src.get("name", kind))
        if name in names:
            raise ConfigError(
                f"two sources are named '{name}'; give each [[sources]] a unique name"
            )
        names.add(name)
    inputs = [i for i, src in enumerate(tables) if src.get("kind") == "input"]
    if len(inputs) > 1:
        raise ConfigError(
            f"sources[{inputs[1]}] is a second source of kind input; one reads every input "
            "column it needs: list them in the first one's `columns`"
        )
    register_sources(tables)
    return parse_sources(tables)


def audit_columns(add: tuple[str, ...]) -> tuple[str, ...]:
    """The audit columns of ``--add`` (repeatable, or comma-separated), each once, in the order
    first given."""
    names: dict[str, None] = {}
    for value in add:
        for part in value.split(","):
            name = part.strip()
            if name not in AUDIT_COLUMNS:
                raise ConfigError(
                    f"--add takes {' or '.join(AUDIT_COLUMNS)}, not '{name}'"
                    + suggest(name, AUDIT_COLUMNS)
                )
            names[name] = None
    return tuple(names)


def parse_shard(text: str, given: str = "--shard") -> tuple[int, int]:
    """Parse ``K/N`` (0 <= K < N); ``given`` names where the text came from."""
    try:
        k_text, n_text = text.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise ConfigError(f"{given} must look like K/N (e.g. 0/4), not '{text}'") from None
    if n < 1 or not 0 <= k < n:
        raise ConfigError(f"{given}: --shard K/N needs 0 <= K < N, got '{text}'")
    return k, n


def parse_date(text: str, given: str = "--date") -> str:
    """Check a ``--date`` (YYYY-MM-DD, a real day); return it.  ``given`` names where the
    text came from."""
    import datetime as dt
    import re

    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text, re.ASCII):
            raise ValueError(text)
        dt.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{given} must be a day as YYYY-MM-DD (e.g. 2026-11-30), not '{text}'"
        ) from None
    return text
