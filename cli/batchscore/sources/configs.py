"""The ``[[sources]]`` tables as typed records, checked when the settings are read.

One frozen dataclass per source kind, with the checks that need no connection (keys and
their types, URLs, batch sizes, one of ``table``/``query``); the source modules build a live
source from a record, and nothing after the settings reads a raw table.  This module imports
nothing heavy (aiohttp, asyncpg), so a run that uses none of those sources never loads them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from batchscore.configtools import build, suggest
from batchscore.errors import ConfigError

if TYPE_CHECKING:
    import yarl

SQLITE_MAX_BATCH = 30_000
HTTP_MAX_BATCH = 10_000
FEAST_MAX_BATCH = 10_000
POSTGRES_MAX_BATCH = 100_000
MODES = ("per_id", "batch")
PLACEHOLDER = "{id}"
ENTITY_TYPES = ("string", "int")

MAX_RESPONSE_BYTES = 64 << 20
"""The default cap of a batch or Feast answer's decoded body.  The largest answer the limits
allow, 10,000 IDs of 50 features in Feast's column-major JSON (each value with its status and
timestamp, ~60 bytes), is ~30 MB; a hostile answer costs at most this much per request in
flight."""
MAX_PER_ID_RESPONSE_BYTES = 1 << 20
"""The default cap of a per-ID answer's decoded body: one ID's features (a few KB, an
embedding of thousands of floats ~40 KB) with room to spare, and at most this much per
request in flight: 64 MB at ``--concurrency`` 64."""

# What may appear in a URL that is sent as written: RFC 3986's unreserved and reserved characters
# and %XX escapes.  Anything else (a space, a quote, non-ASCII, a lone %) needs percent-encoding.
_NOT_ENCODED = re.compile(r"[^A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]|%(?![0-9A-Fa-f]{2})")


@dataclass(frozen=True)
class ClientOptions:
    """The connection settings every http and feast source has."""

    timeout: float
    headers: Mapping[str, str]
    ca_bundle: str | None = None
    insecure: bool = False
    proxy: str | None = None
    tls: bool = True  # the source's URL is https (redirects are never followed to one)
    max_response_bytes: int = MAX_RESPONSE_BYTES  # of a decoded body; more: response_too_large

    @classmethod
    def of(
        cls, config: HttpConfig | FeastConfig, default_max_response_bytes: int = MAX_RESPONSE_BYTES
    ) -> ClientOptions:
        """The connection settings of an http or feast source's config (same key names)."""
        return cls(
            config.timeout,
            config.headers,
            config.ca_bundle,
            config.insecure,
            config.proxy,
            tls=config.url.lower().startswith("https:"),
            max_response_bytes=(
                default_max_response_bytes
                if config.max_response_bytes is None
                else config.max_response_bytes
            ),
        )


def check_options(options: ClientOptions, where: str) -> None:
    """Config errors in the connection settings, before anything connects."""
    if not options.timeout > 0:
        raise ConfigError(f"{where}.timeout must be more than 0 seconds")
    if options.max_response_bytes < 1:
        raise ConfigError(f"{where}.max_response_bytes must be at least 1 (bytes of a body)")
    if options.insecure and options.ca_bundle:
        raise ConfigError(
            f"{where}: give ca_bundle (verify with this CA) or insecure = true, not both"
        )
    if options.ca_bundle and not Path(options.ca_bundle).is_file():
        raise ConfigError(f"{where}.ca_bundle: no file {options.ca_bundle}")
    if options.proxy is not None:
        check_url(options.proxy, f"{where}.proxy")
    for name, value in options.headers.items():
        if any(c in name + value for c in "\r\n\0"):  # aiohttp refuses it at the first request
            shown = f".{name}" if name.isprintable() else f" (a name: {name!r})"
            raise ConfigError(
                f"{where}.headers{shown} holds a line break or NUL, which no HTTP header may "
                "(a ${VARIABLE} read from a file with its newline?); remove it"
            )


