"""SQLite output: a ``predictions`` table, written through aiosqlite.

The database is built under a temporary name beside the final path and renamed into place on
success.  A sync is a committed transaction; its length is the number of rows committed, so a
resumed run deletes rows past that point and appends.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any

from batchscore.atomic import fsync_folder
from batchscore.errors import LeftoverStateError
from batchscore.sinks import Columns, ScoredBatch
from batchscore.sinks.files import (
    refuse_existing,
    shorter_than_committed,
    temp_path,
    write_error,
)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class SqliteSink:
    """Rows into table ``predictions`` of a new SQLite file."""

    TABLE = "predictions"

    def __init__(self, path: Path, columns: Columns, *, overwrite: bool) -> None:
        self.path = path
        self.temp = temp_path(path)
        self.columns = columns
        self.overwrite = overwrite
        self._db: Any = None
        self._rows = 0

    def _column_types(self) -> list[tuple[str, str]]:
        types = {"text": "TEXT", "kept": "TEXT", "float": "REAL"}
        return [(name, types[kind]) for name, kind in self.columns.kinds()]

    async def open(self, resume_at: int | None = None) -> None:
        """Create the table (or take over a stopped run's database, cut back to ``resume_at``)."""
        from batchscore.dbopen import open_sqlite

        refuse_existing(self.path, self.overwrite)
        if resume_at is None:
            with contextlib.suppress(FileNotFoundError):
                self.temp.unlink()
        try:
            self._db = await open_sqlite(self.temp, isolation_level="DEFERRED")
            await self._db.execute("PRAGMA synchronous = FULL")
            body = ", ".join(f"{_quote(n)} {t}" for n, t in self._column_types())
            await self._db.execute(f"CREATE TABLE IF NOT EXISTS {self.TABLE} ({body})")
            if resume_at is not None:
                cursor = await self._db.execute(
                    f"SELECT count(*) FROM {self.TABLE} WHERE rowid <= ?", (resume_at,)
                )
                (kept,) = await cursor.fetchone()
                if kept < resume_at:
                    raise shorter_than_committed(self.temp, f"{kept:,} rows", f"{resume_at:,}")
                await self._db.execute(f"DELETE FROM {self.TABLE} WHERE rowid > ?", (resume_at,))
                self._rows = resume_at
            await self._db.commit()
        except BaseException as exc:
            await self.abort()  # an open connection's thread keeps the process from exiting
            if isinstance(exc, sqlite3.DatabaseError) and not isinstance(
                exc, sqlite3.OperationalError
            ):  # "file is not a database", "malformed": the file, not the disk
                raise shorter_than_committed(
                    self.temp, f"no readable table ({exc})", f"{resume_at or 0:,} rows"
                ) from None
            if not isinstance(exc, Exception) or isinstance(exc, LeftoverStateError):
                raise
            raise write_error(self.path, OSError(str(exc))) from None

    async def write(self, batch: ScoredBatch) -> None:
        """Insert the batch's rows (committed at the next sync)."""
        width = len(self.columns.names)
        placeholders = ",".join("?" * width)
        try:
            await self._db.executemany(
                f"INSERT INTO {self.TABLE} VALUES ({placeholders})",
                zip(*batch.columns(self.columns, kept_as_text=True), strict=True),
            )
        except Exception as exc:
            raise write_error(self.path, OSError(str(exc))) from None
        self._rows += len(batch)

    async def sync(self) -> int:
        """Commit the transaction; the number of rows is the resume point."""
        try:
            await self._db.commit()
        except Exception as exc:
            raise write_error(self.path, OSError(str(exc))) from None
        return self._rows

    async def commit(self) -> None:
        """Commit, close, rename into place."""
        await self.sync()
        await self._db.close()
        self._db = None
        try:
            os.replace(self.temp, self.path)
            fsync_folder(self.path.parent)
        except OSError as exc:
            raise write_error(self.path, exc) from None

    async def finish(self, resume_at: int) -> None:
        """Rename the complete database into place (if a kill came before that)."""
        if self.temp.exists():
            await self.open(resume_at)
            await self.commit()

    async def abort(self) -> None:
        """Close, keeping the committed rows for ``--resume``."""
        if self._db is not None:
            db, self._db = self._db, None
            with contextlib.suppress(Exception):
                await db.close()
