"""MLflow model folders of the LightGBM flavour: which booster file to load, what MLmodel says.

An MLflow model folder holds an ``MLmodel`` file (YAML) beside the files of each flavour.  Only
the ``lightgbm`` flavour of a ``lightgbm.Booster`` is scored: its ``data`` names a LightGBM text
model (``model.lgb``), which :mod:`batchscore.model` then checks and loads like any model file.
A scikit-learn-API model (``LGBMClassifier``, ``LGBMRegressor``) is saved by MLflow as a pickle,
cloudpickle or skops file: it is refused by what ``MLmodel`` says, and that file is never opened.

``MLmodel`` is read with PyYAML's safe loader (no YAML tag can build a Python object), and mlflow
is never imported: it is a large package, and loading a model through it would unpickle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchscore.errors import ModelError

MLMODEL = "MLmodel"
BOOSTER_CLASS = "lightgbm.basic.Booster"
_HOW_TO_SAVE_THE_BOOSTER = (
    "log the booster instead, mlflow.lightgbm.log_model(model.booster_, ...), "
    "or pass the file model.booster_.save_model(PATH) writes"
)
_PICKLE_NAMES = (".pkl", ".pickle", ".joblib", ".skops", ".cloudpickle")


@dataclass(frozen=True)
class SignatureInput:
    """One input of an MLflow model signature: a named column, or an unnamed tensor."""

    name: str | None
    type: str


@dataclass(frozen=True)
class MlflowInfo:
    """What an MLflow folder's ``MLmodel`` says beyond the booster: for ``model-info``."""

    run_id: str | None
    signature_inputs: tuple[SignatureInput, ...]  # empty when MLmodel has no signature
    mlflow_version: str | None


@dataclass(frozen=True)
class MlflowFolder:
    """An MLflow model folder of the LightGBM flavour: the booster file in it, and its info."""

    booster: Path
    info: MlflowInfo


def is_mlflow_path(path: str) -> bool:
    """Whether ``path`` names an MLflow model folder (or its ``MLmodel`` file), not a model file."""
    p = Path(path)
    return p.is_dir() or (p.name == MLMODEL and p.is_file())


def read_folder(path: str) -> MlflowFolder:
    """Read ``MLmodel`` in ``path`` and find the LightGBM booster file it names.

    Raises :class:`ModelError` for a folder without ``MLmodel``, malformed YAML, another flavour,
    a scikit-learn-API model (pickled), or a booster file that is not in the folder.
    """
    folder = Path(path)
    if folder.name == MLMODEL and folder.is_file():
        folder = folder.parent
    mlmodel = folder / MLMODEL
    if not mlmodel.is_file():
        raise ModelError(
            f"model path {path} is a folder without an {MLMODEL} file; point -m at an MLflow "
            "model folder or a LightGBM model file"
        )
    document = _load_yaml(mlmodel)
    flavors = document.get("flavors")
    if not isinstance(flavors, Mapping) or not flavors:
        raise ModelError(f"{mlmodel} lists no flavors; it is not an MLflow model")
    flavor = flavors.get("lightgbm")
    if not isinstance(flavor, Mapping):
        names = ", ".join(sorted(map(str, flavors)))
        raise ModelError(
            f"{folder} is an MLflow model of flavors {names}, without the lightgbm flavor; "
            "batchscore scores LightGBM boosters only"
        )
    data = flavor.get("data")
    if not isinstance(data, str) or not data:
        raise ModelError(f"{mlmodel} names no data file for its lightgbm flavor; export it again")
    model_class = flavor.get("model_class")
    if (model_class is not None and model_class != BOOSTER_CLASS) or data.lower().endswith(
        _PICKLE_NAMES
    ):
        saved_as = flavor.get("serialization_format") or "a pickle"
        raise ModelError(
            f"{folder} holds a scikit-learn-API LightGBM model ({model_class or 'unknown class'}, "
            f"saved as {saved_as} in {data}); batchscore never loads pickles; "
            + _HOW_TO_SAVE_THE_BOOSTER
        )
    booster = folder / data
    if Path(data).is_absolute() or ".." in Path(data).parts:
        raise ModelError(f"{mlmodel} names {data}, outside its folder; MLflow never does that")
    if not booster.is_file():
        raise ModelError(
            f"{mlmodel} names the booster file {data}, which is not in {folder}; "
            "copy the whole folder again"
        )
    info = MlflowInfo(
        run_id=_text(document.get("run_id")),
        signature_inputs=_signature_inputs(document.get("signature"), mlmodel),
        mlflow_version=_text(document.get("mlflow_version")),
    )
    return MlflowFolder(booster, info)


def _load_yaml(mlmodel: Path) -> Mapping[str, Any]:
    import yaml

    try:
        text = mlmodel.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ModelError(f"cannot read {mlmodel}: {reason}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}"
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ModelError(
            f"{mlmodel} is not valid YAML{where} ({problem}); export the model again"
        ) from None
    if not isinstance(document, Mapping):
        raise ModelError(f"{mlmodel} is not an MLflow MLmodel file (no flavors); export it again")
    return document


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _signature_inputs(signature: Any, mlmodel: Path) -> tuple[SignatureInput, ...]:
    """The inputs of a signature; MLflow stores them as a JSON string inside the YAML."""
    if not isinstance(signature, Mapping) or signature.get("inputs") is None:
        return ()
    import orjson

    raw = signature["inputs"]
    try:
        specs = orjson.loads(raw) if isinstance(raw, str) else raw
    except orjson.JSONDecodeError:
        raise ModelError(
            f"{mlmodel} has a signature whose inputs are not JSON; export the model again"
        ) from None
    if not isinstance(specs, list) or not all(isinstance(s, Mapping) for s in specs):
        raise ModelError(f"{mlmodel} has a signature whose inputs are not a list of columns")
    return tuple(SignatureInput(_text(spec.get("name")), _spec_type(spec)) for spec in specs)


def _spec_type(spec: Mapping[str, Any]) -> str:
    kind = str(spec.get("type", "unknown"))
    tensor = spec.get("tensor-spec")
    if kind == "tensor" and isinstance(tensor, Mapping):
        shape = tensor.get("shape")
        return f"tensor {tensor.get('dtype', '?')} {list(shape) if shape else ''}".rstrip()
    if spec.get("required") is False:
        return f"{kind} (optional)"
    return kind
