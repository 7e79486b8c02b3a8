"""Copy a SQLite feature table (by default the sample store) into PostgreSQL, with typed columns.

    python sample_data/load_postgres.py "postgresql://postgres:${PGPASSWORD}@127.0.0.1:5432/features"
    batchscore score sample_data/ids.txt -c configs/postgres.toml -o out/pg-scores.csv

Column types follow the SQLite declarations: INTEGER is bigint (boolean for ``is_*`` and
``has_*`` flags), REAL is double precision, TEXT is text; the key gets a primary key.  The
table is replaced if it exists (``--keep`` refuses instead).  Needs asyncpg (a batchscore
dependency).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TYPES = {"INTEGER": "bigint", "REAL": "double precision", "TEXT": "text"}


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def pg_type(name: str, declared: str) -> str:
    kind = TYPES.get(declared.upper(), "text")
    if kind == "bigint" and name.startswith(("is_", "has_")):
        return "boolean"
    return kind


async def load(dsn: str, db: Path, table: str, key: str, keep: bool, batch: int) -> int:
    import asyncpg

    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as source:
        info = source.execute(f"PRAGMA table_info({quote(table)})").fetchall()
        if not info:
            raise SystemExit(f"no table {table} in {db}")
        columns = [(row[1], pg_type(row[1], row[2] or "")) for row in info]
        booleans = [i for i, (_, kind) in enumerate(columns) if kind == "boolean"]
        conn = await asyncpg.connect(dsn)
        try:
            if not keep:
                await conn.execute(f"DROP TABLE IF EXISTS {quote(table)}")
            ddl = ", ".join(f"{quote(n)} {t}" for n, t in columns)
            await conn.execute(f"CREATE TABLE {quote(table)} ({ddl}, PRIMARY KEY ({quote(key)}))")
            cursor = source.execute(f"SELECT * FROM {quote(table)}")
            copied = 0
            while rows := cursor.fetchmany(batch):
                records: list[Any] = rows
                if booleans:
                    records = [list(row) for row in rows]
                    for record in records:
                        for i in booleans:
                            if record[i] is not None:
                                record[i] = bool(record[i])
                await conn.copy_records_to_table(
                    table, records=records, columns=[n for n, _ in columns]
                )
                copied += len(rows)
            await conn.execute(f"ANALYZE {quote(table)}")
        finally:
            await conn.close()
    return copied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dsn", help="postgresql://user:password@host:port/database")
    parser.add_argument("--db", type=Path, default=HERE / "features.db")
    parser.add_argument("--table", default="customer_features")
    parser.add_argument("--key", default="customer_id")
    parser.add_argument("--keep", action="store_true", help="fail if the table exists")
    parser.add_argument("--batch", type=int, default=50_000, help="rows per COPY")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = asyncio.run(load(args.dsn, args.db, args.table, args.key, args.keep, args.batch))
    print(f"copied {rows:,} rows into {args.table} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
