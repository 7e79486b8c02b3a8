"""Scores are bit-identical to ``Booster.predict`` on the same rows (SPEC.md, Scoring).

Real models trained on LightGBM's example data score rows read from a real SQLite file; the
output is read back as a user would (csv / json / gzip modules) and compared with
``np.array_equal``, never approximately.  File outputs run in this process; stdout runs are the
real command, since what reaches stdout is the point there.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from conftest import (
    ID_STORE_EMPTY,
    ROOT,
    SAMPLE_DIR,
    IdStore,
    RunCli,
    ScoreInProcess,
    TrainedModel,
    output_scores,
    read_errors,
    read_output,
    sqlite_source,
    write_config,
    write_feature_db,
)

KINDS = ["binary", "multiclass", "regression"]


def config_for(model: TrainedModel, folder: Path) -> Path:
    # Small batches everywhere, so rows cross many fetches and scoring batches out of order.
    return write_config(
        folder / f"{model.kind}.toml",
        model=model.model_path,
        sources=[model.source(batch_size=50)],
        fetch={"concurrency": 4},
        score={"batch_size": 64},
    )


@pytest.mark.parametrize("extension", ["csv", "jsonl", "csv.gz", "jsonl.gz"])
@pytest.mark.parametrize("kind", KINDS)
def test_file_outputs_hold_exactly_what_booster_predict_gives(
    trained_models: dict[str, TrainedModel],
    score_in_process: ScoreInProcess,
    tmp_path: Path,
    kind: str,
    extension: str,
) -> None:
    model = trained_models[kind]
    out = tmp_path / f"scores.{extension}"
    run = score_in_process(
        config=config_for(model, tmp_path),
        ids=str(model.ids_file(tmp_path / "ids.txt")),
        output=str(out),
    )
    assert run.status == 0, run.stderr
    rows = read_output(out)
    assert [row["id"] for row in rows] == list(model.ids)  # input order, IDs as given
    assert list(rows[0]) == ["id", *model.score_columns]
    assert np.array_equal(output_scores(rows, model.score_columns), model.expected())
    assert not (tmp_path / f".scores.{extension}.partial").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_stdout_holds_exactly_what_booster_predict_gives(
    trained_models: dict[str, TrainedModel], run_cli: RunCli, tmp_path: Path, kind: str
) -> None:
    model = trained_models[kind]
    ids = "".join(f"{i}\n" for i in model.ids).encode()
    code, out, err = run_cli("score", "-c", config_for(model, tmp_path), stdin=ids)
    assert code == 0, err
    assert b"[LightGBM]" not in out
    rows = read_output(out)
    assert [row["id"] for row in rows] == list(model.ids)
    assert np.array_equal(output_scores(rows, model.score_columns), model.expected())


@pytest.mark.parametrize("kind", KINDS)
def test_raw_score_gives_exactly_the_raw_margins(
    trained_models: dict[str, TrainedModel],
    score_in_process: ScoreInProcess,
    tmp_path: Path,
    kind: str,
) -> None:
    model = trained_models[kind]
    out = tmp_path / "raw.jsonl"
    run = score_in_process(
        config=config_for(model, tmp_path),
        ids=str(model.ids_file(tmp_path / "ids.txt")),
        output=str(out),
        raw_score=True,
    )
    assert run.status == 0, run.stderr
    raw = output_scores(read_output(out), model.score_columns)
    assert np.array_equal(raw, model.expected(raw_score=True))
    if kind != "regression":  # margins, not probabilities
        assert not np.array_equal(raw, model.expected())


def test_unordered_output_has_every_row_once_with_its_exact_score(
    trained_models: dict[str, TrainedModel], score_in_process: ScoreInProcess, tmp_path: Path
) -> None:
    model = trained_models["multiclass"]
    out = tmp_path / "scores.csv"
    run = score_in_process(
        config=config_for(model, tmp_path),
        ids=str(model.ids_file(tmp_path / "ids.txt")),
        output=str(out),
        unordered=True,
    )
    assert run.status == 0, run.stderr
    rows = read_output(out)
    assert sorted(row["id"] for row in rows) == sorted(model.ids)
    expected = dict(zip(model.ids, model.expected(), strict=True))
    for row, scores in zip(rows, output_scores(rows, model.score_columns), strict=True):
        assert np.array_equal(scores, expected[row["id"]])


# -- the embedded sample: pandas categoricals, as a user would score it ---------------------------


def predict_like_a_pandas_user(booster: lgb.Booster, frame: pd.DataFrame) -> np.ndarray:
    """Select the model's columns, make the categoricals pandas categoricals with the model's
    categories (numbers stored as text become numbers), and call ``Booster.predict``."""
    frame = frame[booster.feature_name()].copy()
    categorical = [name for name in frame if frame[name].dtype == object]
    categories = dict(zip(["plan", "region"], booster.pandas_categorical, strict=True))
    for name in frame:
        if name in categories:
            frame[name] = frame[name].astype("category").cat.set_categories(categories[name])
        elif name in categorical:
            frame[name] = pd.to_numeric(frame[name])
    return np.asarray(booster.predict(frame), dtype=np.float64)


def sample_rows(ids: list[str]) -> pd.DataFrame:
    with sqlite3.connect(SAMPLE_DIR / "features.db") as db:
        frame = pd.read_sql_query(
            f"SELECT * FROM customer_features WHERE customer_id IN ({','.join('?' * len(ids))})",
            db,
            params=ids,
        )
    return frame.set_index("customer_id").loc[ids]


def test_embedded_sample_scores_equal_booster_predict_on_a_pandas_frame(
    run_cli: RunCli, tmp_path: Path
) -> None:
    out = tmp_path / "scores.csv"
    code, stdout, err = run_cli(
        "score",
        "sample_data/ids_small.txt",
        "-c",
        "configs/sample.toml",
        "-o",
        out,
        cwd=ROOT,
    )
    assert code == 3, err  # one ID of ids_small.txt is not in the store
    assert stdout == b""
    lines = (SAMPLE_DIR / "ids_small.txt").read_text().split()
    known = [i for i in lines if i != "C999001"]
    rows = read_output(out)
    assert [row["id"] for row in rows] == known
    booster = lgb.Booster(model_file=str(SAMPLE_DIR / "model.txt"))
    expected = predict_like_a_pandas_user(booster, sample_rows(known))
    assert np.array_equal(output_scores(rows, ["score"])[:, 0], expected)
    errors = read_errors(Path(f"{out}.errors.jsonl"))
    assert [(e["id"], e["line"], e["stage"], e["reason"]) for e in errors] == [
        ("C999001", lines.index("C999001") + 1, "fetch", "not_found")
    ]


def test_unseen_categories_missing_categories_and_numeric_strings_score_like_pandas(
    score_in_process: ScoreInProcess, tmp_path: Path
) -> None:
    ids = [f"C{n:06d}" for n in range(1, 41)]
    frame = sample_rows(ids).astype(object)
    frame.iloc[0, frame.columns.get_loc("plan")] = "enterprise"  # not a training category
    frame.iloc[1, frame.columns.get_loc("region")] = None
    frame.iloc[2, frame.columns.get_loc("plan")] = None
    frame.iloc[3, frame.columns.get_loc("region")] = "mars"
    frame.iloc[4, frame.columns.get_loc("tenure_days")] = "123"  # a number sent as text
    frame.iloc[5, frame.columns.get_loc("avg_order_value")] = "45.5"
    frame.iloc[6, frame.columns.get_loc("nps_score")] = None
    model = tmp_path / "model.txt"
    shutil.copy(SAMPLE_DIR / "model.txt", model)
    db = write_feature_db(
        tmp_path / "features.db",
        frame,
        ids,
        table="customer_features",
        key="customer_id",
        # No declared type: SQLite keeps "123" as text instead of converting it.
        column_types={"tenure_days": "", "avg_order_value": ""},
    )
    with sqlite3.connect(db) as check:
        stored = check.execute(
            "SELECT typeof(tenure_days) FROM customer_features WHERE customer_id = ?", [ids[4]]
        ).fetchone()
    assert stored == ("text",)
    config = write_config(
        tmp_path / "c.toml",
        model=model,
        sources=[sqlite_source(db, table="customer_features", key="customer_id")],
    )
    out = tmp_path / "scores.jsonl"
    run = score_in_process(config=config, stdin="\n".join(ids).encode(), output=str(out))
    assert run.status == 0, run.stderr
    rows = read_output(out)
    assert [row["id"] for row in rows] == ids
    booster = lgb.Booster(model_file=str(model))
    expected = predict_like_a_pandas_user(booster, frame)
    assert np.array_equal(output_scores(rows, ["score"])[:, 0], expected)
    # The edits matter: scoring the untouched rows gives different scores for them.
    untouched = predict_like_a_pandas_user(booster, sample_rows(ids))
    assert not np.array_equal(expected[:6], untouched[:6])


def test_allow_empty_scores_a_row_without_features_as_all_missing(
    id_store: IdStore, score_in_process: ScoreInProcess, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "c.toml",
        model=id_store.model_path,
        sources=[sqlite_source(id_store.db_path)],
        score={"allow_empty": True},
    )
    run = score_in_process(config=config, stdin=f"{ID_STORE_EMPTY}\nC1\n".encode())
    assert run.status == 0, run.stderr
    rows = read_output(run.stdout)
    assert [row["id"] for row in rows] == [ID_STORE_EMPTY, "C1"]
    assert np.array_equal(
        output_scores(rows, ["score"])[:, 0],
        [id_store.score(ID_STORE_EMPTY), id_store.score("C1")],
    )
