"""Shared fixtures and helpers for the batchscore test suite.

Everything here uses real parts (STYLE.md, habit 6): real SQLite files, real LightGBM models
trained on LightGBM's own example data, and the real ``batchscore`` command run as a
subprocess.  Fixtures:

``run_cli``
    Run the installed command in a subprocess (cwd: the test's tmp dir, ``BATCHSCORE_*``
    variables removed from the environment); returns a :class:`CliResult`
    ``(returncode, stdout bytes, stderr text)``.
``score_in_process``
    Run a ``score`` job in this process through the real settings layer
    (:func:`batchscore.resolving.resolve`) and :func:`batchscore.lifecycle.run_job`, with stdin,
    stdout and stderr swapped for buffers.  Use it where process behaviour is not the point: it is
    several times faster than a subprocess.
``trained_models``
    Session-scoped: ``{"binary" | "multiclass" | "regression": TrainedModel}``, each a small real
    model trained on LightGBM's example data (``tests/lightgbm-examples``) plus a SQLite
    feature file holding that example's test rows (some values NULL).
``id_store``
    Session-scoped: a binary model and a SQLite store keyed by awkward text IDs (``007`` and
    ``7``, commas, quotes, unicode, one row with every feature NULL) with a ready config file.
``postgres``
    Session-scoped: a real PostgreSQL server (:class:`pgserver.PostgresServer`) on a free port in
    a temporary folder, stopped at the end.  Where none can be had, the tests that use it are
    skipped with one line saying why, unless ``TEST_REQUIRE_POSTGRES=1`` (set by ``.ci/run``)
    makes that a failure.

Plain helpers (import them with ``from conftest import ...``): :func:`write_feature_db`,
:func:`write_config`, :func:`toml_text`, :func:`read_output`, :func:`read_errors`,
:func:`output_scores`, :func:`sqlite_source`.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = ROOT / "sample_data"
SAMPLE_CONFIG = ROOT / "configs" / "sample.toml"
EXAMPLES_DIR = ROOT / "tests" / "lightgbm-examples"  # inside the clone: nothing outside it

# name -> (folder, file stem, training parameters).  The parameters follow each example's
# train.conf, with fewer trees so that the suite stays fast.
EXAMPLES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "binary": (
        "binary_classification",
        "binary",
        {"objective": "binary", "num_leaves": 63, "learning_rate": 0.1, "min_data_in_leaf": 50},
    ),
    "multiclass": (
        "multiclass_classification",
        "multiclass",
        {"objective": "multiclass", "num_class": 5, "num_leaves": 31, "learning_rate": 0.05},
    ),
    "regression": (
        "regression",
        "regression",
        {
            "objective": "regression",
            "num_leaves": 31,
            "learning_rate": 0.05,
            "min_data_in_leaf": 100,
        },
    ),
}
NUM_TREES = 30


# -- the order the tests run in ------------------------------------------------------------------

# Modules whose tests leave a thread running in the test process for good: test_dask_engine's
# in-process Dask client starts distributed's "Dask-Offload" thread, which never ends.  An
# in-process job checks its model in a forked child only while the process has one thread, and
# otherwise starts a Python process that imports LightGBM (about 0.5 s of CPU each), so every
# in-process job run after them in the same pytest process (xdist worker) costs that much more.
LEAVE_THREADS = ("test_dask_engine.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run :data:`LEAVE_THREADS` modules last (in their own order); the rest keep theirs."""
    items.sort(key=lambda item: item.path.name in LEAVE_THREADS)


# -- running the command --------------------------------------------------------------------------


class CliResult(NamedTuple):
    """What a run of the real command produced."""

    returncode: int
    stdout: bytes
    stderr: str


def batchscore_command() -> list[str]:
    """The installed ``batchscore`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("batchscore")
    return [str(script)] if script.exists() else [sys.executable, "-m", "batchscore"]


def clean_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without ``BATCHSCORE_*`` variables, plus ``extra``.

    ``BATCHSCORE_TIMESTAMPS=never``: a test's stderr is a pipe, where lines start with the time
    by default; tests compare the messages, and ``tests/test_operator.py`` checks the times
    (passing ``auto`` back, or an environment of its own).
    """
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BATCHSCORE_")}
    environ["BATCHSCORE_TIMESTAMPS"] = "never"
    environ.update(extra or {})
    return environ


RunCli = Callable[..., CliResult]


