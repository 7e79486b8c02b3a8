"""Build the embedded sample data for ``batchscore``.

This script generates a small, synthetic churn-scoring setup that the CLI,
its tests and its documentation can run against:

``features.db``
    SQLite database with two tables:

    * ``customer_features`` -- one row per customer (``C000001`` .. ``C006000``),
      primary key ``customer_id`` (TEXT) followed by 28 feature columns of
      mixed kinds (counts, amounts, ratios, durations in days, 0/1 flags and
      the categorical TEXT columns ``plan`` and ``region``).  Several columns
      contain NULLs.
    * ``labels`` -- ``customer_id`` (TEXT primary key) and ``churned``
      (INTEGER 0/1).  Labels are kept out of the feature table on purpose.

``model.txt``
    LightGBM binary classifier trained through the pandas API on the 28
    feature columns (same names, same order as the table).  ``plan`` and
    ``region`` are pandas ``category`` columns, so the model file carries a
    ``pandas_categorical`` section.  NULLs are passed to LightGBM as NaN.

``ids.txt`` / ``ids_small.txt``
    ~5,000 customer IDs from the store in shuffled order, with 10 IDs that
    are not in the store (``C999001`` ..) scattered through;
    ``ids_small.txt`` is the first 50 lines of ``ids.txt``.

``customers.csv``
    The feature rows of the first 20 known IDs of ``ids.txt``, as a CSV an
    analyst would have (``customer_id`` and the 28 feature columns; a NULL is
    an empty cell): what ``configs/input.toml`` scores with no service.

Everything is deterministic: a fixed numpy ``default_rng`` seed, a
single-threaded deterministic LightGBM run, and a freshly created,
``VACUUM``-ed SQLite file without timestamps.  Running the script twice
produces byte-identical outputs.

Usage::

    python sample_data/make_sample.py             # writes next to this file
    python sample_data/make_sample.py --out DIR   # writes into DIR

Only numpy, pandas, lightgbm and the standard library are used.
"""

from __future__ import annotations

import argparse
import csv
import sqlite3
from pathlib import Path
from typing import Final

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import pandas as pd

SEED: Final[int] = 20240601
N_CUSTOMERS: Final[int] = 6_000
N_SCORED_IDS: Final[int] = 5_000
N_UNKNOWN_IDS: Final[int] = 10
N_SMALL_IDS: Final[int] = 50
VALID_FRACTION: Final[float] = 0.2
NUM_BOOST_ROUND: Final[int] = 150

FEATURE_TABLE: Final[str] = "customer_features"
LABEL_TABLE: Final[str] = "labels"
ID_COLUMN: Final[str] = "customer_id"

PLANS: Final[tuple[str, ...]] = ("basic", "plus", "premium", "family")
PLAN_PROBS: Final[tuple[float, ...]] = (0.45, 0.25, 0.15, 0.15)
PLAN_PRICE: Final[dict[str, float]] = {
    "basic": 9.99,
    "plus": 19.99,
    "premium": 39.99,
    "family": 29.99,
}
PLAN_CHURN_EFFECT: Final[dict[str, float]] = {
    "basic": 0.55,
    "plus": 0.0,
    "premium": -0.6,
    "family": -0.35,
}

REGIONS: Final[tuple[str, ...]] = (
    "us-east",
    "us-west",
    "eu-west",
    "eu-central",
    "apac",
    "latam",
)
REGION_PROBS: Final[tuple[float, ...]] = (0.28, 0.20, 0.20, 0.12, 0.12, 0.08)
REGION_CHURN_EFFECT: Final[dict[str, float]] = {
    "us-east": 0.0,
    "us-west": 0.1,
    "eu-west": -0.25,
    "eu-central": -0.15,
    "apac": 0.35,
    "latam": 0.6,
}

CATEGORIES: Final[dict[str, tuple[str, ...]]] = {"plan": PLANS, "region": REGIONS}

