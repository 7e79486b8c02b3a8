"""Deterministic benchmark data: feature tables, the 300-tree model, ID lists and configs.

Everything goes into ``bench/work/`` (gitignored) and is rebuilt only when missing or when the
recipe (:data:`RECIPE`) changes; :func:`ensure` returns the paths.

* ``features_1m.db``: ``customer_features`` with 1,000,000 rows in the schema of the embedded
  sample model (``sample_data/``: key ``customer_id``, 28 feature columns including the
  categorical ``plan`` and ``region``, NULLs at the sample's rates), generated with the sample's
  own generator (``sample_data/make_sample.py``), so ``sample_data/model.txt`` scores it (P3/P4).
* ``features_http.db``: the first 200,000 of those rows, served by ``tests/featureserver.py``
  (P1/P2; the server holds its table in memory, so it gets only what the scenarios ask for).
* ``model_300.txt``: a LightGBM binary model, 300 trees, the same 28 features (pandas
  categoricals), trained deterministically on 100,000 separately generated labelled rows (P1/P2).
* ID lists (shuffled, all known) and the batchscore configs of each scenario.

Run it alone with ``.venv/bin/python bench/data.py`` (prints the paths).
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "work"
SAMPLE_MODEL = ROOT / "sample_data" / "model.txt"
SAMPLE_DB = ROOT / "sample_data" / "features.db"
TABLE = "customer_features"
KEY = "customer_id"

RECIPE: dict[str, Any] = {
    "version": 1,
    "seed": 20261127,
    "rows": 1_000_000,
    "http_rows": 200_000,
    "chunk": 200_000,
    "train_rows": 100_000,
    "trees": 300,
    "p1_ids": 16_000,
    "sync_ids": 500,
    "p4_small": 100_000,
}


@dataclass(frozen=True)
class Paths:
    """Where the generated files are."""

    work: Path
    db_1m: Path
    db_http: Path
    model_300: Path
    model_sample: Path
    ids_p1: Path
    ids_sync: Path
    ids_p2: Path
    ids_p3: Path
    ids_p4_small: Path
    ids_one: Path
    out: Path


def paths(work: Path = WORK) -> Paths:
    """The file layout under ``work``."""
    return Paths(
        work=work,
        db_1m=work / "features_1m.db",
        db_http=work / "features_http.db",
        model_300=work / "model_300.txt",
        model_sample=SAMPLE_MODEL,
        ids_p1=work / "ids_p1.txt",
        ids_sync=work / "ids_sync.txt",
        ids_p2=work / "ids_p2.txt",
        ids_p3=work / "ids_p3.txt",
        ids_p4_small=work / "ids_p4_small.txt",
        ids_one=work / "ids_one.txt",
        out=work / "out",
    )


def _sample_module() -> ModuleType:
    """``sample_data/make_sample.py``: its generator defines the schema and the signal."""
    spec = importlib.util.spec_from_file_location(
        "make_sample", ROOT / "sample_data" / "make_sample.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_sample"] = module
    spec.loader.exec_module(module)
    return module


def _ids(start: int, count: int) -> list[str]:
    return [f"C{i:07d}" for i in range(start + 1, start + count + 1)]


def _columns_with_nulls(ms: ModuleType, rng: np.random.Generator, frame: Any) -> list[list[Any]]:
    """Feature columns as Python lists, NULLs (None) injected at the sample's rates.

    Same rule as ``make_sample.inject_missing`` (orders-related columns are NULL without
    orders), but vectorised: the sample's pandas version is too slow and too big at 1M rows.
    """
    no_orders = frame["orders_12m"].to_numpy() == 0
    columns: list[list[Any]] = []
    for name, _ in ms.FEATURE_COLUMNS:
        values = frame[name].to_numpy()
        column: list[Any] = values.tolist()  # Python int / float / str, as sqlite3 wants
        rate = ms.MISSING_RATES.get(name)
        if rate is not None:
            mask = rng.random(len(column)) < rate
            if name in ("avg_order_value", "days_since_last_order"):
                mask |= no_orders
            for i in np.flatnonzero(mask).tolist():
                column[i] = None
        columns.append(column)
    return columns


def _create(db: Path, ms: ModuleType) -> sqlite3.Connection:
    for stale in (db, db.with_name(db.name + "-journal")):
        stale.unlink(missing_ok=True)
    defs = ", ".join(
        [f"{KEY} TEXT PRIMARY KEY NOT NULL"] + [f"{n} {t}" for n, t in ms.FEATURE_COLUMNS]
    )
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode = OFF")
    con.execute("PRAGMA synchronous = OFF")
    con.execute(f"CREATE TABLE {TABLE} ({defs})")
    return con


def build_tables(p: Paths, ms: ModuleType) -> None:
    """Write the 1M-row table and its first ``http_rows`` rows as the HTTP server's table."""
    rows, chunk, http_rows = RECIPE["rows"], RECIPE["chunk"], RECIPE["http_rows"]
    assert http_rows % chunk == 0 or http_rows <= chunk
    big = _create(p.db_1m, ms)
    small = _create(p.db_http, ms)
    marks = ",".join("?" * (1 + len(ms.FEATURE_COLUMNS)))
    insert = f"INSERT INTO {TABLE} VALUES ({marks})"
    for index, start in enumerate(range(0, rows, chunk)):
        rng = np.random.default_rng([RECIPE["seed"], index])
        frame, _ = ms.generate_customers(rng, chunk)
        data = list(zip(_ids(start, chunk), *_columns_with_nulls(ms, rng, frame), strict=True))
        with big:
            big.executemany(insert, data)
        if start < http_rows:
            with small:
                small.executemany(insert, data[: http_rows - start])
        print(f"  rows {start + chunk:,}/{rows:,}", file=sys.stderr)
    big.close()
    small.close()


