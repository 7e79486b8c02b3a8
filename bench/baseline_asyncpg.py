"""The bar for PostgreSQL sources: an expert's asyncpg script with ``ANY($1)`` batches of 1,000.

Reads the IDs, queries them 1,000 at a time (``WHERE key = ANY($1)``, a prepared statement) on a
pool of ``--concurrency`` connections with that many queries in flight, assembles each batch's
rows column by column into a numpy matrix (categoricals mapped to the model's
``pandas_categorical`` codes, NULL -> NaN), predicts it and writes its ``id,score`` rows in a
one-thread executor (LightGBM's default threads: all cores) while the next queries run, in input
order.  IDs not in the table are skipped and counted.  No retries, no resume, no ordering window
beyond the queries in flight.

Usage::

    python bench/baseline_asyncpg.py IDS DSN TABLE KEY MODEL OUT [--concurrency 8] [--threads 0]

Prints one JSON line on stdout: ``{"scored": N, "failed": N, "seconds": S}`` (``seconds``
excludes interpreter start-up and imports).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncpg
import lightgbm as lgb
import numpy as np

QUERY_IDS = 1000


async def run(args: argparse.Namespace, ids: list[str], writer: Any) -> tuple[int, int]:
    booster = lgb.Booster(model_file=args.model)
    names = booster.feature_name()
    cat_index = booster.params.get("categorical_feature") or []
    codes = {
        int(j): {v: float(code) for code, v in enumerate(cats)}
        for j, cats in zip(cat_index, booster.pandas_categorical or [], strict=True)
    }
    kwargs = {"num_threads": args.threads} if args.threads else {}
    select = (
        f'SELECT "{args.key}", '
        + ", ".join(f'"{n}"' for n in names)
        + f' FROM "{args.table}" WHERE "{args.key}" = ANY($1::text[])'
    )
    batches = [ids[i : i + QUERY_IDS] for i in range(0, len(ids), QUERY_IDS)]
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(1)  # one thread: batches are scored and written in order
    pool = await asyncpg.create_pool(args.dsn, min_size=args.concurrency, max_size=args.concurrency)
    failed = 0

    async def fetch(batch: list[str]) -> list[Any]:
        rows: list[Any] = await pool.fetch(select, batch)
        return rows

    def score(kept: list[str], rows: list[Any]) -> int:
        """Runs in the executor thread: assemble, predict, write."""
        columns = list(zip(*rows, strict=True))
        matrix = np.empty((len(rows), len(names)), dtype=np.float64)
        for j in range(len(names)):
            column = columns[j + 1]
            if j in codes:
                matrix[:, j] = [codes[j].get(v, math.nan) for v in column]
            else:
                matrix[:, j] = np.array(column, dtype=np.float64)  # None -> NaN, bool -> 0/1
        scores = booster.predict(matrix, **kwargs)
        writer.writerows(zip(kept, scores.tolist(), strict=True))
        return len(kept)

    pending: deque[tuple[list[str], asyncio.Task[list[Any]]]] = deque()
    scoring: deque[asyncio.Future[int]] = deque()
    upcoming = iter(batches)
    for batch in upcoming:  # fill the pipeline: `concurrency` queries in flight
        pending.append((batch, asyncio.create_task(fetch(batch))))
        if len(pending) >= args.concurrency:
            break
    scored = 0
    while pending:
        batch, task = pending.popleft()
        found = {row[0]: row for row in await task}
        following = next(upcoming, None)
        if following is not None:
            pending.append((following, asyncio.create_task(fetch(following))))
        kept = [ident for ident in batch if ident in found]
        failed += len(batch) - len(kept)
        if kept:
            scoring.append(loop.run_in_executor(executor, score, kept, [found[i] for i in kept]))
        while len(scoring) > 2:  # a bounded backlog of batches to score
            scored += await scoring.popleft()
    for future in scoring:
        scored += await future
    await pool.close()
    executor.shutdown()
    return scored, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("ids", help="file with one ID per line")
    parser.add_argument("dsn", help="postgresql://user:password@host:port/database")
    parser.add_argument("table")
    parser.add_argument("key")
    parser.add_argument("model", help="LightGBM model file")
    parser.add_argument("out", help="output CSV (id,score)")
    parser.add_argument("--concurrency", type=int, default=8, help="connections and queries")
    parser.add_argument("--threads", type=int, default=0, help="LightGBM threads, 0 = all cores")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with open(args.ids, encoding="utf-8") as f:
        ids = [line.strip() for line in f if line.strip()]
    with open(args.out, "w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["id", "score"])
        scored, failed = asyncio.run(run(args, ids, writer))
    seconds = time.perf_counter() - started
    print(json.dumps({"scored": scored, "failed": failed, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