# (column name, SQL type) in table order; ``customer_id`` is prepended.
FEATURE_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("tenure_days", "INTEGER"),
    ("account_age_days", "INTEGER"),
    ("customer_age_years", "INTEGER"),
    ("plan", "TEXT"),
    ("region", "TEXT"),
    ("is_auto_renew", "INTEGER"),
    ("has_mobile_app", "INTEGER"),
    ("is_email_subscribed", "INTEGER"),
    ("logins_30d", "INTEGER"),
    ("sessions_7d", "INTEGER"),
    ("days_since_last_login", "INTEGER"),
    ("avg_session_minutes", "REAL"),
    ("feature_adoption_ratio", "REAL"),
    ("num_devices", "INTEGER"),
    ("orders_12m", "INTEGER"),
    ("days_since_last_order", "INTEGER"),
    ("avg_order_value", "REAL"),
    ("returns_12m", "INTEGER"),
    ("total_refunds_12m", "REAL"),
    ("monthly_spend", "REAL"),
    ("lifetime_value", "REAL"),
    ("discount_ratio", "REAL"),
    ("late_payment_ratio", "REAL"),
    ("failed_payments_6m", "INTEGER"),
    ("support_tickets_90d", "INTEGER"),
    ("nps_score", "INTEGER"),
    ("referrals_count", "INTEGER"),
    ("contract_months_remaining", "INTEGER"),
)
FEATURE_NAMES: Final[list[str]] = [name for name, _ in FEATURE_COLUMNS]

# Share of values set to NULL per column (applied after label generation).
MISSING_RATES: Final[dict[str, float]] = {
    "customer_age_years": 0.08,
    "region": 0.01,
    "days_since_last_login": 0.03,
    "avg_session_minutes": 0.05,
    "feature_adoption_ratio": 0.04,
    "days_since_last_order": 0.02,
    "avg_order_value": 0.02,
    "nps_score": 0.14,
    "late_payment_ratio": 0.06,
}

LGB_PARAMS: Final[dict[str, object]] = {
    "objective": "binary",
    "metric": "auc",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.9,
    "lambda_l2": 1.0,
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": 1,
    "seed": SEED,
    "verbosity": -1,
}

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


def _sigmoid(x: FloatArray) -> FloatArray:
    return 1.0 / (1.0 + np.exp(-x))


