"""SQLite feature source: a read-only table, IDs fetched in batches via aiosqlite.

Table, key and column names come from config, so they are checked against the schema and quoted;
they are never pasted into SQL as given.

SQLite decides which row an ID finds, never Python: a batch of IDs is joined to the table as a
list of text values (``json_each``, or a ``VALUES`` list where SQLite has no JSON functions),
and each answer row carries the ID it was found for.  So keys of every declared type and
collation work exactly as SQLite compares them (an ``INTEGER`` key finds ``42`` for the ID
``42``; a ``COLLATE NOCASE`` key finds ``abc`` for ``ABC``; a ``REAL`` key finds ``1.5``), and an
ID that is not a value of the key's type (``1_0``, ``٣``, ``99999999999999999999`` for an
integer key) finds nothing: it is not found, never another row.  Where one ID matches several
rows (a ``NOCASE`` key holding ``abc`` and ``ABC``), the first row SQLite returns is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from batchscore.configtools import suggest
from batchscore.errors import ConfigError
from batchscore.sources import Failure, Fetched, check_columns, split
from batchscore.sources.configs import SqliteConfig
from batchscore.sources.limits import Limits

log = logging.getLogger("batchscore.sources")


def _reason(exc: sqlite3.Error) -> str:
    """A failure reason for an SQLite error (``sqlite_busy`` for a locked database)."""
    text = str(exc).lower()
    return "sqlite_busy" if "locked" in text or "busy" in text else "sqlite_error"


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class SqliteSource:
    """Reads feature rows from one SQLite table."""

    def __init__(self, config: SqliteConfig, limits: Limits) -> None:
        self.config = config
        self.name = config.name
        self.batch_size = config.batch_size
        self._limits = limits
        self._db: Any = None
        self._columns: tuple[str, ...] = ()
        self._json = True
        self._selects: dict[tuple[str, ...], str] = {}

    async def open(self) -> None:
        """Open read-only and check the table, key and columns against the schema."""
        from batchscore.dbopen import open_sqlite

        path = Path(self.config.path)
        if not path.is_file():
            raise ConfigError(
                f"source '{self.name}': SQLite file {self.config.path} does not exist"
            )
        uri = path.resolve().as_uri() + "?mode=ro"
        try:
            self._db = await open_sqlite(uri, uri=True)
        except sqlite3.Error as exc:
            raise ConfigError(
                f"source '{self.name}': {self.config.path} cannot be opened ({exc})"
            ) from None
        try:
            # Lookups by key are random reads: through mmap, not a read() call per page
            # (bench/RESULTS.md, P3).  A file truncated by another process while mapped can
            # kill the process (SIGBUS): mmap_size = 0 turns it off.
            await self._db.execute(f"PRAGMA mmap_size = {int(self.config.mmap_size)}")
            await self._check_schema()
        except sqlite3.Error as exc:
            await self.close()
            raise ConfigError(
                f"source '{self.name}': {self.config.path} cannot be read ({exc}); "
                "check the file and the table"
            ) from None
        except BaseException:
            await self.close()  # aiosqlite's thread would keep the process alive
            raise

    async def _check_schema(self) -> None:
        where = f"source '{self.name}'"
        cursor = await self._db.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')"
        )
        tables = [row[0] for row in await cursor.fetchall()]
        if self.config.table not in tables:
            raise ConfigError(
                f"{where}: no table '{self.config.table}' in {self.config.path}"
                f"{suggest(self.config.table, tables)}"
            )
        cursor = await self._db.execute(f"PRAGMA table_info({_quote(self.config.table)})")
        schema = {row[1]: str(row[2]).upper() for row in await cursor.fetchall()}
        if not schema:  # a view whose tables are gone answers PRAGMA with nothing
            await self._db.execute(f"SELECT * FROM {_quote(self.config.table)} LIMIT 0")
        if self.config.key not in schema:
            raise ConfigError(
                f"{where}: table '{self.config.table}' has no key column '{self.config.key}'"
                f"{suggest(self.config.key, schema)}"
            )
        check_columns(self.config, schema, where, f"table '{self.config.table}'", suggest)
        self._json = await self._has_json()
        if not self._json:  # one bound parameter per ID: stay within this build's limit
            self.batch_size = min(self.batch_size, await self._variable_limit())
        self._columns = self.config.columns or tuple(c for c in schema if c != self.config.key)
        rename = self.config.rename
        self._column_of = {rename.get(c, c): c for c in self._columns}  # model name -> column

    async def _has_json(self) -> bool:
        """Whether this SQLite has ``json_each`` (built in since 3.38; most builds before)."""
        try:
            await self._db.execute_fetchall("SELECT value FROM json_each('[]')")
        except sqlite3.Error:
            return False
        return True

    async def _variable_limit(self) -> int:
        """This SQLite build's limit on bound parameters (999 on some old builds)."""

        def read() -> int:
            with contextlib.closing(sqlite3.connect(":memory:")) as db:
                return db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)

        return await asyncio.to_thread(read)

    def _select(self, names: tuple[str, ...], count: int) -> str:
        """``SELECT asked, <the columns of names>``, joining the asked IDs to the table."""
        columns = [self._column_of[n] for n in names if n in self._column_of]
        quoted = ", ".join(f"t.{_quote(c)}" for c in columns)
        select = f"SELECT ids.value{', ' if quoted else ''}{quoted} FROM "
        if self._json:
            asked = "json_each(?) AS ids"
        else:  # one bound text value per ID
            asked = (
                "(SELECT column1 AS value FROM (VALUES " + ",".join(["(?)"] * count) + ")) AS ids"
            )
        # CROSS JOIN keeps SQLite from reordering: it looks each ID up in the key's index.
        return (
            f"{select}{asked} CROSS JOIN {_quote(self.config.table)} AS t "
            f"ON t.{_quote(self.config.key)} = ids.value"
        )

    def provides(self) -> frozenset[str]:
        """The feature columns, renamed to model names."""
        rename = self.config.rename
        return frozenset(rename.get(c, c) for c in self._columns)

    async def fetch(self, ids: Sequence[str], names: Sequence[str]) -> Fetched:
        """One query per ``batch_size`` IDs; IDs not in the table are not found."""
        wanted = tuple(names)
        parts = split(ids, self.batch_size)
        answers = await asyncio.gather(*(self._query(part, wanted) for part in parts))
        found_rows: dict[str, tuple[Any, ...]] = {}
        failures: dict[int, Failure] = {}
        offset = 0
        for part, (rows, failure) in zip(parts, answers, strict=True):
            for row in rows:
                found_rows.setdefault(row[0], row)  # the first row SQLite matched
            if failure is not None:
                failures.update((offset + i, failure) for i in range(len(part)))
            offset += len(part)
        provided = [n for n in wanted if n in self._column_of]
        return Fetched.of_rows(ids, found_rows, wanted, provided, failures)

    async def _query(
        self, ids: Sequence[str], names: tuple[str, ...]
    ) -> tuple[list[Any], Failure | None]:
        """The rows, each led by the asked ID that found it (or why the query failed)."""
        unique = list(dict.fromkeys(ids))
        params: list[str] = [orjson.dumps(unique).decode()] if self._json else unique
        async with self._limits.request(self.name):
            try:
                rows = await self._db.execute_fetchall(self._select(names, len(unique)), params)
            except sqlite3.Error as exc:  # a locked or damaged database: these IDs fail
                log.debug("source '%s': %s", self.name, exc)
                return [], Failure(_reason(exc))
        return list(rows), None

    async def close(self) -> None:
        """Close the connection."""
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()


__all__ = ["SqliteConfig", "SqliteSource"]