def check_url(url: str, where: str) -> yarl.URL:
    """An absolute, percent-encoded http(s) URL, or a ConfigError that does not repeat it (it
    may hold secrets).

    URLs are sent exactly as written (an ID's ``%2F`` or ``%2E`` must stay one path segment), so a
    character that needs percent-encoding is refused here rather than guessed at later.
    """
    if _NOT_ENCODED.search(url.replace("{id}", "")):  # a misplaced {id} has its own message
        raise ConfigError(
            f"{where} has a character that must be percent-encoded (a space as %20, a lone % as "
            "%25, non-ASCII as its UTF-8 bytes %XX, a non-ASCII host in its xn-- form)"
        )
    import yarl  # ~60 ms of start-up: only when an http source or a proxy is configured

    try:
        parsed = yarl.URL(url, encoded=True)
        # .port raises for a bad port here, not at the first request
        valid = parsed.scheme in ("http", "https") and bool(parsed.raw_host) and bool(parsed.port)
    except ValueError:
        raise ConfigError(f"{where} is not a valid URL") from None
    if not valid:
        raise ConfigError(f"{where} must be an absolute http:// or https:// URL")
    return parsed


@dataclass(frozen=True)
class SqliteConfig:
    """``[[sources]]`` keys for ``kind = "sqlite"``."""

    name: str
    kind: str
    path: str
    table: str
    key: str
    columns: tuple[str, ...] = ()  # feature columns to read; empty = every column but the key
    batch_size: int = 500
    mmap_size: int = 1 << 30  # bytes of the file SQLite reads through mmap; 0 = plain reads
    rename: dict[str, str] = field(default_factory=dict)
    wins: tuple[str, ...] = ()


@dataclass(frozen=True)
class HttpConfig:
    """``[[sources]]`` keys for ``kind = "http"``."""

    name: str
    kind: str
    url: str
    mode: str = "per_id"
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 10.0  # seconds for a whole attempt: connect, headers and body
    features_path: str | None = None  # None: "" for per_id, "features" for batch records
    results_path: str = "results"
    id_field: str = "id"
    ids_key: str = "ids"
    batch_size: int | None = None  # batch mode only; default 100
    ca_bundle: str | None = None
    insecure: bool = False
    proxy: str | None = None  # e.g. "http://proxy:3128"; proxy variables are never read
    max_response_bytes: int | None = None  # decoded; None: 1 MiB per_id, 64 MiB batch
    rename: dict[str, str] = field(default_factory=dict)
    wins: tuple[str, ...] = ()

    @property
    def client_options(self) -> ClientOptions:
        """The connection settings."""
        per_id = self.mode == "per_id"
        return ClientOptions.of(self, MAX_PER_ID_RESPONSE_BYTES if per_id else MAX_RESPONSE_BYTES)


@dataclass(frozen=True)
class FeastConfig:
    """``[[sources]]`` keys for ``kind = "feast"``."""

    name: str
    kind: str
    url: str  # the feature server's base URL; /get-online-features is appended
    entity_key: str
    features: tuple[str, ...] = ()  # "view:feature" references
    feature_service: str | None = None
    entity_type: str = "string"  # "int" sends IDs as JSON integers (int64 entity keys)
    batch_size: int = 100
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 10.0
    ca_bundle: str | None = None
    insecure: bool = False
    proxy: str | None = None
    max_response_bytes: int | None = None  # of a decoded answer; None: 64 MiB
    rename: dict[str, str] = field(default_factory=dict)
    wins: tuple[str, ...] = ()

    @property
    def client_options(self) -> ClientOptions:
        """The connection settings."""
        return ClientOptions.of(self)