def generate_customers(rng: np.random.Generator, n: int) -> tuple[pd.DataFrame, IntArray]:
    """Return the (complete, NULL-free) feature frame and the churn labels."""
    # Latent traits: engagement drives usage, dissatisfaction drives tickets/NPS.
    engagement = rng.normal(0.0, 1.0, n)
    dissatisfaction = rng.normal(0.0, 1.0, n)

    tenure_days = np.clip(rng.gamma(1.5, 400.0, n), 1, 3650).astype(np.int64)
    reactivated = rng.random(n) < 0.3
    account_age_days = tenure_days + np.where(reactivated, rng.exponential(120.0, n), 0.0).astype(
        np.int64
    )
    customer_age_years = np.clip(rng.normal(41.0, 13.0, n), 18, 90).astype(np.int64)

    plan = rng.choice(np.array(PLANS), size=n, p=PLAN_PROBS)
    region = rng.choice(np.array(REGIONS), size=n, p=REGION_PROBS)
    is_family = plan == "family"
    is_premium = plan == "premium"

    auto_renew_p = np.where(is_premium | is_family, 0.75, np.where(plan == "plus", 0.6, 0.45))
    is_auto_renew = (rng.random(n) < auto_renew_p).astype(np.int64)
    has_mobile_app = (rng.random(n) < _sigmoid(0.2 + 0.8 * engagement)).astype(np.int64)
    is_email_subscribed = (rng.random(n) < 0.7).astype(np.int64)

    logins_30d = rng.poisson(np.exp(2.0 + 0.6 * engagement))
    sessions_7d = rng.poisson(0.3 * logins_30d + 0.5)
    days_since_last_login = np.minimum(rng.exponential(np.exp(1.3 - 0.9 * engagement)), 365).astype(
        np.int64
    )
    avg_session_minutes = np.round(rng.lognormal(np.log(12.0) + 0.3 * engagement, 0.6), 1)
    feature_adoption_ratio = np.round(rng.beta(2.0 * np.exp(0.4 * engagement), 3.0), 4)
    num_devices = 1 + rng.poisson(np.where(is_family, 2.2, 0.7))

    orders_12m = rng.poisson(np.exp(1.6 + 0.4 * engagement))
    days_since_last_order = np.minimum(rng.exponential(365.0 / (orders_12m + 1.0)), 365).astype(
        np.int64
    )
    avg_order_value = np.round(rng.lognormal(np.log(45.0), 0.5, n), 2)
    returns_12m = rng.binomial(orders_12m, 0.08)
    total_refunds_12m = np.round(returns_12m * avg_order_value * rng.uniform(0.5, 1.0, n), 2)

    base_price = np.array([PLAN_PRICE[p] for p in plan])
    monthly_spend = np.round(base_price * rng.lognormal(0.0, 0.25, n), 2)
    lifetime_value = np.round(monthly_spend * tenure_days / 30.0 * rng.lognormal(0.0, 0.15, n), 2)
    discount_ratio = np.round(rng.beta(2.0, 8.0, n), 4)
    late_payment_ratio = np.round(rng.beta(1.2, 10.0, n), 4)
    failed_payments_6m = rng.poisson(0.1 + 6.0 * late_payment_ratio)
    support_tickets_90d = rng.poisson(np.exp(-0.6 + 0.7 * dissatisfaction))
    nps_score = np.clip(np.round(rng.normal(7.0 - 1.4 * dissatisfaction, 1.8)), 0, 10).astype(
        np.int64
    )
    referrals_count = rng.poisson(np.exp(-1.3 + 0.3 * engagement))
    contract_months_remaining = np.where(
        is_auto_renew == 1, rng.integers(0, 13, n), rng.integers(0, 4, n)
    ).astype(np.int64)

    frame = pd.DataFrame(
        {
            "tenure_days": tenure_days,
            "account_age_days": account_age_days,
            "customer_age_years": customer_age_years,
            "plan": plan,
            "region": region,
            "is_auto_renew": is_auto_renew,
            "has_mobile_app": has_mobile_app,
            "is_email_subscribed": is_email_subscribed,
            "logins_30d": logins_30d,
            "sessions_7d": sessions_7d,
            "days_since_last_login": days_since_last_login,
            "avg_session_minutes": avg_session_minutes,
            "feature_adoption_ratio": feature_adoption_ratio,
            "num_devices": num_devices,
            "orders_12m": orders_12m,
            "days_since_last_order": days_since_last_order,
            "avg_order_value": avg_order_value,
            "returns_12m": returns_12m,
            "total_refunds_12m": total_refunds_12m,
            "monthly_spend": monthly_spend,
            "lifetime_value": lifetime_value,
            "discount_ratio": discount_ratio,
            "late_payment_ratio": late_payment_ratio,
            "failed_payments_6m": failed_payments_6m,
            "support_tickets_90d": support_tickets_90d,
            "nps_score": nps_score,
            "referrals_count": referrals_count,
            "contract_months_remaining": contract_months_remaining,
        },
        columns=FEATURE_NAMES,
    )

    # Churn: logistic in several observable features (incl. both categoricals),
    # the latent traits and Gaussian noise.
    logit = (
        -2.8
        + np.array([PLAN_CHURN_EFFECT[p] for p in plan])
        + np.array([REGION_CHURN_EFFECT[r] for r in region])
        + 0.5 * support_tickets_90d
        + 4.0 * late_payment_ratio
        + 0.3 * failed_payments_6m
        - 0.9 * is_auto_renew
        - 0.45 * (np.log1p(tenure_days / 30.0) - 2.5)
        + 0.04 * np.minimum(days_since_last_login, 60)
        - 0.06 * (logins_30d - 8)
        - 0.12 * (nps_score - 7)
        + 1.1 * (contract_months_remaining == 0)
        + 2.0 * discount_ratio
        - 0.8 * (feature_adoption_ratio - 0.4)
        - 0.5 * engagement
        + 0.3 * dissatisfaction
        + rng.normal(0.0, 0.5, n)
    )
    churned = (rng.random(n) < _sigmoid(logit)).astype(np.int64)
    return frame, churned


