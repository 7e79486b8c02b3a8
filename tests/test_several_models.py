"""Several models in one pass (issue 13): features fetched once, each model's scores exact.

Real LightGBM models trained on LightGBM's example data, a real SQLite store and a real HTTP
feature server (to count the requests), and the real ``batchscore`` command.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import (
    ROOT,
    SAMPLE_DIR,
    RunCli,
    TrainedModel,
    batchscore_command,
    clean_environ,
    feature_names,
    load_example,
    read_output,
    sqlite_source,
    toml_text,
)
from servers import rows_as_data, server_process

SUBSET = ["f14", "f3", "f7", "f21", "f0"]  # a challenger on a few features, in its own order


@pytest.fixture(scope="module")
def subset_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, lgb.Booster]:
    """A small binary model on a subset of the binary example's features, in another order."""
    x, y = load_example("binary", "train")
    columns = [int(name[1:]) for name in SUBSET]
    params = {"objective": "binary", "verbose": -1, "num_threads": 1, "deterministic": True}
    booster = lgb.train(params, lgb.Dataset(x[:, columns], y, feature_name=SUBSET), 20)
    path = tmp_path_factory.mktemp("subset") / "subset.txt"
    booster.save_model(path)
    return path, lgb.Booster(model_file=str(path))


def bits(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).view(np.uint64)


def config_of(path: Path, sources: list[dict[str, Any]], models: list[tuple[str, Path]]) -> Path:
    document = {
        "models": [{"name": name, "path": str(p)} for name, p in models],
        "sources": sources,
    }
    path.write_text(toml_text(document), encoding="utf-8")
    return path


def test_each_model_scores_exactly_as_its_own_booster(
    trained_models: dict[str, TrainedModel],
    subset_model: tuple[Path, lgb.Booster],
    run_cli: RunCli,
    tmp_path: Path,
) -> None:
    binary, regression = trained_models["binary"], trained_models["regression"]
    subset_path, subset = subset_model
    config = config_of(
        tmp_path / "c.toml",
        [binary.source()],
        [("champion", binary.model_path), ("reg", regression.model_path), ("few", subset_path)],
    )
    out = tmp_path / "scores.csv"
    result = run_cli("score", binary.ids_file(tmp_path / "ids.txt"), "-c", config, "-o", out)
    assert result.returncode == 0, result.stderr
    rows = read_output(out)
    assert list(rows[0]) == ["id", "score_champion", "score_reg", "score_few"]
    assert [r["id"] for r in rows] == list(binary.ids)
    x = binary.features
    columns = [int(name[1:]) for name in SUBSET]
    expected = {
        "score_champion": binary.booster.predict(x),
        "score_reg": regression.booster.predict(x),
        "score_few": subset.predict(x[:, columns]),
    }
    for column, want in expected.items():
        got = [float(r[column]) for r in rows]
        assert np.array_equal(bits(got), bits(want)), column


