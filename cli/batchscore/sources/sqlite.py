"""SQLite feature source: a read-only table, IDs fetched in batches with ``IN (...)`` via aiosqlite.

Table, key and column names come from config, so they are checked against the schema and quoted;
they are never pasted into SQL as given.  Integer and text keys both work.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from batchscore.configtools import build, suggest
from batchscore.errors import ConfigError
from batchscore.sources import Fetched, split
from batchscore.sources.limits import Limits

MAX_BATCH = 30_000  # below SQLite's limit on bound parameters (32,766)


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
    rename: dict[str, str] = field(default_factory=dict)
    wins: tuple[str, ...] = ()


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
        self._integer_key = False
        self._selects: dict[tuple[str, ...], str] = {}

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str, limits: Limits) -> SqliteSource:
        """Validate a ``[[sources]]`` table and build the source."""
        config = build(SqliteConfig, {"name": "sqlite", **table}, where)
        if not 1 <= config.batch_size <= MAX_BATCH:
            raise ConfigError(f"{where}.batch_size must be between 1 and {MAX_BATCH}")
        return cls(config, limits)

    async def open(self) -> None:
        """Open read-only and check the table, key and columns against the schema."""
        import aiosqlite

        path = Path(self.config.path)
        if not path.is_file():
            raise ConfigError(
                f"source '{self.name}': SQLite file {self.config.path} does not exist"
            )
        uri = path.resolve().as_uri() + "?mode=ro"
        self._db = await aiosqlite.connect(uri, uri=True)
        try:
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
        for column in self.config.columns:
            if column not in schema:
                raise ConfigError(
                    f"{where}: table '{self.config.table}' has no column '{column}'"
                    f"{suggest(column, schema)}"
                )
        self._integer_key = "INT" in schema[self.config.key]
        self._columns = self.config.columns or tuple(c for c in schema if c != self.config.key)
        rename = self.config.rename
        self._column_of = {rename.get(c, c): c for c in self._columns}  # model name -> column

    def _select(self, names: tuple[str, ...]) -> str:
        """``SELECT key, <the columns of names> FROM table WHERE key IN `` (made once per set)."""
        select = self._selects.get(names)
        if select is None:
            columns = [self._column_of[n] for n in names if n in self._column_of]
            quoted = ", ".join(_quote(c) for c in (self.config.key, *columns))
            select = self._selects[names] = (
                f"SELECT {quoted} FROM {_quote(self.config.table)} "
                f"WHERE {_quote(self.config.key)} IN "
            )
        return select

    def provides(self) -> frozenset[str]:
        """The feature columns, renamed to model names."""
        rename = self.config.rename
        return frozenset(rename.get(c, c) for c in self._columns)

    def _key(self, value: str) -> str | int | None:
        if not self._integer_key:
            return value
        try:
            return int(value)
        except ValueError:
            return None

    async def fetch(self, ids: Sequence[str], names: Sequence[str]) -> Fetched:
        """One ``IN (...)`` query per ``batch_size`` IDs; IDs not in the table are not found."""
        wanted = tuple(names)
        keys = [self._key(i) for i in ids]
        parts = await asyncio.gather(
            *(self._query(part, wanted) for part in split(keys, self.batch_size))
        )
        found_rows: dict[Any, tuple[Any, ...]] = {}
        for rows in parts:
            found_rows.update((row[0], row) for row in rows)
        ordered = [found_rows.get(k) for k in keys]
        found = np.fromiter((row is not None for row in ordered), np.bool_, len(ordered))
        provided = [n for n in wanted if n in self._column_of]
        blank = (None,) * (1 + len(provided))
        columns: dict[str, Sequence[Any]] = dict.fromkeys(wanted, [None] * len(ids))
        if ordered:
            # Rows to columns with zip, in C: no Python work per value.
            transposed = list(zip(*(row or blank for row in ordered), strict=True))
            columns.update(zip(provided, transposed[1:], strict=True))
        return Fetched(found, {}, columns)

    async def _query(self, keys: Sequence[Any], names: tuple[str, ...]) -> list[Any]:
        """The rows (key first) of the keys that are in the table."""
        unique = list({k for k in keys if k is not None})
        if not unique:
            return []
        placeholders = "(" + ",".join("?" * len(unique)) + ")"
        async with self._limits.request(self.name):
            return list(await self._db.execute_fetchall(self._select(names) + placeholders, unique))

    async def close(self) -> None:
        """Close the connection."""
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()


__all__ = ["SqliteConfig", "SqliteSource"]
