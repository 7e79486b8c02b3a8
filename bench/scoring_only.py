"""Scoring-only throughput: ``Booster.predict`` on a prebuilt matrix (the ceiling of P2).

Builds the feature matrix of a whole SQLite feature table once (column-wise, categoricals mapped
to the model's ``pandas_categorical`` codes), then times ``predict`` over it, best of
``--repeat``.  Usage::

    python bench/scoring_only.py MODEL DB TABLE KEY [--threads 0] [--repeat 3] [--batch 0]

``--batch 0`` predicts the whole matrix at once; ``--batch N`` in slices of N rows.  Prints one
JSON line: ``{"rows": N, "seconds": S, "rows_per_s": R, "threads": T, "batch": B}``.
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("model")
    parser.add_argument("db")
    parser.add_argument("table")
    parser.add_argument("key")
    parser.add_argument("--threads", type=int, default=0, help="LightGBM threads, 0 = all cores")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=0, help="rows per predict call, 0 = all")
    args = parser.parse_args(argv)
    booster = lgb.Booster(model_file=args.model)
    names = booster.feature_name()
    cat_index = booster.params.get("categorical_feature") or []
    codes = {
        int(j): {v: float(code) for code, v in enumerate(cats)}
        for j, cats in zip(cat_index, booster.pandas_categorical or [], strict=True)
    }
    con = sqlite3.connect(Path(args.db).resolve().as_uri() + "?mode=ro", uri=True)
    sql = "SELECT " + ", ".join(f'"{n}"' for n in names) + f' FROM "{args.table}"'
    columns = list(zip(*con.execute(sql).fetchall(), strict=True))
    matrix = np.empty((len(columns[0]), len(names)), dtype=np.float64)
    for j, column in enumerate(columns):
        if j in codes:
            matrix[:, j] = [codes[j].get(v, math.nan) for v in column]
        else:
            matrix[:, j] = np.array(column, dtype=np.float64)
    kwargs = {"num_threads": args.threads} if args.threads else {}
    step = args.batch or len(matrix)
    best = math.inf
    for _ in range(args.repeat):
        started = time.perf_counter()
        for start in range(0, len(matrix), step):
            booster.predict(matrix[start : start + step], **kwargs)
        best = min(best, time.perf_counter() - started)
    result = {
        "rows": len(matrix),
        "seconds": best,
        "rows_per_s": len(matrix) / best,
        "threads": args.threads,
        "batch": args.batch,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
