"""The naive baseline: one HTTP request at a time with a plain sync client, ``predict`` per row.

This is what batchscore replaces in the simplest case: a loop over IDs with a keep-alive
``httpx.Client``, the response parsed with ``json``, a one-row matrix, ``Booster.predict`` on it,
a CSV row written.  Failed IDs are skipped and counted.

Usage::

    python bench/baseline_sync.py IDS URL MODEL OUT      # URL contains {id}

Prints one JSON line on stdout: ``{"scored": N, "failed": N, "seconds": S}`` (``seconds``
excludes interpreter start-up and imports).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time

import httpx
import lightgbm as lgb
import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("ids", help="file with one ID per line")
    parser.add_argument("url", help="GET URL with {id}")
    parser.add_argument("model", help="LightGBM model file")
    parser.add_argument("out", help="output CSV (id,score)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    booster = lgb.Booster(model_file=args.model)
    names = booster.feature_name()
    cat_index = booster.params.get("categorical_feature") or []
    codes = {
        int(j): {v: float(code) for code, v in enumerate(cats)}
        for j, cats in zip(cat_index, booster.pandas_categorical or [], strict=True)
    }
    scored = failed = 0
    with (
        open(args.ids, encoding="utf-8") as ids,
        open(args.out, "w", newline="") as out,
        httpx.Client(timeout=30) as client,
    ):
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["id", "score"])
        for line in ids:
            ident = line.strip()
            if not ident:
                continue
            try:
                response = client.get(args.url.replace("{id}", ident))
                response.raise_for_status()
                features = json.loads(response.content)["features"]
            except (httpx.HTTPError, ValueError, KeyError):
                failed += 1
                continue
            row = np.empty((1, len(names)), dtype=np.float64)
            for j, name in enumerate(names):
                value = features.get(name)
                if j in codes:
                    row[0, j] = codes[j].get(value, math.nan)
                else:
                    row[0, j] = math.nan if value is None else float(value)
            score = booster.predict(row, num_threads=1)[0]
            writer.writerow([ident, float(score)])
            scored += 1
    seconds = time.perf_counter() - started
    print(json.dumps({"scored": scored, "failed": failed, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