def train_model(p: Paths, ms: ModuleType) -> None:
    """The 300-tree model, trained on separately generated labelled rows (pandas categoricals)."""
    import lightgbm as lgb
    import pandas as pd

    rng = np.random.default_rng([RECIPE["seed"], 10_000])
    frame, labels = ms.generate_customers(rng, RECIPE["train_rows"])
    columns = _columns_with_nulls(ms, rng, frame)
    features = pd.DataFrame(index=range(RECIPE["train_rows"]))
    for (name, sql_type), column in zip(ms.FEATURE_COLUMNS, columns, strict=True):
        if sql_type == "TEXT":
            features[name] = pd.Categorical(column, categories=list(ms.CATEGORIES[name]))
        else:
            features[name] = pd.to_numeric(pd.Series(column, dtype=object)).astype(np.float64)
    params = {**ms.LGB_PARAMS, "seed": RECIPE["seed"], "verbosity": -1}
    booster = lgb.train(
        params,
        lgb.Dataset(features, label=labels, categorical_feature="auto"),
        num_boost_round=RECIPE["trees"],
    )
    assert booster.num_trees() == RECIPE["trees"], booster.num_trees()
    booster.save_model(str(p.model_300))


def write_ids(p: Paths) -> None:
    """Shuffled ID lists; every ID is in the tables it is scored against."""
    rng = np.random.default_rng([RECIPE["seed"], 20_000])
    all_ids = np.array(_ids(0, RECIPE["rows"]))
    http_ids = all_ids[: RECIPE["http_rows"]]
    p2 = http_ids[rng.permutation(len(http_ids))]
    p3 = all_ids[rng.permutation(len(all_ids))]
    p1 = p2[: RECIPE["p1_ids"]]

    def save(path: Path, ids: Any) -> None:
        path.write_text("".join(f"{i}\n" for i in ids.tolist()), encoding="ascii")

    save(p.ids_p2, p2)
    save(p.ids_p1, p1)
    save(p.ids_sync, p1[: RECIPE["sync_ids"]])
    save(p.ids_p3, p3)
    save(p.ids_p4_small, p3[: RECIPE["p4_small"]])
    p.ids_one.write_text("C000858\n", encoding="ascii")  # in sample_data/features.db (P5)


def take_ids(source: Path, count: int, target: Path) -> Path:
    """The first ``count`` IDs of ``source`` as a file (for --quick sizes); returns ``target``."""
    with source.open("rb") as f:
        lines = [f.readline() for _ in range(count)]
    target.write_bytes(b"".join(lines))
    return target


def ensure(work: Path = WORK) -> Paths:
    """Build whatever is missing or stale; return the paths."""
    p = paths(work)
    work.mkdir(parents=True, exist_ok=True)
    p.out.mkdir(exist_ok=True)
    stamp = work / "recipe.json"
    current = json.dumps(RECIPE, sort_keys=True)
    fresh = stamp.exists() and stamp.read_text() == current
    needed = (p.db_1m, p.db_http, p.model_300, p.ids_p1, p.ids_p2, p.ids_p3, p.ids_one)
    if fresh and all(f.exists() for f in needed):
        return p
    stamp.unlink(missing_ok=True)
    ms = _sample_module()
    print("generating benchmark data into bench/work/ (once)", file=sys.stderr)
    build_tables(p, ms)
    train_model(p, ms)
    write_ids(p)
    stamp.write_text(current)
    return p


if __name__ == "__main__":
    for field, value in vars(ensure()).items():
        print(f"{field:14} {value}")
