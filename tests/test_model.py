"""The model: what ``model-info`` tells about it, and the safe check of bad model files.

Bad files are checked in this process (the check itself runs LightGBM in a child process, so a
file that makes LightGBM abort cannot take this one down); the exit statuses and messages the
user sees for them are in test_cli.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from batchscore.errors import ModelError
from batchscore.model import Model, read_info
from conftest import SAMPLE_DIR, RunCli, TrainedModel, load_example

SAMPLE_MODEL = SAMPLE_DIR / "model.txt"
SAMPLE_CATEGORIES = {
    "plan": ("basic", "plus", "premium", "family"),
    "region": ("us-east", "us-west", "eu-west", "eu-central", "apac", "latam"),
}


# -- what a model is ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "objective", "classes"),
    [("binary", "binary", 1), ("multiclass", "multiclass", 5), ("regression", "regression", 1)],
)
def test_info_matches_what_lightgbm_says_about_the_model(
    trained_models: dict[str, TrainedModel], kind: str, objective: str, classes: int
) -> None:
    model = trained_models[kind]
    info = read_info(str(model.model_path))
    assert info.objective.split()[0] == objective
    assert info.num_class == classes
    assert info.num_trees == model.booster.num_trees()
    assert list(info.feature_names) == model.booster.feature_name()
    assert info.score_columns() == model.score_columns


def test_feature_ranges_are_the_training_data_ranges(
    trained_models: dict[str, TrainedModel],
) -> None:
    info = read_info(str(trained_models["regression"].model_path))
    x, _ = load_example("regression", "train")
    assert [(f.low, f.high) for f in info.features] == [
        (x[:, j].min(), x[:, j].max()) for j in range(x.shape[1])
    ]
    assert not any(f.categorical for f in info.features)


def test_sample_model_has_its_pandas_categories_in_order() -> None:
    info = read_info(str(SAMPLE_MODEL))
    categorical = {f.name: f.categories for f in info.features if f.categorical}
    assert categorical == SAMPLE_CATEGORIES
    assert len(info.features) == 28
    assert info.num_trees == 150


def test_integer_coded_categoricals_and_unused_features_are_described(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    x = np.column_stack([rng.integers(0, 4, 500), rng.normal(size=500), np.ones(500)])
    y = (x[:, 0] == 2) + 0.1 * x[:, 1]
    booster = lgb.train(
        {"objective": "regression", "verbose": -1, "min_data_in_leaf": 5},
        lgb.Dataset(x, y, feature_name=["kind", "amount", "constant"], categorical_feature=[0]),
        5,
    )
    booster.save_model(tmp_path / "m.txt")
    features = {f.name: f for f in read_info(str(tmp_path / "m.txt")).features}
    assert features["kind"].categorical
    assert features["kind"].categories == ()  # no pandas categories: the codes are the values
    assert not features["amount"].categorical
    assert features["amount"].used
    assert not features["constant"].used


def test_version_is_the_file_hash_and_changes_with_the_model(
    trained_models: dict[str, TrainedModel],
) -> None:
    binary = trained_models["binary"].model_path
    version = read_info(str(binary)).version
    assert version == hashlib.sha256(binary.read_bytes()).hexdigest()[:16]
    assert read_info(str(binary)).version == version
    assert read_info(str(trained_models["regression"].model_path)).version != version


# -- model-info, as the user runs it -------------------------------------------------------------


def test_model_info_shows_objective_trees_classes_features_ranges_and_version(
    run_cli: RunCli,
) -> None:
    code, out, err = run_cli("model-info", SAMPLE_MODEL)
    assert code == 0, err
    text = out.decode()
    lines = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip()}
    assert lines["objective"][0] == "binary"
    assert lines["trees"] == ["150"]
    assert lines["classes"] == ["1"]
    assert lines["features"] == ["28"]
    expected_version = hashlib.sha256(SAMPLE_MODEL.read_bytes()).hexdigest()[:16]
    assert lines["version"] == [expected_version]
    assert lines["plan"] == ["categorical", "basic,", "plus,", "premium,", "family"]
    assert lines["region"][0] == "categorical"
    kind, *detail = lines["feature_adoption_ratio"]
    low, high = (float(v) for v in " ".join(detail).strip("[]").split(","))
    assert kind == "numeric"
    assert 0 <= low < high <= 1
    assert "[LightGBM]" not in text


def test_model_info_json_for_a_multiclass_model(
    run_cli: RunCli, trained_models: dict[str, TrainedModel]
) -> None:
    model = trained_models["multiclass"]
    code, out, err = run_cli("model-info", "--json", model.model_path)
    assert code == 0, err
    info = json.loads(out)
    assert info["num_class"] == 5
    assert info["num_trees"] == model.booster.num_trees()
    assert info["objective"].startswith("multiclass")
    x, _ = load_example("multiclass", "train")
    assert [f["name"] for f in info["features"]] == model.booster.feature_name()
    assert [(f["low"], f["high"]) for f in info["features"]] == [
        (x[:, j].min(), x[:, j].max()) for j in range(x.shape[1])
    ]


def test_model_info_on_a_missing_file_is_one_line_and_exit_2(
    run_cli: RunCli, tmp_path: Path
) -> None:
    code, out, err = run_cli("model-info", tmp_path / "nope.txt")
    assert code == 2
    assert out == b""
    assert len(err.strip().splitlines()) == 1
    assert "does not exist" in err


# -- bad model files ------------------------------------------------------------------------------


def _corrupt(text: bytes) -> bytes:
    return text.replace(b"num_leaves=", b"num_leaves=abc", 1)


BAD_MODELS = {
    # name: (how to make it from a good model file's bytes, words the message must contain)
    "empty": (lambda good: b"", "empty"),
    "not a model": (lambda good: b"id,score\nA,0.5\n", "not a LightGBM model"),
    "truncated": (lambda good: good[: len(good) // 2], "truncated"),
    "corrupt, LightGBM aborts": (_corrupt, "corrupt"),
    "corrupt, LightGBM segfaults": (
        lambda good: good[: len(good) // 2] + b"\nend of trees\n",
        "corrupt",
    ),
    "header without feature names": (
        lambda good: good.replace(b"feature_names=", b"feature_nomes=", 1),
        "feature_names",
    ),
}


@pytest.mark.parametrize("name", list(BAD_MODELS))
def test_bad_model_files_are_model_errors_not_crashes(
    trained_models: dict[str, TrainedModel], tmp_path: Path, name: str
) -> None:
    make, words = BAD_MODELS[name]
    path = tmp_path / "model.txt"
    path.write_bytes(make(trained_models["binary"].model_path.read_bytes()))
    with pytest.raises(ModelError) as error:
        read_info(str(path))
    message = error.value.message
    assert words in message
    assert str(path) in message
    assert "\n" not in message


def test_missing_model_and_directory_are_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        read_info(str(tmp_path / "nope.txt"))
    with pytest.raises(ModelError, match="folder without an MLmodel file"):
        read_info(str(tmp_path))


@pytest.mark.parametrize("suffix", [".txt", ".pkl", ".joblib"])
def test_pickled_models_are_refused_whatever_their_name(
    trained_models: dict[str, TrainedModel], tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps(trained_models["binary"].booster))
    with pytest.raises(ModelError, match="pickle"):
        read_info(str(path))


def test_checking_a_model_after_scoring_in_the_same_process_does_not_hang(
    trained_models: dict[str, TrainedModel],
) -> None:
    # Once LightGBM has predicted, OpenMP keeps worker threads; a forked check that enters
    # LightGBM used to wait for them forever.  Run in a child so a regression fails, not hangs.
    script = textwrap.dedent(
        """
        import sys, numpy as np
        from batchscore.model import Model, read_info
        model = Model(read_info(sys.argv[1]), threads=2)
        model.predict(np.zeros((5000, len(model.info.features))))
        read_info(sys.argv[1])
        print("checked twice")
        """
    )
    path = str(trained_models["binary"].model_path)
    done = subprocess.run(
        [sys.executable, "-c", script, path],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "checked twice\n"


def test_lightgbm_log_lines_go_to_the_logger_not_stdout(
    trained_models: dict[str, TrainedModel],
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = Model(read_info(str(trained_models["binary"].model_path)))
    capfd.readouterr()
    with caplog.at_level(logging.DEBUG, logger="batchscore.model"):
        # verbosity=1: an earlier lgb.train(verbose=-1) in this process silenced LightGBM.
        model.booster.predict(np.zeros((1, 28)), verbosity=1, not_a_parameter=1)
    out, _ = capfd.readouterr()
    assert "[LightGBM]" not in out
    assert "not_a_parameter" in caplog.text
