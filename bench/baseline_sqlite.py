"""The bar for SQLite sources: an expert's script with sqlite3 ``IN (...)`` batches of 500.

Reads the IDs, queries them 500 at a time with ``WHERE key IN (?, ...)`` on one read-only
``sqlite3`` connection, assembles the rows column by column into a numpy matrix (categoricals
mapped to the model's ``pandas_categorical`` codes, NULL -> NaN), predicts every ~1,000 rows
with LightGBM's default threads (all cores; nothing else runs meanwhile) and writes
``id,score`` rows in input order.  IDs not in the table are skipped and counted.

Usage::

    python bench/baseline_sqlite.py IDS DB TABLE KEY MODEL OUT [--threads 0]

Prints one JSON line on stdout: ``{"scored": N, "failed": N, "seconds": S}`` (``seconds``
excludes interpreter start-up and imports).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

QUERY_IDS = 500
SCORE_ROWS = 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("ids", help="file with one ID per line")
    parser.add_argument("db", help="SQLite file")
    parser.add_argument("table")
    parser.add_argument("key")
    parser.add_argument("model", help="LightGBM model file")
    parser.add_argument("out", help="output CSV (id,score)")
    parser.add_argument("--threads", type=int, default=0, help="LightGBM threads, 0 = all cores")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    booster = lgb.Booster(model_file=args.model)
    names = booster.feature_name()
    cat_index = booster.params.get("categorical_feature") or []
    codes = {
        int(j): {v: float(code) for code, v in enumerate(cats)}
        for j, cats in zip(cat_index, booster.pandas_categorical or [], strict=True)
    }
    kwargs = {"num_threads": args.threads} if args.threads else {}
    con = sqlite3.connect(Path(args.db).resolve().as_uri() + "?mode=ro", uri=True)
    select = f'SELECT "{args.key}", ' + ", ".join(f'"{n}"' for n in names)
    select += f' FROM "{args.table}" WHERE "{args.key}" IN '
    scored = failed = 0
    pending_ids: list[str] = []
    pending_rows: list[tuple[Any, ...]] = []

    def flush(writer: Any) -> None:
        nonlocal scored, pending_ids, pending_rows
        columns = list(zip(*pending_rows, strict=True))
        matrix = np.empty((len(pending_rows), len(names)), dtype=np.float64)
        for j in range(len(names)):
            if j in codes:
                matrix[:, j] = [codes[j].get(v, math.nan) for v in columns[j]]
            else:
                matrix[:, j] = np.array(columns[j], dtype=np.float64)  # None -> NaN
        scores = booster.predict(matrix, **kwargs)
        writer.writerows(zip(pending_ids, scores.tolist(), strict=True))
        scored += len(pending_ids)
        pending_ids, pending_rows = [], []

    with open(args.ids, encoding="utf-8") as f, open(args.out, "w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["id", "score"])
        ids = [line.strip() for line in f if line.strip()]
        for start in range(0, len(ids), QUERY_IDS):
            chunk = ids[start : start + QUERY_IDS]
            sql = select + "(" + ",".join("?" * len(chunk)) + ")"
            found = {row[0]: row[1:] for row in con.execute(sql, chunk)}
            for ident in chunk:
                row = found.get(ident)
                if row is None:
                    failed += 1
                    continue
                pending_ids.append(ident)
                pending_rows.append(row)
            if len(pending_ids) >= SCORE_ROWS:
                flush(writer)
        if pending_ids:
            flush(writer)
    con.close()
    seconds = time.perf_counter() - started
    print(json.dumps({"scored": scored, "failed": failed, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
