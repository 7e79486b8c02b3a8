"""The model: load it safely, know its features, turn feature rows into a matrix, predict.

A LightGBM model file is checked before anything else happens.  LightGBM aborts the whole
process on some truncated or corrupt files (``terminate called without an active exception``),
so the first load happens in a forked child (or a subprocess where forking is unsafe); only a
file that loaded there is loaded here.  Pickles are refused: a model file is data, a pickle is code.
A model path may also be an MLflow model folder of the LightGBM flavour
(:mod:`batchscore.mlflow_folder`): the booster file it names is what is checked and loaded.

Matrices are ``float64`` arrays of shape ``(rows, len(feature_names))`` in the model's feature
order, missing values as NaN, categorical strings encoded to the codes LightGBM gave the
``pandas_categorical`` categories stored in the model (an unseen category is missing).  This is
exactly what LightGBM's own pandas path builds, so scores are bit-identical to ``Booster.predict``.
"""

from __future__ import annotations

import ctypes
import faulthandler
import hashlib
import logging
import math
import os
import re
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from batchscore.errors import ModelError
from batchscore.mlflow_folder import MlflowInfo, is_mlflow_path, read_folder
from batchscore.signals import HELD, signals_held

log = logging.getLogger("batchscore.model")

Matrix = npt.NDArray[np.float64]
"""A feature matrix: float64, shape (rows, features), missing = NaN."""

_PICKLE_MAGIC = (b"\x80", b"(dp", b"(lp", b"ccopy_reg", b"cnumpy")


@dataclass(frozen=True)
class FeatureInfo:
    """One model feature: its name, whether it is categorical, its training range or categories."""

    name: str
    categorical: bool
    low: float | None = None
    high: float | None = None
    categories: tuple[Any, ...] = ()
    used: bool = True


@dataclass(frozen=True)
class ModelInfo:
    """What ``model-info`` shows and what the pipeline needs to know about a model."""

    path: str  # as the user gave it: a model file or an MLflow model folder
    version: str  # sha256 of the booster file, first 16 hex digits: a folder's is its booster's
    objective: str
    num_class: int
    num_trees: int
    features: tuple[FeatureInfo, ...]
    booster_file: str  # the LightGBM text model loaded: ``path`` itself, or the one in the folder
    mlflow: MlflowInfo | None = None  # run id and signature of an MLflow folder

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Feature names in the model's order."""
        return tuple(f.name for f in self.features)

    def score_columns(self, raw: bool = False) -> tuple[str, ...]:
        """Output score column names: ``score`` or ``score_0`` .. ``score_{k-1}``."""
        del raw  # raw margins use the same column names
        if self.num_class > 1:
            return tuple(f"score_{i}" for i in range(self.num_class))
        return ("score",)


# LightGBM imports these optional integrations when they are installed; scikit-learn and pandas
# alone add ~2 s to start-up.  batchscore hands LightGBM numpy arrays, so none is needed.
_OPTIONAL = frozenset(
    {
        "sklearn",
        "pandas",
        "dask",
        "distributed",
        "pyarrow",
        "matplotlib",
        "graphviz",
        "cffi",
        "datatable",
    }
)


class _BlockOptional:
    """A meta-path finder that makes LightGBM's optional imports fail fast, while it imports."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.partition(".")[0] in _OPTIONAL:
            raise ImportError(f"{name} is not needed by batchscore")


def lightgbm_module() -> Any:
    """Import LightGBM without its optional integrations (unless something imported it already)."""
    if "lightgbm" in sys.modules:
        return sys.modules["lightgbm"]
    blocker = _BlockOptional()
    sys.meta_path.insert(0, blocker)
    try:
        import lightgbm
    finally:
        sys.meta_path.remove(blocker)
    return lightgbm


def _route_lightgbm_logs() -> None:
    """Send LightGBM's log lines to our logger (stderr, debug level) instead of stdout."""
    lightgbm = lightgbm_module()

    class _Sink:
        def info(self, msg: str) -> None:
            if msg.strip():
                log.debug("lightgbm: %s", msg.strip())

        def warning(self, msg: str) -> None:
            if msg.strip():
                log.debug("lightgbm: %s", msg.strip())

    lightgbm.register_logger(_Sink(), info_method_name="info", warning_method_name="warning")