@dataclass(frozen=True)
class PostgresConfig:
    """``[[sources]]`` keys for ``kind = "postgres"``."""

    name: str
    kind: str
    dsn: str  # postgresql://user:${PGPASSWORD}@host:5432/db
    table: str | None = None
    key: str | None = None  # required with table; query mode: default the query's first column
    query: str | None = None  # SQL with one parameter $1: the IDs, text[]
    schema: str | None = None  # table mode; default: the connection's search_path
    columns: tuple[str, ...] = ()  # feature columns to read; empty = every column but the key
    batch_size: int = 1000
    statement_timeout: float | None = None  # seconds, set as PostgreSQL's statement_timeout
    timeout: float = 30.0  # seconds for connecting and for a whole query attempt, client side
    pool_size: int | None = None  # connections; None: --concurrency, or AUTO_POOL_SIZE if auto
    rename: dict[str, str] = field(default_factory=dict)
    wins: tuple[str, ...] = ()

    @property
    def mode(self) -> str:
        """``table`` or ``query`` (shown by ``batchscore check``)."""
        return "query" if self.query is not None else "table"


@dataclass(frozen=True)
class InputConfig:
    """``[[sources]]`` keys for ``kind = "input"``."""

    name: str
    kind: str
    columns: tuple[str, ...] = ()  # input columns that are features; empty = every model feature
    rename: dict[str, str] = field(default_factory=dict)  # input column -> model feature
    wins: tuple[str, ...] = ()


SourceConfig = SqliteConfig | HttpConfig | FeastConfig | PostgresConfig | InputConfig
"""One ``[[sources]]`` table, checked."""


def parse_sources(tables: Sequence[Mapping[str, Any]]) -> tuple[SourceConfig, ...]:
    """Every ``[[sources]]`` table as its typed record (its kind already known to be valid);
    a ConfigError naming the table (``sources[1].url``) otherwise."""
    configs: list[SourceConfig] = []
    for i, table in enumerate(tables):
        where = f"sources[{i}]"
        kind = table.get("kind")
        if kind == "sqlite":
            configs.append(_sqlite(table, where))
        elif kind == "http":
            configs.append(_http(table, where))
        elif kind == "feast":
            configs.append(_feast(table, where))
        elif kind == "postgres":
            configs.append(_postgres(table, where))
        elif kind == "input":
            configs.append(build(InputConfig, {"name": "input", **table}, where))
        else:
            raise ConfigError(f"{where}: kind '{kind}' is not supported by this build")
    return tuple(configs)


def with_absolute_paths(config: SourceConfig) -> SourceConfig:
    """The record with its file paths (a SQLite file, a CA bundle) absolute: what a Dask
    worker, whose working folder may be another, needs."""
    if isinstance(config, SqliteConfig):
        return replace(config, path=os.path.abspath(config.path))
    if isinstance(config, HttpConfig | FeastConfig) and config.ca_bundle is not None:
        return replace(config, ca_bundle=os.path.abspath(config.ca_bundle))
    return config


def secret_tables(configs: Iterable[SourceConfig]) -> list[dict[str, Any]]:
    """The records as tables again, for :func:`batchscore.redact.register_sources` (a Dask
    worker registers the secrets of the sources it builds)."""
    return [asdict(config) for config in configs]


def _sqlite(table: Mapping[str, Any], where: str) -> SqliteConfig:
    """A ``kind = "sqlite"`` table, checked."""
    config = build(SqliteConfig, {"name": "sqlite", **table}, where)
    if not 1 <= config.batch_size <= SQLITE_MAX_BATCH:
        raise ConfigError(f"{where}.batch_size must be between 1 and {SQLITE_MAX_BATCH}")
    if config.mmap_size < 0:
        raise ConfigError(f"{where}.mmap_size must be 0 (off) or a number of bytes")
    return config


def _check_template(url: str, where: str) -> None:
    if PLACEHOLDER not in url:
        raise ConfigError(
            f'{where}.url needs {PLACEHOLDER} where the ID goes (mode = "per_id"), '
            'e.g. "http://host/features/{id}"; or set mode = "batch"'
        )
    probe = url.replace(PLACEHOLDER, "batchscoreid")
    check_url(probe, f"{where}.url")
    parts = urlsplit(probe)
    if "batchscoreid" in parts.scheme + parts.netloc:
        raise ConfigError(f"{where}.url may have {PLACEHOLDER} in its path or query, not its host")