@pytest.fixture
def run_cli(tmp_path: Path) -> RunCli:
    """``run_cli(*args, stdin=b"", env={}, cwd=tmp_path, timeout=60) -> CliResult``."""

    def run(
        *args: str | os.PathLike[str],
        stdin: bytes = b"",
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 60,
    ) -> CliResult:
        proc = subprocess.run(
            [*batchscore_command(), *map(str, args)],
            input=stdin,
            capture_output=True,
            env=clean_environ(env),
            cwd=cwd or tmp_path,
            timeout=timeout,
            check=False,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace"))

    return run


@dataclass(frozen=True)
class InProcessRun:
    """What an in-process job produced: its exit status, stdout bytes and stderr text."""

    status: int
    stdout: bytes
    stderr: str
    outcome: Any  # batchscore.lifecycle.Outcome


ScoreInProcess = Callable[..., InProcessRun]


@pytest.fixture
def score_in_process() -> ScoreInProcess:
    """``score_in_process(config=None, environ={}, stdin=b"", **flags) -> InProcessRun``.

    ``flags`` use the ``score`` command's Python names (``ids``, ``model``, ``output``,
    ``batch_size``, ``keep=("a",)``, ...).  Errors the job raises (``BatchscoreError``) propagate.
    """
    from batchscore.lifecycle import run_job
    from batchscore.resolving import resolve
    from batchscore.scoring import Environment

    def run(
        *,
        config: Path | None = None,
        environ: Mapping[str, str] | None = None,
        stdin: bytes = b"",
        **flags: Any,
    ) -> InProcessRun:
        environ = dict(environ or {})
        settings = resolve(flags, str(config) if config else None, environ)
        stderr = io.StringIO()
        with tempfile.TemporaryFile() as stdout:
            env = Environment(
                stdin=io.BytesIO(stdin),
                stdout_fd=stdout.fileno(),
                stderr=stderr,
                stderr_isatty=False,
                environ=environ,
            )
            outcome = run_job(settings, env)
            stdout.seek(0)
            out = stdout.read()
        return InProcessRun(int(outcome.status), out, stderr.getvalue(), outcome)

    return run


# -- a real PostgreSQL server ---------------------------------------------------------------------

REQUIRE_POSTGRES = "TEST_REQUIRE_POSTGRES"  # not BATCHSCORE_*: those are batchscore's settings


def skip_without_postgres() -> None:
    """At the top of a PostgreSQL test module: skip it all, in one line saying why, where no
    server can be had (a failure instead under ``TEST_REQUIRE_POSTGRES=1``)."""
    from pgserver import why_no_server

    why = why_no_server()
    if why is None:
        return
    if os.environ.get(REQUIRE_POSTGRES) == "1":
        pytest.fail(f"{REQUIRE_POSTGRES}=1 but no PostgreSQL server can be had: {why}", False)
    pytest.skip(f"no PostgreSQL server: {why}", allow_module_level=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A running :class:`pgserver.PostgresServer` with the test database and user set up."""
    from pgserver import NoServer, start_server

    try:
        server = start_server()
    except NoServer as exc:
        if os.environ.get(REQUIRE_POSTGRES) == "1":
            pytest.fail(f"{REQUIRE_POSTGRES}=1 but no PostgreSQL server can be had: {exc}")
        pytest.skip(f"no PostgreSQL server: {exc}")
    try:
        yield server
    finally:
        server.close()


# -- SQLite feature files and configs -------------------------------------------------------------


def _sql_value(value: Any) -> Any:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return _sql_value(value.item())
    return value


def write_feature_db(
    path: Path,
    data: pd.DataFrame | npt.NDArray[np.float64],
    ids: Sequence[str | int],
    *,
    table: str = "features",
    key: str = "id",
    key_type: str = "TEXT",
    column_types: Mapping[str, str] | None = None,
) -> Path:
    """Write a SQLite feature table: one row per ID, NaN/None stored as NULL.

    ``data`` is a DataFrame (its column names) or a 2-D float array (columns ``f0..fN``).
    Columns are ``REAL`` for numbers and ``TEXT`` otherwise unless ``column_types`` says (an
    empty string declares no type, so SQLite stores values exactly as given, e.g. numeric strings).
    """
    frame = (
        data
        if isinstance(data, pd.DataFrame)
        else pd.DataFrame(data, columns=[f"f{i}" for i in range(data.shape[1])])
    )
    if len(frame) != len(ids):
        raise ValueError("one ID per row")
    types = dict(column_types or {})
    for name in frame.columns:
        types.setdefault(
            name, "REAL" if pd.api.types.is_numeric_dtype(frame[name].dtype) else "TEXT"
        )
    columns = [f'"{key}" {key_type} PRIMARY KEY NOT NULL'] + [
        f'"{name}" {types[name]}'.rstrip() for name in frame.columns
    ]
    marks = ", ".join("?" * (len(frame.columns) + 1))
    rows = [
        (ident, *(_sql_value(v) for v in values))
        for ident, values in zip(ids, frame.itertuples(index=False, name=None), strict=True)
    ]
    with sqlite3.connect(path) as db:
        db.execute(f'CREATE TABLE "{table}" ({", ".join(columns)})')
        db.executemany(f'INSERT INTO "{table}" VALUES ({marks})', rows)
    db.close()
    return path


def sqlite_source(
    db: Path, *, table: str = "features", key: str = "id", name: str = "features", **extra: Any
) -> dict[str, Any]:
    """A ``[[sources]]`` table for a SQLite feature file."""
    return {"name": name, "kind": "sqlite", "path": str(db), "table": table, "key": key, **extra}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, os.PathLike)):
        return json.dumps(str(value), ensure_ascii=False)  # JSON strings are TOML basic strings
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{" + items + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_text(document: Mapping[str, Any]) -> str:
    """A TOML document: top-level tables become ``[section]``, lists of tables ``[[name]]``."""
    lines: list[str] = []
    for name, value in document.items():
        if isinstance(value, Mapping):
            lines.append(f"[{name}]")
            lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for table in value:
                lines.append(f"[[{name}]]")
                lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items()]
        else:
            raise TypeError(f"top-level {name} must be a table or an array of tables")
        lines.append("")
    return "\n".join(lines)


def write_config(
    path: Path,
    *,
    model: Path | str | None = None,
    sources: Sequence[Mapping[str, Any]] = (),
    **sections: Mapping[str, Any],
) -> Path:
    """Write a batchscore TOML config: ``[model] path``, ``[[sources]]`` and any other sections."""
    document: dict[str, Any] = {}
    if model is not None:
        document["model"] = {"path": str(model)}
    document.update(sections)
    if sources:
        document["sources"] = list(sources)
    path.write_text(toml_text(document), encoding="utf-8")
    return path


# -- reading what batchscore wrote ----------------------------------------------------------------


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_output(source: Path | bytes, fmt: str | None = None) -> list[dict[str, Any]]:
    """Rows of a batchscore output (CSV: all values as text; JSON lines: as parsed).

    ``source`` is a path (format and gzip from its name unless ``fmt``) or stdout bytes (CSV
    unless ``fmt``).
    """
    if isinstance(source, bytes):
        fmt = fmt or "csv"
        text: io.TextIOBase = io.TextIOWrapper(io.BytesIO(source), encoding="utf-8", newline="")
    else:
        name = source.name.removesuffix(".gz")
        fmt = fmt or ("jsonl" if name.endswith((".jsonl", ".ndjson")) else "csv")
        text = _open_text(source)
    with text:
        if fmt == "csv":
            return list(csv.DictReader(text))
        return [json.loads(line) for line in text.read().split("\n") if line]


def read_errors(path: Path) -> list[dict[str, Any]]:
    """The records of an errors file (JSON lines)."""
    # split on "\n" only: str.splitlines() would also split inside IDs holding U+0085 or U+2028
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def output_scores(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> np.ndarray:
    """The score columns of output rows as a float64 matrix (rows, len(columns))."""
    return np.array([[float(row[c]) for c in columns] for row in rows], dtype=np.float64).reshape(
        len(rows), len(columns)
    )


# -- real models ----------------------------------------------------------------------------------


def load_example(kind: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """LightGBM's example data: (features float64, labels) for ``split`` = train | test."""
    folder, stem, _ = EXAMPLES[kind]
    data = np.loadtxt(EXAMPLES_DIR / folder / f"{stem}.{split}", delimiter="\t", dtype=np.float64)
    return data[:, 1:], data[:, 0]


def feature_names(count: int) -> list[str]:
    """``f0 .. f{count-1}``."""
    return [f"f{i}" for i in range(count)]


def train_example(kind: str, model_path: Path, num_trees: int = NUM_TREES) -> lgb.Booster:
    """Train a small model on an example's training data, save it, return it loaded from disk."""
    x, y = load_example(kind, "train")
    params = {**EXAMPLES[kind][2], "verbose": -1, "num_threads": 1, "deterministic": True}
    booster = lgb.train(
        params, lgb.Dataset(x, y, feature_name=feature_names(x.shape[1])), num_trees
    )
    booster.save_model(model_path)
    return lgb.Booster(model_file=str(model_path))


@dataclass(frozen=True)
class TrainedModel:
    """A real model and a SQLite file with the example's test rows to score with it."""

    kind: str
    model_path: Path
    booster: lgb.Booster = field(repr=False)  # loaded from model_path, as a user would
    db_path: Path
    ids: tuple[str, ...] = field(repr=False)
    features: np.ndarray = field(repr=False)  # float64 (rows, features): the db's rows, NULL = NaN
    key: str = "id"
    table: str = "features"
    score_columns: tuple[str, ...] = field(default=("score",))

    def expected(self, raw_score: bool = False) -> np.ndarray:
        """``Booster.predict`` on the stored rows, shape (rows, score columns)."""
        scores = self.booster.predict(self.features, raw_score=raw_score)
        return np.asarray(scores, dtype=np.float64).reshape(len(self.ids), -1)

    def source(self, **extra: Any) -> dict[str, Any]:
        """The ``[[sources]]`` table for this model's feature file."""
        return sqlite_source(self.db_path, table=self.table, key=self.key, **extra)

    def ids_file(self, path: Path) -> Path:
        """Write every ID, one per line."""
        path.write_text("".join(f"{i}\n" for i in self.ids), encoding="utf-8")
        return path


# Text keys with characters that need quoting in CSV; the regression store uses integer keys.
_ID_STYLES: dict[str, tuple[Callable[[int], str], str]] = {
    "binary": (lambda i: f"b-{i:05d}", "TEXT"),
    "multiclass": (lambda i: f'm,"{i}"-ü', "TEXT"),
    "regression": (lambda i: str(1000 + i), "INTEGER"),
}


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrainedModel]:
    """A small trained model per example kind, with its test rows in a SQLite file."""
    root = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(20240601)
    models: dict[str, TrainedModel] = {}
    for kind in EXAMPLES:
        booster = train_example(kind, root / f"{kind}.txt")
        x, _ = load_example(kind, "test")
        x = x[:300].copy()
        x[rng.random(x.shape) < 0.05] = np.nan  # some missing values, stored as NULL
        x[:, 0] = np.where(np.isnan(x[:, 0]), 0.5, x[:, 0])  # no row is entirely missing
        make_id, key_type = _ID_STYLES[kind]
        ids = tuple(make_id(i) for i in range(len(x)))
        db = write_feature_db(
            root / f"{kind}.db",
            x,
            [int(i) for i in ids] if key_type == "INTEGER" else ids,
            key_type=key_type,
        )
        classes = booster.num_model_per_iteration() if kind == "multiclass" else 1
        columns = tuple(f"score_{k}" for k in range(classes)) if classes > 1 else ("score",)
        models[kind] = TrainedModel(
            kind, root / f"{kind}.txt", booster, db, ids, x, "id", "features", columns
        )
    return models


@dataclass(frozen=True)
class IdStore:
    """A binary model and a store keyed by awkward text IDs, with a config that uses them."""

    model_path: Path
    db_path: Path
    config_path: Path
    booster: lgb.Booster = field(repr=False)
    rows: Mapping[str, np.ndarray] = field(repr=False)  # id -> feature row (float64, NaN = NULL)

    def score(self, ident: str) -> float:
        """What ``Booster.predict`` gives for this ID's stored row."""
        return float(self.booster.predict(self.rows[ident].reshape(1, -1))[0])


ID_STORE_KNOWN = (
    "007",
    "7",
    "C1",
    "C2",
    "C3",
    "a,b",
    'say "hi"',
    "with space",
    "ünïcödé",
    "日本",
    "x" * 1024,
)
ID_STORE_EMPTY = "EMPTY"  # in the store with every feature NULL


@pytest.fixture(scope="session")
def id_store(tmp_path_factory: pytest.TempPathFactory) -> IdStore:
    """See :class:`IdStore`; IDs are :data:`ID_STORE_KNOWN` plus :data:`ID_STORE_EMPTY`."""
    root = tmp_path_factory.mktemp("idstore")
    booster = train_example("binary", root / "model.txt", num_trees=10)
    x, _ = load_example("binary", "test")
    rows = {ident: x[i].copy() for i, ident in enumerate(ID_STORE_KNOWN)}
    rows[ID_STORE_EMPTY] = np.full(x.shape[1], np.nan)
    db = write_feature_db(root / "features.db", np.stack(list(rows.values())), list(rows))
    config = write_config(
        root / "config.toml", model=root / "model.txt", sources=[sqlite_source(db)]
    )
    return IdStore(root / "model.txt", db, config, booster, rows)