def _read_checked(path: str, given_as: str = "-m or [model] path") -> bytes:
    p = Path(path)
    if not p.exists():
        if path.startswith(("runs:/", "models:/")) or "://" in path:
            raise ModelError(
                f"model {path} is an MLflow URI; batchscore reads model folders on disk: "
                f"download it first (mlflow artifacts download -u {path} -d DIR), then pass DIR"
            )
        raise ModelError(f"model file {path} does not exist; check {given_as}")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror}") from None
    if not data:
        raise ModelError(f"model file {path} is empty; re-export it with Booster.save_model")
    if data.startswith(_PICKLE_MAGIC) or p.suffix in {".pkl", ".pickle", ".joblib"}:
        raise ModelError(
            f"model file {path} looks like a pickle, which is code, not data; "
            "save the model with Booster.save_model() and pass that file"
        )
    if not data.startswith(b"tree\n") and not data.startswith(b"tree\r\n"):
        raise ModelError(
            f"model file {path} is not a LightGBM model (it should start with 'tree'); "
            "save it with Booster.save_model()"
        )
    if b"end of trees" not in data:
        raise ModelError(f"model file {path} is truncated (no 'end of trees'); copy it again")
    return data


def _verify_in_child(path: str, n_features: int) -> None:
    """Load the model in a separate process; raise ModelError if that process fails or dies."""
    code = (
        "import sys,os,numpy as n,lightgbm as l\n"
        "b=l.Booster(model_file=sys.argv[1])\n"
        "b.predict(n.full((1,int(sys.argv[2])),n.nan),num_threads=1)\n"
    )
    message = ""
    lightgbm = lightgbm_module()
    # A forked child inherits no OpenMP worker threads, yet OpenMP still counts on the pool that
    # an earlier predict in this process started: capped at one thread, the child never waits
    # for it (uncapped, it hangs, and this process with it).
    set_max_threads = getattr(lightgbm.basic._LIB, "LGBM_SetMaxThreads", None)
    if hasattr(os, "fork") and threading.active_count() == 1 and set_max_threads is not None:
        read_fd, write_fd = os.pipe()
        with signals_held():
            pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            faulthandler.disable()  # a crash here is expected and reported by the parent
            for held in HELD:  # a signal ends the child as it would any program
                signal.signal(held, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)
            os.close(read_fd)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            status = 0
            try:
                set_max_threads(ctypes.c_int(1))
                booster = lightgbm.Booster(model_file=path)
                booster.predict(np.full((1, n_features), np.nan), num_threads=1)
            except BaseException as exc:
                os.write(write_fd, str(exc).encode("utf-8", "replace")[:500])
                status = 3
            os._exit(status)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            message = pipe.read().decode("utf-8", "replace")
        _, wait_status = os.waitpid(pid, 0)
        ok = os.waitstatus_to_exitcode(wait_status) == 0
    else:
        import subprocess

        with signals_held():
            child = subprocess.Popen(
                [sys.executable, "-c", code, path, str(n_features)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        _, stderr = child.communicate()
        ok = child.returncode == 0
        lines = stderr.strip().splitlines()
        message = lines[-1] if lines else ""
    if not ok:
        detail = (
            message.strip().splitlines()[-1] if message.strip() else "LightGBM crashed loading it"
        )
        raise ModelError(
            f"model file {path} is corrupt or truncated ({detail}); copy or export it again"
        )


_INFO_RANGE = re.compile(r"^\[(.*):(.*)\]$")


def _parse_header(data: bytes, path: str) -> dict[str, str]:
    header: dict[str, str] = {}
    for raw in data.split(b"\n", 64)[:64]:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if line.startswith("Tree="):
            break
        if "=" in line:
            key, _, value = line.partition("=")
            header[key] = value
    for key in ("feature_names", "num_class", "objective"):
        if key not in header:
            raise ModelError(
                f"model file {path} has no '{key}' line; it is not a usable LightGBM model"
            )
    return header


def _num_class(text: str, path: str) -> int:
    """The header's ``num_class``: a whole number, at least 1 (LightGBM loads a model that says
    0 and then predicts no column at all)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ModelError(
            f"model file {path} says num_class={text.strip()}; a model has at least 1 class "
            "(1 for binary and regression, K for multiclass): it was edited or damaged, "
            "export it again"
        )
    return value


def _categorical_indices(data: bytes, infos: Sequence[str]) -> list[int]:
    match = re.search(rb"\[categorical_feature: ([0-9,]*)\]", data)
    if match and match.group(1):
        return [int(x) for x in match.group(1).decode().split(",")]
    return [i for i, info in enumerate(infos) if info != "none" and not info.startswith("[")]


def read_info(model_path: str, given_as: str = "-m or [model] path") -> ModelInfo:
    """Check the model file (or MLflow folder) safely and describe it (no Booster is kept).
    ``given_as``: where the user wrote the path (said when it does not exist)."""
    folder = read_folder(model_path) if is_mlflow_path(model_path) else None
    path = str(folder.booster) if folder is not None else model_path
    data = _read_checked(path, given_as)
    header = _parse_header(data, path)
    names = header["feature_names"].split(" ")
    infos = header.get("feature_infos", "").split(" ")
    if len(infos) != len(names):
        infos = ["none"] * len(names)
    num_class = _num_class(header["num_class"], path)
    _verify_in_child(path, len(names))
    cat_index = _categorical_indices(data, infos)
    pandas_cats = _pandas_categorical(data)
    if pandas_cats is not None and len(pandas_cats) != len(cat_index):
        raise ModelError(
            f"model file {path} lists {len(pandas_cats)} pandas categories for "
            f"{len(cat_index)} categorical features; it cannot be scored consistently"
        )
    features = []
    for i, (name, info) in enumerate(zip(names, infos, strict=True)):
        low = high = None
        categories: tuple[Any, ...] = ()
        range_match = _INFO_RANGE.match(info)
        if range_match:
            low, high = float(range_match.group(1)), float(range_match.group(2))
        is_cat = i in cat_index
        if is_cat and pandas_cats is not None:
            categories = tuple(pandas_cats[cat_index.index(i)])
        features.append(FeatureInfo(name, is_cat, low, high, categories, used=info != "none"))
    num_trees = data.count(b"\nTree=")
    return ModelInfo(
        path=model_path,
        version=hashlib.sha256(data).hexdigest()[:16],
        objective=header["objective"],
        num_class=num_class,
        num_trees=num_trees,
        features=tuple(features),
        booster_file=path,
        mlflow=folder.info if folder is not None else None,
    )


def _pandas_categorical(data: bytes) -> list[list[Any]] | None:
    marker = data.rfind(b"\npandas_categorical:")
    if marker < 0:
        return None
    line = data[marker + len(b"\npandas_categorical:") :].split(b"\n", 1)[0].strip()
    import orjson

    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if value is None:
        return None
    if not isinstance(value, list):
        return None
    return [list(v) for v in value]


_PLAIN = frozenset({float, int, bool, type(None)})
"""Value types numpy converts to float64 exactly as :func:`to_float` does."""


class Encoder:
    """Turns a column of raw feature values into a float64 model column.

    One rule per value type, the same in every batch, so that a row's features (and its score)
    never depend on the rows it happens to be batched with:

    - a number is its float value (``bool`` is 0.0 or 1.0);
    - a string of ASCII float syntax (``"1.5"``, ``"-2e3"``) is that number; any other string
      is missing;
    - a value that is no finite number is missing: beyond the double range (``1e400``, an
      integer too large for a float), infinite (``inf``, ``-Infinity``) or ``nan``, whichever
      source or input it came from (JSON text reads the first two as null already:
      :mod:`batchscore.jsontext`);
    - ``None``, bytes, lists, objects: missing (NaN);
    - a categorical feature's value is the code LightGBM gave its category (matching the
      category or its text); anything else, unseen categories included, is missing.
    """

    def __init__(self, features: Sequence[FeatureInfo]) -> None:
        self.names = tuple(f.name for f in features)
        # The matrix columns of each feature: one, unless models encode it differently (two
        # models with other categories for it), when each encoding has a column of its own.
        self.slots: dict[str, list[int]] = {}
        for j, name in enumerate(self.names):
            self.slots.setdefault(name, []).append(j)
        self._codes: dict[int, dict[Any, float]] = {}
        for j, feature in enumerate(features):
            if feature.categorical and feature.categories:
                codes: dict[Any, float] = {}
                for code, category in enumerate(feature.categories):
                    codes.setdefault(category, float(code))
                    codes.setdefault(str(category), float(code))
                self._codes[j] = codes

    def column(self, j: int, values: Sequence[Any]) -> npt.NDArray[np.float64]:
        """Feature ``j``'s raw values as float64, shape (len(values),)."""
        n = len(values)
        codes = self._codes.get(j)
        if codes is not None:
            try:  # dict lookups in C; None and unseen categories give NaN
                return np.fromiter(map(codes.get, values, repeat(math.nan)), np.float64, n)
            except TypeError:  # an unhashable value (a list or an object) is missing too
                return np.fromiter(map(_category_code, repeat(codes), values), np.float64, n)
        if set(map(type, values)) <= _PLAIN:
            try:
                column = np.array(values, dtype=np.float64)
            except OverflowError:  # an integer beyond float range: per value, below
                pass
            else:
                column[np.isinf(column)] = math.nan
                return column
        return np.fromiter(map(to_float, values), np.float64, n)

    def matrix(self, rows: Sequence[Mapping[str, Any]]) -> Matrix:
        """A float64 (len(rows), n_features) matrix of feature mappings (``check`` uses it)."""
        out = np.empty((len(rows), len(self.names)), dtype=np.float64)
        for j, name in enumerate(self.names):
            out[:, j] = self.column(j, [row.get(name) for row in rows])
        return out


def _category_code(codes: Mapping[Any, float], value: Any) -> float:
    try:
        return codes.get(value, math.nan)
    except TypeError:  # unhashable value (a list or an object)
        return math.nan


def to_float(value: Any) -> float:
    """One raw feature value as a float, by the rule of :class:`Encoder` (NaN: missing)."""
    kind = type(value)
    if kind is float or kind is int or kind is bool:
        try:
            number = float(value)
        except OverflowError:
            return math.nan
    elif kind is str and value.isascii() and "_" not in value:
        try:
            number = float(value)
        except ValueError:
            return math.nan
    else:
        return math.nan
    return number if math.isfinite(number) else math.nan


class Model:
    """A loaded, checked model that predicts whole matrices."""

    def __init__(self, info: ModelInfo, threads: int = 0) -> None:
        lightgbm = lightgbm_module()
        _route_lightgbm_logs()
        self.info = info
        self.encoder = Encoder(info.features)
        self.threads = threads
        try:
            self.booster = lightgbm.Booster(model_file=info.booster_file)
        except lightgbm.basic.LightGBMError as exc:  # checked already; a race with a changed file
            raise ModelError(f"model file {info.booster_file} could not be loaded: {exc}") from None

    def predict(self, matrix: Matrix, raw_score: bool = False) -> npt.NDArray[np.float64]:
        """Scores, shape (rows,) or (rows, classes). Releases the GIL while LightGBM works."""
        kwargs: dict[str, Any] = {"raw_score": raw_score}
        if self.threads:
            kwargs["num_threads"] = self.threads
        result = self.booster.predict(matrix, **kwargs)
        return np.asarray(result, dtype=np.float64)

    def contributions(self, matrix: Matrix) -> npt.NDArray[np.float64]:
        """SHAP contributions, shape (rows, classes, features + 1); the last is the bias."""
        kwargs: dict[str, Any] = {"pred_contrib": True}
        if self.threads:
            kwargs["num_threads"] = self.threads
        result = np.asarray(self.booster.predict(matrix, **kwargs), dtype=np.float64)
        width = len(self.info.features) + 1
        return result.reshape(result.shape[0], -1, width)


@dataclass(frozen=True)
class ScoringPlan:
    """How many predicts run at once (``workers``), each with how many LightGBM threads."""

    workers: int
    threads: int


def scoring_plan(configured: int | None) -> ScoringPlan:
    """Unset: one scoring thread per core, one LightGBM thread each; else one scoring thread
    with ``configured`` LightGBM threads (0 = LightGBM's default, every core).

    Predicts release the GIL, so scoring threads run beside the event loop and beside each
    other; many OpenMP threads in one predict fight the event loop for its core instead
    (bench/RESULTS.md measures both).
    """
    if configured is None:
        return ScoringPlan(workers=max(1, os.cpu_count() or 1), threads=1)
    return ScoringPlan(workers=1, threads=configured)


@dataclass(frozen=True)
class Member:
    """One model of a :class:`ModelSet`: its name, the model, which columns of the shared
    matrix are its features (in its order; None: all of them, as they are), and the names of
    its score columns."""

    name: str
    model: Model
    columns: npt.NDArray[np.intp] | None
    score_columns: tuple[str, ...]

    @property
    def info(self) -> ModelInfo:
        """The model's description."""
        return self.model.info

    def matrix(self, shared: Matrix) -> Matrix:
        """This model's features of the shared matrix, in its order."""
        return shared if self.columns is None else shared[:, self.columns]


class ModelSet:
    """The models one run scores: features are fetched once, for the union of theirs, into one
    matrix; each model predicts its own columns of it, so each score is bit-identical to that
    model's own ``Booster.predict`` on its features.

    One unnamed model is the plain case (column ``score``, its matrix used as is).  Named models
    write ``score_NAME`` (``score_NAME_K`` for multiclass).  A feature that two models encode
    alike (numeric, or categorical with the same categories) is one matrix column; encoded
    differently, it is a column per encoding, each filled from the same fetched values.
    """

    def __init__(self, models: Sequence[tuple[str, ModelInfo]], threads: int = 0) -> None:
        slots: list[FeatureInfo] = []
        where: dict[tuple[str, bool, tuple[Any, ...]], int] = {}
        indices = []
        for _, info in models:
            columns = []
            for feature in info.features:
                key = (feature.name, feature.categorical, feature.categories)
                if key not in where:
                    where[key] = len(slots)
                    slots.append(feature)
                columns.append(where[key])
            indices.append(np.array(columns, dtype=np.intp))
        everything = np.arange(len(slots), dtype=np.intp)
        members = [
            Member(
                name,
                Model(info, threads=threads),
                None if np.array_equal(index, everything) else index,
                _score_columns(name, info),
            )
            for (name, info), index in zip(models, indices, strict=True)
        ]
        self.members = members
        self.features = tuple(slots)
        self.encoder = Encoder(self.features)
        self.feature_names = tuple(self.encoder.slots)  # each fetched feature once, in order

    @property
    def score_columns(self) -> tuple[str, ...]:
        """Every model's score columns, in model order."""
        return tuple(c for m in self.members for c in m.score_columns)

    @property
    def versions(self) -> dict[str, str]:
        """Each model's version (content hash) by name."""
        return {m.name: m.info.version for m in self.members}

    @property
    def plain(self) -> bool:
        """One unnamed model: columns as they always were (``score``, ``model_version``)."""
        return len(self.members) == 1 and not self.members[0].name

    @property
    def version_label(self) -> str:
        """The models' versions as one text (a report field, a metrics label, a manifest):
        the version of one unnamed model, else ``NAME=VERSION,...``."""
        if self.plain:
            return self.members[0].info.version
        return ",".join(f"{m.name}={m.info.version}" for m in self.members)

    def version_columns(self) -> dict[str, str]:
        """The ``model_version`` audit column(s) and their value: ``model_version``, or
        ``model_version_NAME`` per named model."""
        if self.plain:
            return {"model_version": self.members[0].info.version}
        return {f"model_version_{m.name}": m.info.version for m in self.members}

    def explain_prefixes(self) -> tuple[str, ...]:
        """Per model, what its ``--explain`` columns start with after ``explain_``."""
        return ("",) if self.plain else tuple(f"{m.name}_" for m in self.members)


def _score_columns(name: str, info: ModelInfo) -> tuple[str, ...]:
    """``score`` / ``score_K`` for an unnamed model, ``score_NAME`` / ``score_NAME_K`` else."""
    columns = info.score_columns()
    if not name:
        return columns
    return tuple(f"score_{name}" + c[len("score") :] for c in columns)