def test_features_are_fetched_once_for_all_models(
    trained_models: dict[str, TrainedModel],
    subset_model: tuple[Path, lgb.Booster],
    tmp_path: Path,
) -> None:
    binary = trained_models["binary"]
    data = rows_as_data(binary.ids, binary.features)
    ids = binary.ids_file(tmp_path / "ids.txt")

    def requests(models: list[tuple[str, Path]], name: str) -> tuple[int, list[dict[str, Any]]]:
        with server_process(tmp_path, data) as server:
            source = {
                "name": "http",
                "kind": "http",
                "url": f"{server.url}/features/{{id}}",
                "features_path": "features",
            }
            config = config_of(tmp_path / f"{name}.toml", [source], models)
            out = tmp_path / f"{name}.jsonl"
            done = subprocess.run(
                [*batchscore_command(), "score", str(ids), "-c", str(config), "-o", str(out)],
                capture_output=True,
                env=clean_environ(),
                cwd=ROOT,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            served = sum(server.stats()["responses_by_status"].values())
        return served, read_output(out)

    one, _ = requests([("champion", binary.model_path)], "one")
    two, rows = requests([("champion", binary.model_path), ("few", subset_model[0])], "two")
    assert one == two == len(binary.ids), "one request per ID, whatever the number of models"
    assert list(rows[0]) == ["id", "score_champion", "score_few"]


def test_a_single_model_is_exactly_as_before(
    trained_models: dict[str, TrainedModel], run_cli: RunCli, tmp_path: Path
) -> None:
    binary = trained_models["binary"]
    config = tmp_path / "c.toml"
    config.write_text(
        toml_text({"model": {"path": str(binary.model_path)}, "sources": [binary.source()]}),
        encoding="utf-8",
    )
    out = tmp_path / "one.csv"
    result = run_cli("score", binary.ids_file(tmp_path / "ids.txt"), "-c", config, "-o", out)
    assert result.returncode == 0, result.stderr
    assert out.read_text().splitlines()[0] == "id,score"


def test_models_on_the_command_line_multiclass_explain_and_report(
    trained_models: dict[str, TrainedModel],
    subset_model: tuple[Path, lgb.Booster],
    run_cli: RunCli,
    tmp_path: Path,
) -> None:
    multiclass = trained_models["multiclass"]
    binary = trained_models["binary"]
    # The multiclass example has 28 features too: score the binary store with both.
    config = tmp_path / "c.toml"
    config.write_text(toml_text({"sources": [binary.source()]}), encoding="utf-8")
    out = tmp_path / "scores.jsonl"
    report = tmp_path / "r.json"
    result = run_cli(
        "score",
        binary.ids_file(tmp_path / "ids.txt"),
        "-c",
        config,
        "-m",
        f"multi={multiclass.model_path}",
        "-m",
        f"few={subset_model[0]}",
        "--explain",
        "2",
        "-o",
        out,
        "--report",
        report,
    )
    assert result.returncode == 0, result.stderr
    rows = read_output(out)
    classes = multiclass.booster.num_model_per_iteration()
    scores = [f"score_multi_{k}" for k in range(classes)] + ["score_few"]
    explained = [
        f"explain_{m}_{i}_{part}"
        for m in ("multi", "few")
        for i in (1, 2)
        for part in ("feature", "value", "contribution")
    ]
    assert list(rows[0]) == ["id", *scores, *explained]
    want = multiclass.booster.predict(binary.features)
    got = np.array([[r[f"score_multi_{k}"] for k in range(classes)] for r in rows])
    assert np.array_equal(bits(got), bits(want))
    assert {r["explain_few_1_feature"] for r in rows} <= set(SUBSET)
    body = json.loads(report.read_text())
    assert [m["name"] for m in body["models"]] == ["multi", "few"]
    quality = body["data_quality"]["models"]
    assert quality["multi"]["rows"] == quality["few"]["rows"] == len(binary.ids)
    assert list(quality["few"]["features"]) == SUBSET  # per model, in its own order


def test_model_versions_in_sqlite_rows_and_parquet_metadata(
    trained_models: dict[str, TrainedModel],
    subset_model: tuple[Path, lgb.Booster],
    run_cli: RunCli,
    tmp_path: Path,
) -> None:
    binary = trained_models["binary"]
    models = [("champion", binary.model_path), ("few", subset_model[0])]
    config = config_of(tmp_path / "c.toml", [binary.source()], models)
    ids = binary.ids_file(tmp_path / "ids.txt")
    versions = {}
    for name, path in models:
        info = run_cli("model-info", path, "--json")
        versions[name] = json.loads(info.stdout)["version"]
    db = tmp_path / "scores.db"
    assert run_cli("score", ids, "-c", config, "-o", db).returncode == 0
    with sqlite3.connect(db) as con:
        got = con.execute(
            "SELECT DISTINCT model_version_champion, model_version_few FROM predictions"
        ).fetchall()
    assert got == [(versions["champion"], versions["few"])]
    parquet = tmp_path / "scores.parquet"
    assert run_cli("score", ids, "-c", config, "-o", parquet).returncode == 0
    metadata = pq.read_schema(parquet).metadata
    assert json.loads(metadata[b"batchscore.models"]) == [
        {"name": name, "version": versions[name]} for name, _ in models
    ]


def test_resume_of_a_two_model_run_is_byte_identical(
    trained_models: dict[str, TrainedModel],
    subset_model: tuple[Path, lgb.Booster],
    tmp_path: Path,
) -> None:
    binary = trained_models["binary"]
    config = config_of(
        tmp_path / "c.toml",
        [binary.source()],
        [("champion", binary.model_path), ("few", subset_model[0])],
    )
    ids = binary.ids_file(tmp_path / "ids.txt")

    def run(out: Path, *extra: str, env: dict[str, str] | None = None) -> int:
        done = subprocess.run(
            [*batchscore_command(), "score", str(ids), "-c", str(config), "-o", str(out), *extra],
            capture_output=True,
            env=clean_environ(env),
            cwd=ROOT,
            timeout=120,
            check=False,
        )
        return done.returncode

    reference = tmp_path / "reference.csv"
    assert run(reference) == 0
    out = tmp_path / "scores.csv"
    # Killed after its rows were written and synced, before anything was renamed into place.
    assert run(out, "--batch-size", "64", env={"_BATCHSCORE_CRASH_AT": "synced"}) == -9
    assert not out.exists()
    assert run(out, "--batch-size", "64", "--resume") == 0
    assert out.read_bytes() == reference.read_bytes()
    # Resuming with another set of models is refused, naming what differs.
    other = tmp_path / "other.csv"
    assert run(other, env={"_BATCHSCORE_CRASH_AT": "synced"}) == -9
    alone = tmp_path / "alone.toml"
    alone.write_text(
        toml_text(
            {
                "models": [{"name": "champion", "path": str(binary.model_path)}],
                "sources": [binary.source()],
            }
        ),
        encoding="utf-8",
    )
    config = alone
    assert run(other, "--resume") == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "a.txt", "-m", "b.txt"], "with several models each needs a name"),
        (["-m", "x=a.txt", "-m", "x=b.txt"], "two models are named 'x'"),
        (["-m", "9x=a.txt", "-m", "y=b.txt"], "with several models each needs a name"),
    ],
)
def test_model_names_are_checked(
    run_cli: RunCli, tmp_path: Path, args: list[str], message: str
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(toml_text({"sources": [sqlite_source(tmp_path / "f.db")]}), encoding="utf-8")
    result = run_cli("score", "-c", config, *args, stdin=b"1\n")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_model_info_describes_each_named_model(
    trained_models: dict[str, TrainedModel], run_cli: RunCli
) -> None:
    binary, regression = trained_models["binary"], trained_models["regression"]
    result = run_cli("model-info", f"champion={binary.model_path}", f"reg={regression.model_path}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    names = [line.split()[1] for line in lines if line.startswith("name ")]
    assert names == ["champion", "reg"]
    listed = json.loads(
        run_cli(
            "model-info", f"champion={binary.model_path}", f"reg={regression.model_path}", "--json"
        ).stdout
    )
    assert [m["name"] for m in listed] == ["champion", "reg"]
    assert feature_names(28) == [f["name"] for f in listed[1]["features"]]


def test_models_that_encode_a_categorical_differently_each_score_like_pandas(
    run_cli: RunCli, tmp_path: Path
) -> None:
    """The challenger lists the plan categories in another order (as a retrained model whose
    training data had them in another order would): the same fetched text is another code
    for it, and each model still scores exactly as LightGBM's pandas path does."""
    from test_scoring_exact import predict_like_a_pandas_user, sample_rows

    champion = SAMPLE_DIR / "model.txt"
    challenger = tmp_path / "challenger.txt"
    text = champion.read_text()
    order = '["basic", "plus", "premium", "family"]'
    assert text.count(order) == 1
    challenger.write_text(text.replace(order, '["plus", "family", "basic", "premium"]'))
    ids = [f"C{n:06d}" for n in range(1, 301)]
    (tmp_path / "ids.txt").write_text("".join(f"{i}\n" for i in ids))
    config = tmp_path / "c.toml"
    config.write_text(
        toml_text(
            {
                "models": [
                    {"name": "champion", "path": str(champion)},
                    {"name": "challenger", "path": str(challenger)},
                ],
                "sources": [
                    sqlite_source(
                        SAMPLE_DIR / "features.db", table="customer_features", key="customer_id"
                    )
                ],
            }
        ),
        encoding="utf-8",
    )
    out = tmp_path / "scores.csv"
    result = run_cli("score", tmp_path / "ids.txt", "-c", config, "-o", out)
    assert result.returncode == 0, result.stderr
    rows = read_output(out)
    frame = sample_rows(ids)
    for name, path in (("champion", champion), ("challenger", challenger)):
        want = predict_like_a_pandas_user(lgb.Booster(model_file=str(path)), frame)
        got = [float(r[f"score_{name}"]) for r in rows]
        assert np.array_equal(bits(got), bits(want)), name
    assert any(r["score_champion"] != r["score_challenger"] for r in rows), "the codes differ"
    refused = run_cli(
        "score", tmp_path / "ids.txt", "-c", config, "-o", tmp_path / "f.csv", "--with-features"
    )
    assert refused.returncode == 2 and "'plan'" in refused.stderr
