"""MLflow model folders of the LightGBM flavour (issue 13): scored like the booster inside,
everything else refused in one line, and no pickle ever loaded.

mlflow is not a test dependency (pyproject.toml says why).  The folders here are written the
way mlflow writes them: ``Model.save`` is ``yaml.safe_dump(model.to_dict(),
default_flow_style=False)``, and the dictionaries below hold the keys and values that mlflow 3
(``log_model`` of a Booster, ``save_model`` of an ``LGBMClassifier`` and of a scikit-learn
model) and mlflow 2 wrote on real runs; the first test checks the writer against one MLmodel
file mlflow 3 wrote, byte for byte.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
import yaml

from batchscore.errors import ModelError
from batchscore.model import read_info
from conftest import RunCli, TrainedModel, output_scores, read_output, write_config

RUN_ID = "917bb6c581664fc2b1e327c62dced5eb"
MODEL_ID = "m-854704d2251044c6ab78e29653cedeca"

# What mlflow 3.17.2 wrote for mlflow.lightgbm.log_model(booster, name="model", signature=...)
# with a file tracking store (three features: two doubles and a pandas categorical).
CAPTURED_MLMODEL = f"""\
artifact_path: file:///tmp/mlref/mlruns/0/models/{MODEL_ID}/artifacts
flavors:
  lightgbm:
    code: null
    data: model.lgb
    lgb_version: 4.7.0
    model_class: lightgbm.basic.Booster
    serialization_format: skops
    skops_trusted_types:
    - lightgbm.sklearn.LGBMRegressor
    - collections.OrderedDict
    - lightgbm.sklearn.LGBMClassifier
    - lightgbm.basic.Booster
  python_function:
    data: model.lgb
    env:
      conda: conda.yaml
      virtualenv: python_env.yaml
    loader_module: mlflow.lightgbm
    python_version: 3.11.7
is_signature_from_type_hint: false
mlflow_version: 3.17.2
model_id: {MODEL_ID}
model_size_bytes: 5653
model_uuid: {MODEL_ID}
prompts: null
run_id: {RUN_ID}
signature:
  inputs: '[{{"type": "double", "name": "f0", "required": true}}, {{"type": "double",
    "name": "f1", "required": true}}, {{"type": "string", "name": "plan", "required":
    true}}]'
  outputs: '[{{"type": "tensor", "tensor-spec": {{"dtype": "float64", "shape": [-1]}}}}]'
  params: null
