"""The bar batchscore must clear: an expert's afternoon script for scoring IDs over HTTP.

aiohttp with an ``asyncio.Semaphore(concurrency)`` around every request, orjson, feature rows
assembled into a numpy matrix column by column, ``predict`` on batches of ~1,024 rows in an
executor of ``--workers`` threads (LightGBM releases the GIL, so predicts run beside the event
loop and, with two workers, beside each other), rows written to CSV as they are scored.  No
retries, no input order, no resume, no error file: an ID whose request fails is skipped and counted.
Two modes:

* ``get``: ``GET {url}`` per ID (``url`` contains ``{id}``), body ``{"id", "features": {...}}``;
* ``batch``: ``POST {url}`` with ``{"ids": [...]}`` per ``--batch-size`` IDs, body
  ``{"results": [{"id", "features": {...}}, ...]}``.

Usage::

    python bench/baseline_expert.py get  IDS URL MODEL OUT [--concurrency 64]
    python bench/baseline_expert.py batch IDS URL MODEL OUT [--concurrency 16] [--batch-size 100]
    (both: [--threads LIGHTGBM_THREADS] [--workers SCORING_THREADS])

Prints one JSON line on stdout: ``{"scored": N, "failed": N, "seconds": S}`` (``seconds``
excludes interpreter start-up and imports).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import math
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import lightgbm as lgb
import numpy as np
import orjson

SCORE_ROWS = 1024


class Scorer:
    """Column-wise matrix assembly and batch predict; writes ``id,score`` rows."""

    def __init__(self, model: str, out: str, threads: int) -> None:
        self.booster = lgb.Booster(model_file=model)
        self.names = self.booster.feature_name()
        cat_index = self.booster.params.get("categorical_feature") or []
        categories = self.booster.pandas_categorical or []
        self.codes: dict[int, dict[str, float]] = {
            int(j): {v: float(code) for code, v in enumerate(cats)}
            for j, cats in zip(cat_index, categories, strict=True)
        }
        self.threads = threads
        self.file = open(out, "w", newline="")  # noqa: SIM115 - closed in close()
        self.writer = csv.writer(self.file, lineterminator="\n")
        self.writer.writerow(["id", "score"])
        self.scored = 0
        self.lock = threading.Lock()

    def score(self, ids: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
        """Runs in the executor thread."""
        matrix = np.empty((len(rows), len(self.names)), dtype=np.float64)
        for j, name in enumerate(self.names):
            column = [row.get(name) for row in rows]
            codes = self.codes.get(j)
            if codes is None:
                matrix[:, j] = np.array(column, dtype=np.float64)  # None -> NaN
            else:
                matrix[:, j] = [codes.get(v, math.nan) for v in column]
        kwargs = {"num_threads": self.threads} if self.threads else {}
        scores = self.booster.predict(matrix, **kwargs)
        with self.lock:  # several scoring threads write one file
            self.writer.writerows(zip(ids, scores.tolist(), strict=True))
            self.scored += len(ids)

    def close(self) -> None:
        self.file.close()


async def run(args: argparse.Namespace, ids: list[str]) -> tuple[int, int]:
    scorer = Scorer(args.model, args.out, args.threads)
    pool = ThreadPoolExecutor(max_workers=args.workers)
    loop = asyncio.get_running_loop()
    scoring: list[asyncio.Future[None]] = []
    buf_ids: list[str] = []
    buf_rows: list[dict[str, Any]] = []
    failed = 0
    sem = asyncio.Semaphore(args.concurrency)

    def add(ident: str, features: dict[str, Any]) -> None:
        nonlocal buf_ids, buf_rows
        buf_ids.append(ident)
        buf_rows.append(features)
        if len(buf_ids) >= SCORE_ROWS:
            scoring.append(loop.run_in_executor(pool, scorer.score, buf_ids, buf_rows))
            buf_ids, buf_rows = [], []

    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def get_one(ident: str) -> None:
            nonlocal failed
            try:
                async with session.get(args.url.replace("{id}", ident)) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        failed += 1
                        return
                add(ident, orjson.loads(body)["features"])
            except (aiohttp.ClientError, orjson.JSONDecodeError, KeyError):
                failed += 1
            finally:
                sem.release()

        async def post_batch(chunk: list[str]) -> None:
            nonlocal failed
            try:
                async with session.post(
                    args.url,
                    data=orjson.dumps({"ids": chunk}),
                    headers={"Content-Type": "application/json"},
                ) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        failed += len(chunk)
                        return
                results = orjson.loads(body)["results"]
                for item in results:
                    add(item["id"], item["features"])
                failed += len(chunk) - len(results)
            except (aiohttp.ClientError, orjson.JSONDecodeError, KeyError):
                failed += len(chunk)
            finally:
                sem.release()

        tasks: set[asyncio.Task[None]] = set()
        if args.mode == "get":
            units: list[Any] = ids
        else:
            units = [ids[i : i + args.batch_size] for i in range(0, len(ids), args.batch_size)]
        for unit in units:
            await sem.acquire()
            task = asyncio.create_task(get_one(unit) if args.mode == "get" else post_batch(unit))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*tasks)
    if buf_ids:
        scoring.append(loop.run_in_executor(pool, scorer.score, buf_ids, buf_rows))
    await asyncio.gather(*scoring)
    pool.shutdown()
    scorer.close()
    return scorer.scored, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("mode", choices=("get", "batch"))
    parser.add_argument("ids", help="file with one ID per line")
    parser.add_argument("url", help="GET URL with {id}, or the POST batch URL")
    parser.add_argument("model", help="LightGBM model file")
    parser.add_argument("out", help="output CSV (id,score)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=100, help="IDs per POST (batch mode)")
    parser.add_argument("--threads", type=int, default=1, help="LightGBM threads, 0 = all cores")
    parser.add_argument("--workers", type=int, default=1, help="scoring threads (executor size)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with open(args.ids, encoding="utf-8") as f:
        ids = [line.strip() for line in f if line.strip()]
    scored, failed = asyncio.run(run(args, ids))
    seconds = time.perf_counter() - started
    sys.stdout.write(
        orjson.dumps({"scored": scored, "failed": failed, "seconds": seconds}).decode() + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