def inject_missing(rng: np.random.Generator, frame: pd.DataFrame) -> pd.DataFrame:
    """Return a copy of ``frame`` with NULLs (NaN/None) injected per ``MISSING_RATES``.

    ``avg_order_value`` and ``days_since_last_order`` are also NULL whenever
    the customer has no orders in the last 12 months.
    """
    out = frame.astype({name: object for name in FEATURE_NAMES})
    no_orders = frame["orders_12m"].to_numpy() == 0
    for name in FEATURE_NAMES:  # fixed iteration order -> deterministic RNG use
        rate = MISSING_RATES.get(name)
        if rate is None:
            continue
        mask: BoolArray = rng.random(len(frame)) < rate
        if name in ("avg_order_value", "days_since_last_order"):
            mask |= no_orders
        out.loc[mask, name] = None
    return out


def _python_value(value: object, sql_type: str) -> int | float | str | None:
    """Convert a cell to a plain Python value for sqlite3 (None stays NULL)."""
    if value is None or (isinstance(value, float | np.floating) and np.isnan(value)):
        return None
    if sql_type == "TEXT":
        return str(value)
    if not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"unexpected {type(value).__name__} value for {sql_type} column")
    return int(value) if sql_type == "INTEGER" else float(value)


def write_sqlite(path: Path, ids: list[str], frame: pd.DataFrame, churned: IntArray) -> None:
    """Write features and labels into a fresh, vacuumed SQLite file."""
    for stale in (path, path.with_name(path.name + "-journal")):
        stale.unlink(missing_ok=True)

    column_defs = ",\n    ".join(
        [f"{ID_COLUMN} TEXT PRIMARY KEY NOT NULL"]
        + [f"{name} {sql_type}" for name, sql_type in FEATURE_COLUMNS]
    )
    placeholders = ", ".join("?" * (1 + len(FEATURE_COLUMNS)))
    rows = [
        (
            customer_id,
            *(
                _python_value(value, sql_type)
                for value, (_, sql_type) in zip(record, FEATURE_COLUMNS, strict=True)
            ),
        )
        for customer_id, record in zip(ids, frame.itertuples(index=False, name=None), strict=True)
    ]

    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA page_size = 4096")
        conn.execute("PRAGMA journal_mode = DELETE")
        with conn:
            conn.execute(f"CREATE TABLE {FEATURE_TABLE} (\n    {column_defs}\n)")
            conn.executemany(f"INSERT INTO {FEATURE_TABLE} VALUES ({placeholders})", rows)
            conn.execute(
                f"CREATE TABLE {LABEL_TABLE} (\n"
                f"    {ID_COLUMN} TEXT PRIMARY KEY NOT NULL,\n"
                "    churned INTEGER NOT NULL\n)"
            )
            conn.executemany(
                f"INSERT INTO {LABEL_TABLE} VALUES (?, ?)",
                zip(ids, (int(c) for c in churned), strict=True),
            )
        conn.execute("VACUUM")
    finally:
        conn.close()


def load_training_frame(path: Path) -> tuple[pd.DataFrame, IntArray]:
    """Read features + labels back from SQLite, exactly as a scorer would see them."""
    cols = ", ".join(f"f.{name}" for name in FEATURE_NAMES)
    query = (
        f"SELECT {cols}, l.churned FROM {FEATURE_TABLE} AS f "
        f"JOIN {LABEL_TABLE} AS l USING ({ID_COLUMN}) ORDER BY f.{ID_COLUMN}"
    )
    conn = sqlite3.connect(path)
    try:
        raw = pd.read_sql_query(query, conn)
    finally:
        conn.close()
    labels: IntArray = raw.pop("churned").to_numpy(dtype=np.int64)
    features = pd.DataFrame(index=raw.index)
    for name, sql_type in FEATURE_COLUMNS:
        if sql_type == "TEXT":
            features[name] = pd.Categorical(raw[name], categories=list(CATEGORIES[name]))
        else:
            features[name] = pd.to_numeric(raw[name], errors="raise").astype(np.float64)
    return features, labels


