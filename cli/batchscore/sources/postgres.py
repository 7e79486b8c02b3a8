"""PostgreSQL feature source: a table (``table`` + ``key``) or a query, through an asyncpg pool.

One pool per source, at most ``pool_size`` connections (default: ``--concurrency`` when it is a
number, :data:`AUTO_POOL_SIZE` under ``auto``, whose adaptive limit it caps; every query also
holds a slot of the shared :class:`~batchscore.sources.limits.Limits`, so the pool never waits);
asyncpg prepares each statement once per connection and reuses it.  Connections are read-only
(``default_transaction_read_only``), and ``statement_timeout`` is set on each one when configured.

PostgreSQL decides which row an ID finds, never Python: a batch of IDs is sent as one ``text[]``
parameter, unnested ``WITH ORDINALITY`` and joined to the table on ``key = asked::<key type>``,
and each answer row carries the position of the ID that found it.  So ``007`` finds the row of
``7`` in an integer key, as PostgreSQL's own cast says, and the answer still belongs to ``007``.
Before sending, IDs that cannot be a value of the key's type are dropped (they are not found):
for integer keys anything but ASCII digits with an optional sign or beyond the type's range, for
uuid keys anything PostgreSQL's uuid input would refuse, for text keys a NUL character or text
that is not valid Unicode.  Should PostgreSQL still refuse a value of a batch (a character the
database encoding cannot hold), the batch is halved until the one ID is found and left out.

``query`` mode runs the user's SQL as the right side of that join: its one parameter ``$1`` is the
ID array as ``text[]``; its ``key`` column (default: the first) is matched to the asked IDs.

Values: numeric arrives as float (``float()`` of PostgreSQL's text, correctly rounded), integers
as int, real and double precision as float, boolean as bool, text as str (categoricals), NULL as
None (missing); the pipeline turns them into float64 by its one rule.

Failures: a connection lost or refused is retried with the retry policy; when the attempts run
out the source is down and the run stops (exit 4) instead of failing every ID.  Rejected
credentials or permissions stop it at once.  A statement timeout is retried, then the IDs of
that query fail (``statement_timeout``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, NoReturn
from urllib.parse import urlsplit

from batchscore.configtools import suggest
from batchscore.errors import ConfigError, SourceDownError
from batchscore.report import RunStats
from batchscore.sources import Failure, Fetched, check_columns, split
from batchscore.sources.configs import PostgresConfig
from batchscore.sources.limits import Limits
from batchscore.sources.retry import AttemptFailed, RetryPolicy, SourceHealth, call

log = logging.getLogger("batchscore.sources")

CLOSE_SECONDS = 5.0
AUTO_POOL_SIZE = 10
"""Connections of a pool under ``--concurrency auto`` unless ``pool_size`` says (asyncpg's own
default): the ceiling of the source's adaptive limit, well under PostgreSQL's default
``max_connections`` of 100."""
LOST = frozenset({"connection_error", "timeout"})
"""Failures that say the server is gone, not that these IDs are a problem."""

# Key column types (PostgreSQL's internal names) and their SQL names; an asked ID (text) is cast
# to the key's type, except for text types, which compare as they are.
KEY_TYPES: dict[str, str] = {
    "int2": "smallint",
    "int4": "integer",
    "int8": "bigint",
    "uuid": "uuid",
    "text": "text",
    "varchar": "varchar",
}
TEXT_KEYS = frozenset({"text", "varchar"})
KEY_TYPE_NAMES = "smallint, integer, bigint, text, varchar or uuid"

# PostgreSQL's uuid input: an optional brace, 32 hex digits with an optional hyphen after any
# group of four (not after the last), the closing brace if it opened with one.
_UUID = re.compile(r"(?:[0-9a-fA-F]{4}-?){7}[0-9a-fA-F]{4}")
# Invalid text representation, value out of range, untranslatable character, not in repertoire:
# PostgreSQL refusing an asked ID as a value of the key's type.
NOT_A_KEY_STATES = frozenset({"22P02", "22003", "22P05", "22021"})


class PostgresUnavailable(SourceDownError):
    """The server cannot be reached or has gone away: the run stops (exit 4), resumable."""

    def __init__(self, source: str, problem: str, fix: str) -> None:
        super().__init__(f"source '{source}': {problem}; {fix}, then rerun with --resume")
        self.source = source
        self.problem = f"{problem}; {fix}"  # what ``batchscore check`` shows beside the source


class PostgresRejected(PostgresUnavailable):
    """PostgreSQL refused our credentials or permissions: every query would fail (exit 4)."""


def _suggest(name: str, valid: Iterable[str]) -> str:
    """`` (did you mean 'x'?)``; a name that differs only in case first (PostgreSQL folds
    unquoted names to lower case, so ``ID`` in SQL is ``id`` in the catalog)."""
    valid = list(valid)
    same = [v for v in valid if v.lower() == name.lower()]
    return f" (did you mean '{same[0]}'?)" if same else suggest(name, valid)


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def server_of(dsn: str) -> str:
    """``host:port/database`` of a DSN for messages (never its user or password)."""
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
    except ValueError:
        return "the server of its dsn"
    database = parts.path.lstrip("/")
    return f"{host}:{port}" + (f"/{database}" if database else "")


def key_filter(type_name: str) -> Callable[[str], bool]:
    """Whether an ID can be a value of a key column of ``type_name`` (see the module docs)."""
    bits = {"int2": 16, "int4": 32, "int8": 64}.get(type_name)
    if bits is not None:
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

        def integer(text: str) -> bool:
            digits = text[1:] if text.startswith(("+", "-")) else text
            return digits.isascii() and digits.isdigit() and low <= int(text) <= high

        return integer
    if type_name == "uuid":

        def uuid(text: str) -> bool:
            if text.startswith("{"):
                if not text.endswith("}"):
                    return False
                text = text[1:-1]
            return _UUID.fullmatch(text) is not None

        return uuid

    def textual(text: str) -> bool:
        if "\x00" in text:
            return False
        if text.isascii():
            return True
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (from a JSON escape)
            return False
        return True

    return textual


@dataclass
class _Refused:
    """PostgreSQL refused a value of the batch (a data exception)."""

    sqlstate: str


class PostgresSource:
    """Reads feature rows from a PostgreSQL table or query."""

    def __init__(
        self, config: PostgresConfig, limits: Limits, policy: RetryPolicy, stats: RunStats
    ) -> None:
        self.config = config
        self.name = config.name
        self.batch_size = config.batch_size
        self._limits = limits
        self._policy = policy
        self._stats = stats
        self._health = SourceHealth(config.name, policy.down_after)
        pool_size = config.pool_size or (AUTO_POOL_SIZE if limits.auto else None)
        self._pool_size = limits.declare(config.name, pool_size)
        self.health = self._health  # read by a cluster partition's driver
        self._server = server_of(config.dsn)
        self._pool: Any = None
        self._relation = ""  # the quoted table, or the parenthesised query
        self._key = ""
        self._cast = ""
        self._key_type = "text"
        self._valid: Callable[[str], bool] = key_filter("text")
        self._columns: tuple[str, ...] = ()
        self._column_of: dict[str, str] = {}  # model name -> column
        self._selects: dict[tuple[str, ...], str] = {}

    # -- opening: connect, check the schema or the query ---------------------------------------

    async def open(self) -> None:
        """Connect (retried like a query) and check the table or query; ConfigError if unusable."""
        self._pool = await self._connect()
        try:
            async with self._pool.acquire() as conn:
                if self.config.query is not None:
                    await self._check_query(conn)
                else:
                    await self._check_table(conn)
                await self._probe(conn)
        except BaseException:
            await self.close()
            raise

    async def _connect(self) -> Any:
        import asyncpg

        settings = {"application_name": "batchscore", "default_transaction_read_only": "on"}
        if self.config.statement_timeout is not None:
            milliseconds = max(1, round(self.config.statement_timeout * 1000))
            settings["statement_timeout"] = str(milliseconds)
        last: list[str] = []

        async def send() -> Any:
            # No floor of open connections (min_size 0): asyncpg would keep reconnecting a lost
            # server in the background, logging a traceback each time; the retry policy decides.
            pool = asyncpg.create_pool(
                self.config.dsn,
                min_size=0,
                max_size=self._pool_size,
                timeout=self.config.timeout,
                server_settings=settings,
                init=_init_connection,
            )
            try:
                await pool
                async with pool.acquire() as conn:  # connect now: a refusal is known at open
                    await conn.fetchval("SELECT 1")
            except Exception as exc:
                pool.terminate()
                last.append(_describe(exc))
                raise self._attempt_failed(exc, connecting=True) from None
            return pool

        # A limits object of its own: connecting is not a request of the run (no latency).
        pool = await call(
            send,
            lambda pool: pool,
            policy=self._policy,
            limits=Limits(concurrency=1),
            source=self.name,
            on_retry=self._retrying,
        )
        if isinstance(pool, Failure):
            raise PostgresUnavailable(
                self.name,
                f"cannot connect to PostgreSQL at {self._server} "
                f"({last[-1] if last else pool.reason}; {pool.attempts} attempts)",
                "check that it is running and the dsn's host and port",
            )
        return pool

    async def _check_table(self, conn: Any) -> None:
        config = self.config
        assert config.table is not None and config.key is not None
        where = f"source '{self.name}'"
        found = await conn.fetchrow(
            "SELECT c.oid, n.nspname FROM pg_catalog.pg_class c"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relname = $1 AND c.relkind IN ('r', 'v', 'm', 'p', 'f')"
            " AND CASE WHEN $2::text IS NULL THEN pg_catalog.pg_table_is_visible(c.oid)"
            " ELSE n.nspname = $2 END",
            config.table,
            config.schema,
        )
        if found is None:
            await self._no_table(conn, where)
        columns = {
            row[0]: row[1]
            for row in await conn.fetch(
                "SELECT a.attname, t.typname FROM pg_catalog.pg_attribute a"
                " JOIN pg_catalog.pg_type t ON t.oid = a.atttypid"
                " WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped"
                " ORDER BY a.attnum",
                found[0],
            )
        }
        self._relation = f"{_quote(found[1])}.{_quote(config.table)}"
        self._use_columns(columns, config.key, f"table '{config.table}'")

    async def _no_table(self, conn: Any, where: str) -> NoReturn:
        config = self.config
        assert config.table is not None
        if config.schema is not None:
            schemas = [row[0] for row in await conn.fetch("SELECT nspname FROM pg_namespace")]
            if config.schema not in schemas:
                raise ConfigError(
                    f"{where}: no schema '{config.schema}' in {self._server}"
                    f"{_suggest(config.schema, schemas)}"
                )
        tables = [
            row[0]
            for row in await conn.fetch(
                "SELECT c.relname FROM pg_catalog.pg_class c"
                " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f')"
                " AND CASE WHEN $1::text IS NULL THEN pg_catalog.pg_table_is_visible(c.oid)"
                " ELSE n.nspname = $1 END",
                config.schema,
            )
        ]
        place = f"schema '{config.schema}'" if config.schema else "the search_path"
        raise ConfigError(
            f"{where}: no table '{config.table}' in {place} of {self._server}"
            f"{_suggest(config.table, tables)}"
        )

    async def _check_query(self, conn: Any) -> None:
        import asyncpg

        where = f"source '{self.name}'"
        query = self.config.query
        assert query is not None
        query = query.strip().rstrip(";").strip()
        try:
            statement = await conn.prepare(query)
        except asyncpg.PostgresError as exc:
            self._raise_rejected(exc)
            raise ConfigError(f"{where}: the query does not prepare: {_describe(exc)}") from None
        if len(statement.get_parameters()) != 1:
            raise ConfigError(
                f"{where}: the query must have exactly one parameter, $1 (the IDs, text[]), "
                f"not {len(statement.get_parameters())}"
            )
        attributes = statement.get_attributes()
        names = [a.name for a in attributes]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ConfigError(
                f"{where}: the query returns two columns named '{duplicated[0]}'; "
                "give each an alias of its own"
            )
        key = self.config.key or names[0]
        self._relation = f"({query}\n)"  # a newline: the query may end in a -- comment
        self._use_columns({a.name: a.type.name for a in attributes}, key, "the query")

    def _use_columns(self, types: Mapping[str, str], key: str, what: str) -> None:
        where = f"source '{self.name}'"
        if key not in types:
            raise ConfigError(f"{where}: {what} has no key column '{key}'{_suggest(key, types)}")
        if types[key] not in KEY_TYPES:
            raise ConfigError(
                f"{where}: the key column '{key}' is {types[key]}; keys must be {KEY_TYPE_NAMES} "
                "(or cast it in a query)"
            )
        check_columns(self.config, types, where, what, _suggest)
        self._key = key
        self._key_type = KEY_TYPES[types[key]]
        self._cast = "" if types[key] in TEXT_KEYS else f"::{self._key_type}"
        self._valid = key_filter(types[key])
        self._columns = self.config.columns or tuple(c for c in types if c != key)
        rename = self.config.rename
        self._column_of = {rename.get(c, c): c for c in self._columns}

    async def _probe(self, conn: Any) -> None:
        """Run the full select once with no IDs: permissions, and the query's use of $1."""
        import asyncpg

        try:
            await conn.fetch(self._select(tuple(self._column_of)), [])
        except asyncpg.PostgresError as exc:
            self._raise_rejected(exc)
            cast = "bigint" if self._key_type == "text" else self._key_type
            hint = (
                f"; $1 is the array of IDs as text[]: cast it for a non-text key, e.g. "
                f"WHERE id = ANY($1::{cast}[])"
                if self.config.query is not None
                else ""
            )
            raise ConfigError(
                f"source '{self.name}': the select does not run: {_describe(exc)}{hint}"
            ) from None

    def _select(self, names: tuple[str, ...]) -> str:
        """``SELECT ord, <the columns of names>``, joining the asked IDs to the table or query."""
        select = self._selects.get(names)
        if select is None:
            columns = [self._column_of[n] for n in names if n in self._column_of]
            quoted = "".join(f", q.{_quote(c)}" for c in columns)
            select = self._selects[names] = (
                f"SELECT ids.ord{quoted} FROM unnest($1::text[]) WITH ORDINALITY AS ids(asked, ord)"
                f" JOIN {self._relation} AS q ON q.{_quote(self._key)} = ids.asked{self._cast}"
            )
        return select

    def provides(self) -> frozenset[str]:
        """The feature columns, renamed to model names."""
        return frozenset(self._column_of)

    # -- fetching ------------------------------------------------------------------------------

    async def fetch(self, ids: Sequence[str], names: Sequence[str]) -> Fetched:
        """One query per ``batch_size`` IDs; IDs not in the table (or not keys) are not found."""
        wanted = tuple(names)
        provided = tuple(n for n in wanted if n in self._column_of)
        select = self._select(provided)
        parts = split(ids, self.batch_size)
        if len(parts) == 1:  # the usual case: a chunk is one query
            found_rows, failed = await self._part(parts[0], select)
        else:
            found_rows, failed = {}, {}
            for rows, failed_ids in await asyncio.gather(
                *(self._part(part, select) for part in parts)
            ):
                for asked, row in rows.items():
                    found_rows.setdefault(asked, row)
                failed.update(failed_ids)
        failures = {}
        if failed:
            failures = {
                i: failed[asked]
                for i, asked in enumerate(ids)
                if asked in failed and asked not in found_rows
            }
        return Fetched.of_rows(ids, found_rows, wanted, provided, failures)

    async def _part(
        self, ids: Sequence[str], select: str
    ) -> tuple[dict[str, Any], dict[str, Failure]]:
        asked = [i for i in dict.fromkeys(ids) if self._valid(i)]
        if not asked:
            return {}, {}
        return await self._rows(asked, select)

    async def _rows(
        self, asked: list[str], select: str
    ) -> tuple[dict[str, Any], dict[str, Failure]]:
        """The rows of ``asked`` (asked ID -> row led by its position), or why they failed."""
        import asyncpg

        pool = self._pool
        if pool is None:
            raise RuntimeError(f"source '{self.name}' was not opened")
        timeout = self.config.timeout

        async def send() -> list[Any] | _Refused:
            try:
                async with asyncio.timeout(timeout), pool.acquire() as conn:
                    rows: list[Any] = await conn.fetch(select, asked)
                    return rows
            except asyncpg.DataError as exc:  # a value PostgreSQL will not take
                return _Refused(exc.sqlstate)
            except asyncpg.InterfaceError as exc:
                if isinstance(exc, ValueError):  # asyncpg could not encode a value
                    return _Refused("22021")
                raise self._attempt_failed(exc) from None
            except Exception as exc:
                raise self._attempt_failed(exc) from None

        answer = await call(
            send,
            lambda rows: rows,
            policy=self._policy,
            limits=self._limits,
            source=self.name,
            on_retry=self._retrying,
            health=self._health,
        )
        if isinstance(answer, Failure):
            if answer.reason in LOST:
                raise PostgresUnavailable(
                    self.name,
                    f"lost PostgreSQL at {self._server} ({answer.reason} after "
                    f"{answer.attempts} attempts); it looks down",
                    "progress is kept: when it is back",
                )
            return {}, dict.fromkeys(asked, answer)
        if isinstance(answer, _Refused):
            return await self._refused(asked, select, answer)
        # Asked ID -> its row, in C; reversed, so that where one ID matched several rows the
        # first row PostgreSQL returned is the one kept.
        by_position = ["", *asked].__getitem__  # ord counts from 1
        answer.reverse()
        asked_ids = map(by_position, map(itemgetter(0), answer))
        return dict(zip(asked_ids, answer, strict=True)), {}

    async def _refused(
        self, asked: list[str], select: str, refused: _Refused
    ) -> tuple[dict[str, Any], dict[str, Failure]]:
        """Halve a batch PostgreSQL refused until the IDs it refuses are alone."""
        if len(asked) == 1:
            log.debug("source '%s': PostgreSQL refused an ID (%s)", self.name, refused.sqlstate)
            if refused.sqlstate in NOT_A_KEY_STATES:
                return {}, {}  # not a value of the key's type: not found
            return {}, {asked[0]: Failure(f"sqlstate_{refused.sqlstate}")}
        half = len(asked) // 2
        first, second = await asyncio.gather(
            self._rows(asked[:half], select), self._rows(asked[half:], select)
        )
        return {**first[0], **second[0]}, {**first[1], **second[1]}

    def _attempt_failed(self, exc: BaseException, *, connecting: bool = False) -> AttemptFailed:
        """The failed attempt an exception of connecting or querying stands for (or the error
        that stops the run: rejected credentials; when connecting, a dsn that cannot work)."""
        import asyncpg

        self._raise_rejected(exc)
        if isinstance(exc, TimeoutError):
            return AttemptFailed("timeout", retryable=True)
        if isinstance(exc, asyncpg.QueryCanceledError):
            return AttemptFailed("statement_timeout", retryable=True)
        if connecting and isinstance(exc, asyncpg.InvalidCatalogNameError):
            raise ConfigError(
                f"source '{self.name}': {_describe(exc)} on {self._server}; check the dsn"
            ) from None
        # OverflowError: a dsn port past 65535 (the socket's own check; asyncpg lets it pass)
        if connecting and isinstance(
            exc, asyncpg.ClientConfigurationError | ValueError | OverflowError
        ):
            raise ConfigError(
                f"source '{self.name}': the dsn cannot be used ({_describe(exc)})"
            ) from None
        connection_lost = (
            OSError,  # refused, reset, unknown host
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,  # the connection is closed
            asyncpg.CannotConnectNowError,  # starting up or shutting down
            asyncpg.AdminShutdownError,
            asyncpg.CrashShutdownError,
            asyncpg.TooManyConnectionsError,
        )
        if isinstance(exc, connection_lost):
            return AttemptFailed("connection_error", retryable=True)
        if isinstance(exc, asyncpg.TransactionRollbackError):  # serialization, deadlock
            return AttemptFailed("postgres_conflict", retryable=True)
        log.debug("source '%s': %s", self.name, _describe(exc))
        state = getattr(exc, "sqlstate", None)
        return AttemptFailed(f"sqlstate_{state}" if state else "query_error", retryable=False)

    def _raise_rejected(self, exc: BaseException) -> None:
        """Stop the run when PostgreSQL refuses our credentials or permissions."""
        import asyncpg

        if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):  # 28000, 28P01
            raise PostgresRejected(
                self.name,
                f"PostgreSQL at {self._server} rejected our credentials ({_describe(exc)})",
                "check the user and password of its dsn",
            ) from None
        if isinstance(exc, asyncpg.InsufficientPrivilegeError):
            raise PostgresRejected(
                self.name,
                f"PostgreSQL refused access ({_describe(exc)})",
                "grant SELECT on the table to the dsn's user",
            ) from None

    def _retrying(self, failed: AttemptFailed, attempt: int) -> None:
        self._stats.retries += 1
        log.debug(
            "source '%s': attempt %d failed (%s); retrying", self.name, attempt, failed.reason
        )

    async def close(self) -> None:
        """Close the pool (at once if the server does not answer)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                async with asyncio.timeout(CLOSE_SECONDS):
                    await pool.close()
            except TimeoutError:
                pool.terminate()


async def _init_connection(conn: Any) -> None:
    """numeric as float: parsed from PostgreSQL's text, correctly rounded (not Decimal)."""
    await conn.set_type_codec(
        "numeric", schema="pg_catalog", encoder=str, decoder=float, format="text"
    )


def _describe(exc: BaseException) -> str:
    """An exception as a short phrase: PostgreSQL's message, or the OS error's."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text


__all__ = [
    "PostgresRejected",
    "PostgresSource",
    "PostgresUnavailable",
    "key_filter",
]