type_hint_from_example: false
utc_time_created: '2026-12-01 11:59:06.412094'
"""
CAPTURED_INPUTS = [("f0", "double"), ("f1", "double"), ("plan", "string")]

SKOPS_TRUSTED = [
    "lightgbm.sklearn.LGBMRegressor",
    "collections.OrderedDict",
    "lightgbm.sklearn.LGBMClassifier",
    "lightgbm.basic.Booster",
]


def _python_function(data: str, loader: str = "mlflow.lightgbm") -> dict[str, Any]:
    return {
        "data": data,
        "env": {"conda": "conda.yaml", "virtualenv": "python_env.yaml"},
        "loader_module": loader,
        "python_version": "3.11.7",
    }


def lightgbm_flavor(
    data: str = "model.lgb",
    model_class: str = "lightgbm.basic.Booster",
    serialization_format: str | None = "skops",
    *,
    mlflow2: bool = False,
) -> dict[str, Any]:
    """The ``lightgbm`` flavour as mlflow 3 writes it (mlflow 2: no serialization fields)."""
    flavor: dict[str, Any] = {
        "code": None,
        "data": data,
        "lgb_version": "4.7.0",
        "model_class": model_class,
    }
    if not mlflow2:
        flavor["serialization_format"] = serialization_format
        booster = model_class == "lightgbm.basic.Booster"
        flavor["skops_trusted_types"] = SKOPS_TRUSTED if booster else None
    return flavor


def signature(inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """A signature as mlflow stores it: inputs and outputs are JSON strings inside the YAML."""
    outputs = [{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1]}}]
    return {"inputs": json.dumps(inputs), "outputs": json.dumps(outputs), "params": None}


def mlmodel_document(
    flavors: dict[str, Any],
    *,
    run_id: str | None = RUN_ID,
    inputs: list[dict[str, Any]] | None = None,
    mlflow2: bool = False,
) -> dict[str, Any]:
    """``Model.to_dict()`` of a logged model: mlflow 3's keys, or mlflow 2's (2.16.2)."""
    document: dict[str, Any] = {
        "artifact_path": "model"
        if mlflow2
        else f"file:///tmp/mlref/mlruns/0/models/{MODEL_ID}/artifacts",
        "flavors": flavors,
    }
    if not mlflow2:
        document["is_signature_from_type_hint"] = False
    document["mlflow_version"] = "2.16.2" if mlflow2 else "3.17.2"
    if not mlflow2:
        document["model_id"] = MODEL_ID
    document["model_size_bytes"] = 5653
    document["model_uuid"] = "019fe4c303744ca0ace54ecd6fa109ef" if mlflow2 else MODEL_ID
    if not mlflow2:
        document["prompts"] = None
    if run_id is not None:
        document["run_id"] = run_id
    if inputs is not None:
        document["signature"] = signature(inputs)
    if not mlflow2:
        document["type_hint_from_example"] = False
    document["utc_time_created"] = "2026-12-01 11:59:06.412094"
    return document


def write_folder(folder: Path, document: dict[str, Any], files: dict[str, bytes]) -> Path:
    """An MLflow model folder: MLmodel written as ``Model.save`` does, the environment files
    mlflow writes beside it, and ``files`` (the flavour's data)."""
    folder.mkdir(parents=True)
    with open(folder / "MLmodel", "w") as stream:  # mlflow opens it in text mode too
        yaml.safe_dump(document, stream=stream, default_flow_style=False)
    (folder / "conda.yaml").write_text(
        "channels:\n- conda-forge\ndependencies:\n- python=3.11.7\n- pip<=23.2.1\n- pip:\n"
        "  - mlflow==3.17.2\n  - lightgbm==4.7.0\nname: mlflow-env\n"
    )
    (folder / "python_env.yaml").write_text(
        "python: 3.11.7\nbuild_dependencies:\n- pip==23.2.1\n- setuptools==65.5.0\n- wheel\n"
        "dependencies:\n- -r requirements.txt\n"
    )
    (folder / "requirements.txt").write_text("mlflow==3.17.2\nlightgbm==4.7.0")
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


def columns_of(model: TrainedModel) -> list[dict[str, Any]]:
    """Signature inputs for a trained model's features, as mlflow infers them from a frame."""
    return [
        {"type": "double", "name": name, "required": True} for name in model.booster.feature_name()
    ]


def booster_folder(
    model: TrainedModel, folder: Path, *, mlflow2: bool = False, **kwargs: Any
) -> Path:
    """What ``mlflow.lightgbm.log_model(booster, ...)`` leaves: the booster as model.lgb."""
    document = mlmodel_document(
        {
            "lightgbm": lightgbm_flavor(mlflow2=mlflow2),
            "python_function": _python_function("model.lgb"),
        },
        mlflow2=mlflow2,
        **{"inputs": columns_of(model), **kwargs},
    )
    return write_folder(folder, document, {"model.lgb": model.model_path.read_bytes()})


class _Marker:
    """Pickles to "open(path, 'w')": loading the pickle creates the file at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def test_the_folder_writer_gives_byte_for_byte_what_mlflow_wrote(tmp_path: Path) -> None:
    flavors = {
        "lightgbm": {
            **lightgbm_flavor(),
            "skops_trusted_types": SKOPS_TRUSTED,
        },
        "python_function": _python_function("model.lgb"),
    }
    inputs = [
        {"type": "double", "name": "f0", "required": True},
        {"type": "double", "name": "f1", "required": True},
        {"type": "string", "name": "plan", "required": True},
    ]
    folder = write_folder(tmp_path / "m", mlmodel_document(flavors, inputs=inputs), {})
    assert (folder / "MLmodel").read_text() == CAPTURED_MLMODEL


def test_the_marker_pickle_creates_its_file_when_loaded(tmp_path: Path) -> None:
    # The refusal tests below assert that this file never appears: prove that it would.
    marker = tmp_path / "unpickled"
    pickle.loads(pickle.dumps(_Marker(marker))).close()
    assert marker.exists()


# -- a folder scores like its booster -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "how", "mlflow2"),
    [
        ("binary", "-m", False),
        ("multiclass", "[model] path", False),
        ("regression", "-m", True),
    ],
)
def test_a_folder_scores_exactly_what_its_booster_predicts(
    trained_models: dict[str, TrainedModel],
    run_cli: RunCli,
    tmp_path: Path,
    kind: str,
    how: str,
    mlflow2: bool,
) -> None:
    model = trained_models[kind]
    folder = booster_folder(model, tmp_path / "model", mlflow2=mlflow2)
    config = write_config(
        tmp_path / "c.toml",
        model=folder if how == "[model] path" else None,
        sources=[model.source(batch_size=50)],
        score={"batch_size": 64},
    )
    flags = ["-m", str(folder)] if how == "-m" else []
    ids = "".join(f"{i}\n" for i in model.ids).encode()
    code, out, err = run_cli("score", "-c", config, *flags, stdin=ids)
    assert code == 0, err
    rows = read_output(out)
    assert [row["id"] for row in rows] == list(model.ids)
    inside = lgb.Booster(model_file=str(folder / "model.lgb"))
    expected = np.asarray(inside.predict(model.features), dtype=np.float64)
    assert np.array_equal(
        output_scores(rows, model.score_columns), expected.reshape(len(model.ids), -1)
    )


def test_a_folder_has_its_boosters_version_and_mlmodel_names_the_folder(
    trained_models: dict[str, TrainedModel], tmp_path: Path
) -> None:
    model = trained_models["binary"]
    folder = booster_folder(model, tmp_path / "model")
    file_info = read_info(str(model.model_path))
    folder_info = read_info(str(folder))
    assert folder_info.version == file_info.version  # a run resumes across the two
    assert folder_info.booster_file == str(folder / "model.lgb")
    assert folder_info.features == file_info.features
    assert read_info(str(folder / "MLmodel")).version == file_info.version


# -- model-info -----------------------------------------------------------------------------------


def test_model_info_of_a_folder_shows_its_run_id_and_signature_inputs(
    trained_models: dict[str, TrainedModel], run_cli: RunCli, tmp_path: Path
) -> None:
    model = trained_models["regression"]
    inputs = [
        {"type": "double", "name": "f0", "required": True},
        {"type": "long", "name": "f1", "required": False},
        {"type": "string", "name": "plan", "required": True},
    ]
    folder = booster_folder(model, tmp_path / "model", inputs=inputs)
    code, out, err = run_cli("model-info", folder)
    assert code == 0, err
    lines = out.decode().splitlines()
    fields = {line.split()[0]: line.split()[1:] for line in lines if not line.startswith(" ")}
    assert fields["run_id"] == [RUN_ID]
    assert fields["booster"] == [str(folder / "model.lgb")]
    assert fields["version"] == [read_info(str(model.model_path)).version]
    assert fields["signature"] == ["3", "inputs"]
    tail = [line.split() for line in lines[lines.index("signature  3 inputs") + 1 :]]
    assert tail == [["f0", "double"], ["f1", "long", "(optional)"], ["plan", "string"]]

    code, out, err = run_cli("model-info", "--json", folder)
    assert code == 0, err
    described = json.loads(out)
    assert described["path"] == str(folder)
    assert described["mlflow"]["run_id"] == RUN_ID
    assert described["mlflow"]["signature_inputs"] == [
        {"name": "f0", "type": "double"},
        {"name": "f1", "type": "long (optional)"},
        {"name": "plan", "type": "string"},
    ]


def test_model_info_of_a_folder_without_run_or_signature_says_so(
    trained_models: dict[str, TrainedModel], run_cli: RunCli, tmp_path: Path
) -> None:
    model = trained_models["binary"]
    document = mlmodel_document(
        {"lightgbm": lightgbm_flavor(), "python_function": _python_function("model.lgb")},
        run_id=None,  # mlflow.lightgbm.save_model outside a run
    )
    folder = write_folder(tmp_path / "m", document, {"model.lgb": model.model_path.read_bytes()})
    code, out, err = run_cli("model-info", folder)
    assert code == 0, err
    text = out.decode()
    assert "run_id     (none)\n" in text
    assert "signature" not in text
    assert json.loads(run_cli("model-info", "--json", folder).stdout)["mlflow"] == {
        "run_id": None,
        "signature_inputs": [],
        "mlflow_version": "3.17.2",
    }
    assert json.loads(run_cli("model-info", "--json", model.model_path).stdout)["mlflow"] is None


# -- what is refused ------------------------------------------------------------------------------


@pytest.fixture
def refused(trained_models: dict[str, TrainedModel], run_cli: RunCli, tmp_path: Path) -> Any:
    """``refused(model_path) -> message``: ``score -m model_path`` exits 2 with one line."""
    model = trained_models["binary"]
    config = write_config(tmp_path / "c.toml", sources=[model.source()])
    output = tmp_path / "scores.csv"

    def run(path: Path | str) -> str:
        code, out, err = run_cli(
            "score", "-c", config, "-m", path, "-o", output, stdin=b"b-00001\n"
        )
        assert code == 2, err
        assert out == b""
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith("batchscore: error: ")
        assert "Traceback" not in err
        assert not output.exists()
        return err

    return run


def test_a_folder_of_another_flavor_is_refused_naming_its_flavors(
    refused: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    document = mlmodel_document(  # what mlflow.sklearn.save_model writes
        {
            "python_function": {
                "env": {"conda": "conda.yaml", "virtualenv": "python_env.yaml"},
                "loader_module": "mlflow.sklearn",
                "model_path": "model.pkl",
                "predict_fn": "predict",
                "python_version": "3.11.7",
            },
            "sklearn": {
                "code": None,
                "pickled_model": "model.pkl",
                "serialization_format": "cloudpickle",
                "sklearn_version": "1.9.1",
                "skops_trusted_types": None,
            },
        }
    )
    folder = write_folder(tmp_path / "m", document, {"model.pkl": pickle.dumps(_Marker(marker))})
    err = refused(folder)
    assert "flavors python_function, sklearn" in err
    assert "lightgbm" in err
    assert not marker.exists()


SKLEARN_API = {
    # name: (lightgbm flavour, data file name)
    "mlflow 3, cloudpickle": (
        lightgbm_flavor("model.pkl", "lightgbm.sklearn.LGBMClassifier", "cloudpickle"),
        "model.pkl",
    ),
    "mlflow 3, pickle": (
        lightgbm_flavor("model.pkl", "lightgbm.sklearn.LGBMRegressor", "pickle"),
        "model.pkl",
    ),
    "mlflow 3, skops": (
        lightgbm_flavor("model.skops", "lightgbm.sklearn.LGBMClassifier", "skops"),
        "model.skops",
    ),
    "mlflow 2": (
        lightgbm_flavor("model.pkl", "lightgbm.sklearn.LGBMClassifier", mlflow2=True),
        "model.pkl",
    ),
}


@pytest.mark.parametrize("name", list(SKLEARN_API))
def test_a_pickled_scikit_learn_model_is_refused_and_never_unpickled(
    refused: Any, tmp_path: Path, name: str
) -> None:
    flavor, data = SKLEARN_API[name]
    marker = tmp_path / "unpickled"
    document = mlmodel_document(
        {"lightgbm": flavor, "python_function": _python_function(data)}, mlflow2=name == "mlflow 2"
    )
    folder = write_folder(tmp_path / "m", document, {data: pickle.dumps(_Marker(marker))})
    err = refused(folder)
    assert f"scikit-learn-API LightGBM model ({flavor['model_class']}" in err
    assert "never loads pickles" in err
    assert "mlflow.lightgbm.log_model(model.booster_, ...)" in err
    assert not marker.exists()


def test_a_pickle_where_mlmodel_says_booster_is_refused_and_never_unpickled(
    refused: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    document = mlmodel_document(
        {"lightgbm": lightgbm_flavor(), "python_function": _python_function("model.lgb")}
    )
    folder = write_folder(tmp_path / "m", document, {"model.lgb": pickle.dumps(_Marker(marker))})
    err = refused(folder)
    assert "looks like a pickle" in err
    assert not marker.exists()


def test_missing_files_are_refused(
    trained_models: dict[str, TrainedModel], refused: Any, tmp_path: Path
) -> None:
    model = trained_models["binary"]
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(model.model_path, bare / "model.lgb")
    assert "bare is a folder without an MLmodel file" in refused(bare)

    folder = booster_folder(model, tmp_path / "m")
    (folder / "model.lgb").unlink()
    err = refused(folder)
    assert "names the booster file model.lgb, which is not in" in err

    assert "does not exist" in refused(tmp_path / "nowhere")
    assert "mlflow artifacts download -u runs:/abc/model -d DIR" in refused("runs:/abc/model")


MALFORMED = {
    # name: (MLmodel text, words the message must contain)
    "not YAML": ("flavors:\n  lightgbm: {data: model.lgb\n", "not valid YAML at line 3"),
    "a list": ("- flavors\n- lightgbm\n", "not an MLflow MLmodel file"),
    "no flavors": ("mlflow_version: 3.17.2\nrun_id: abc\n", "lists no flavors"),
    "no data": ("flavors:\n  lightgbm:\n    lgb_version: 4.7.0\n", "names no data file"),
    "data outside": ("flavors:\n  lightgbm:\n    data: ../model.lgb\n", "outside its folder"),
    "signature not JSON": (
        "flavors:\n  lightgbm:\n    data: model.lgb\nsignature:\n  inputs: '[{\"type\": '\n",
        "inputs are not JSON",
    ),
    "a Python tag": (
        "flavors: !!python/object/apply:builtins.open ['{marker}', 'w']\n",
        "not valid YAML",
    ),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_mlmodel_is_refused(
    trained_models: dict[str, TrainedModel], refused: Any, tmp_path: Path, name: str
) -> None:
    text, words = MALFORMED[name]
    marker = tmp_path / "unpickled"
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "MLmodel").write_text(text.replace("{marker}", str(marker)))
    shutil.copy(trained_models["binary"].model_path, folder / "model.lgb")
    shutil.copy(trained_models["binary"].model_path, tmp_path / "model.lgb")
    err = refused(folder)
    assert words in err
    assert str(folder) in err
    assert not marker.exists()  # the safe loader builds no Python object


def test_errors_are_model_errors_in_process(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "MLmodel").write_text("flavors:\n  keras: {data: data}\n")
    with pytest.raises(ModelError, match="flavors keras, without the lightgbm flavor"):
        read_info(str(folder))