def roc_auc(y_true: IntArray, scores: FloatArray) -> float:
    """ROC AUC via the Mann-Whitney rank statistic (ties get average ranks)."""
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    positives = y_true == 1
    n_pos = int(positives.sum())
    n_neg = len(y_true) - n_pos
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def train_model(
    rng: np.random.Generator, features: pd.DataFrame, labels: IntArray
) -> tuple[lgb.Booster, float]:
    """Train the binary LightGBM model; return it with its validation AUC."""
    order = rng.permutation(len(features))
    n_valid = round(len(features) * VALID_FRACTION)
    valid_idx, train_idx = np.sort(order[:n_valid]), np.sort(order[n_valid:])

    train_set = lgb.Dataset(
        features.iloc[train_idx],
        label=labels[train_idx],
        feature_name=FEATURE_NAMES,
        categorical_feature="auto",
        free_raw_data=False,
    )
    valid_set = lgb.Dataset(features.iloc[valid_idx], label=labels[valid_idx], reference=train_set)
    booster = lgb.train(
        dict(LGB_PARAMS),
        train_set,
        num_boost_round=NUM_BOOST_ROUND,
        valid_sets=[valid_set],
        valid_names=["valid"],
    )
    predictions = np.asarray(booster.predict(features.iloc[valid_idx]), dtype=np.float64)
    return booster, roc_auc(labels[valid_idx], predictions)


def make_id_list(rng: np.random.Generator, ids: list[str]) -> list[str]:
    """Shuffled sample of known IDs with unknown IDs scattered through it.

    The first unknown ID is placed within the first ``N_SMALL_IDS`` lines so
    that ``ids_small.txt`` also exercises the "not found" path.
    """
    chosen = rng.choice(len(ids), size=N_SCORED_IDS, replace=False)
    result = [ids[i] for i in chosen]
    unknown = [f"C{999001 + i:06d}" for i in range(N_UNKNOWN_IDS)]
    later = rng.choice(np.arange(N_SMALL_IDS, N_SCORED_IDS), N_UNKNOWN_IDS - 1, replace=False)
    positions = sorted([int(rng.integers(1, N_SMALL_IDS - 1)), *(int(p) for p in later)])
    for offset, (pos, unknown_id) in enumerate(zip(positions, unknown, strict=True)):
        result.insert(pos + offset, unknown_id)
    return result


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="ascii", newline="\n")


N_CSV_ROWS = 20


def write_feature_csv(path: Path, db_path: Path, id_lines: list[str]) -> None:
    """The feature rows of the first ``N_CSV_ROWS`` known IDs of ``id_lines``, read back from
    ``db_path``, as CSV: NULL is an empty cell, a REAL its shortest round-tripping text."""
    conn = sqlite3.connect(db_path)
    try:
        cursor = conn.execute(f"SELECT * FROM {FEATURE_TABLE}")
        header = [d[0] for d in cursor.description]
        rows = {row[0]: row for row in cursor}
    finally:
        conn.close()
    chosen = [rows[i] for i in id_lines if i in rows][:N_CSV_ROWS]
    with open(path, "w", encoding="ascii", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(
            ["" if v is None else repr(v) if isinstance(v, float) else v for v in row]
            for row in chosen
        )


def build(out_dir: Path, seed: int = SEED) -> float:
    """Generate all sample files into ``out_dir``; return the validation AUC."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = [f"C{i:06d}" for i in range(1, N_CUSTOMERS + 1)]

    complete, churned = generate_customers(rng, N_CUSTOMERS)
    with_nulls = inject_missing(rng, complete)

    db_path = out_dir / "features.db"
    write_sqlite(db_path, ids, with_nulls, churned)

    features, labels = load_training_frame(db_path)
    booster, auc = train_model(rng, features, labels)
    booster.save_model(str(out_dir / "model.txt"))

    id_lines = make_id_list(rng, ids)
    write_lines(out_dir / "ids.txt", id_lines)
    write_lines(out_dir / "ids_small.txt", id_lines[:N_SMALL_IDS])
    write_feature_csv(out_dir / "customers.csv", db_path, id_lines)

    print(f"customers: {N_CUSTOMERS}, churn rate: {labels.mean():.3f}")
    print(f"model: objective=binary, trees={booster.num_trees()}, validation AUC={auc:.4f}")
    print(f"wrote {db_path.name}, model.txt, ids.txt, ids_small.txt, customers.csv to {out_dir}")
    return auc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="output directory (default: the directory containing this script)",
    )
    args = parser.parse_args(argv)
    build(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