def _http(table: Mapping[str, Any], where: str) -> HttpConfig:
    """A ``kind = "http"`` table, checked."""
    config = build(HttpConfig, {"name": "http", **table}, where)
    if config.mode not in MODES:
        raise ConfigError(
            f"{where}.mode must be per_id or batch, not '{config.mode}'"
            + suggest(config.mode, MODES)
        )
    check_options(config.client_options, where)
    if config.mode == "per_id":
        _check_template(config.url, where)
        if config.batch_size is not None:
            raise ConfigError(
                f'{where}.batch_size applies to mode = "batch" only; per_id sends one ID '
                "per request (--concurrency bounds how many at once)"
            )
    else:
        check_url(config.url, f"{where}.url")
        if PLACEHOLDER in config.url:
            raise ConfigError(
                f'{where}.url has {PLACEHOLDER} but mode = "batch" POSTs the IDs in the body; '
                'remove it or use mode = "per_id"'
            )
        if not 1 <= (config.batch_size or 100) <= HTTP_MAX_BATCH:
            raise ConfigError(f"{where}.batch_size must be between 1 and {HTTP_MAX_BATCH}")
    return config


def _feast(table: Mapping[str, Any], where: str) -> FeastConfig:
    """A ``kind = "feast"`` table, checked."""
    config = build(FeastConfig, {"name": "feast", **table}, where)
    check_url(config.url, f"{where}.url")
    check_options(config.client_options, where)
    if bool(config.features) == bool(config.feature_service):
        raise ConfigError(
            f'{where} needs either features = ["view:feature", ...] or feature_service, '
            "exactly one of them"
        )
    for ref in config.features:
        view, _, name = ref.rpartition(":")
        if not view or not name:
            raise ConfigError(f"{where}.features: '{ref}' must be a \"view:feature\" reference")
    if config.entity_type not in ENTITY_TYPES:
        raise ConfigError(
            f"{where}.entity_type must be string or int, not '{config.entity_type}'"
            + suggest(config.entity_type, ENTITY_TYPES)
        )
    if not 1 <= config.batch_size <= FEAST_MAX_BATCH:
        raise ConfigError(f"{where}.batch_size must be between 1 and {FEAST_MAX_BATCH}")
    return config


def _postgres(table: Mapping[str, Any], where: str) -> PostgresConfig:
    """A ``kind = "postgres"`` table, checked."""
    config = build(PostgresConfig, {"name": "postgres", **table}, where)
    if not config.dsn.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            f'{where}.dsn must be a URI like "postgresql://user:${{PGPASSWORD}}@host:5432/db"'
        )
    if (config.table is None) == (config.query is None):
        raise ConfigError(f"{where} needs either table (with key) or query, exactly one")
    if config.table is not None and config.key is None:
        raise ConfigError(f"{where} needs the key 'key' (the ID column of the table)")
    if config.query is not None and config.schema is not None:
        raise ConfigError(f"{where}.schema is for table mode; name the schema in the query")
    if config.query is not None and "$1" not in config.query:
        raise ConfigError(
            f"{where}.query must use $1, the array of IDs (text[]): "
            "... WHERE id = ANY($1), or ANY($1::bigint[]) for a bigint key"
        )
    if not 1 <= config.batch_size <= POSTGRES_MAX_BATCH:
        raise ConfigError(f"{where}.batch_size must be between 1 and {POSTGRES_MAX_BATCH}")
    if not config.timeout > 0:
        raise ConfigError(f"{where}.timeout must be more than 0 seconds")
    if config.pool_size is not None and config.pool_size < 1:
        raise ConfigError(f"{where}.pool_size must be at least 1 connection")
    if config.statement_timeout is not None and not config.statement_timeout > 0:
        raise ConfigError(f"{where}.statement_timeout must be more than 0 seconds")
    return config
