"""Every output format, read back with its own reader, holds exactly what the model gives.

A user opens a ``.csv`` with the csv module, a ``.jsonl`` with json, a ``.gz`` with gzip, a
``.parquet`` with pyarrow and a ``.db`` with sqlite3 (table ``predictions``); whatever they read
must be ``Booster.predict`` on the same rows, bit for bit.  Scores are compared as ``uint64``
views of the doubles, so a last-bit difference or ``-0.0`` for ``0.0`` fails.  IDs, row order
(input order) and ``--keep`` columns must round-trip exactly, awkward IDs included, and
``--explain K`` must name the K largest contributions of ``Booster.predict(pred_contrib=True)``,
each beside the feature value the model saw.

The jobs run in this process through the real settings layer (``score_in_process``); stdout is
the job's real file descriptor.  Process behaviour is not the point here.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import (
    ID_STORE_EMPTY,
    ID_STORE_KNOWN,
    IdStore,
    ScoreInProcess,
    TrainedModel,
    read_errors,
    sqlite_source,
    write_config,
)

pq = pytest.importorskip("pyarrow.parquet")

KINDS = ["binary", "multiclass", "regression"]
FILE_FORMATS = ["csv", "jsonl", "csv.gz", "jsonl.gz", "parquet", "db"]
STDOUT_FORMATS = ["stdout-csv", "stdout-jsonl"]  # "-o -", the default csv and --format jsonl


def bits(values: Any) -> np.ndarray:
    """Doubles as their bit patterns: equal only if identical to the last bit and the sign."""
    return np.ascontiguousarray(np.asarray(values, np.float64)).view(np.uint64)


def parse_text_table(text: str, fmt: str) -> tuple[list[str], list[dict[str, Any]]]:
    if fmt == "csv":
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader)
        return header, [dict(zip(header, row, strict=True)) for row in reader]
    rows = [json.loads(line) for line in text.split("\n") if line]  # "\n" only: IDs hold U+2028
    header = list(rows[0]) if rows else []
    assert all(list(row) == header for row in rows), "every JSON line has the same keys, in order"
    return header, rows


def read_table(
    out: Path | bytes, fmt: str, versions: bool = False
) -> tuple[list[str], list[dict[str, Any]]]:
    """Column names and rows of an output, read with the format's own reader.

    CSV values are text; the other formats give their native types.  A SQLite output's model
    version column (always there) is checked and left out, unless ``versions``.
    """
    if isinstance(out, bytes):  # stdout
        return parse_text_table(out.decode("utf-8"), fmt.removeprefix("stdout-"))
    if fmt.endswith(".gz"):
        with gzip.open(out, "rb") as f:
            return parse_text_table(f.read().decode("utf-8"), fmt.removesuffix(".gz"))
    if fmt in ("csv", "jsonl"):
        return parse_text_table(out.read_text(encoding="utf-8"), fmt)
    if fmt == "parquet":
        table = pq.read_table(out)
        return list(table.column_names), table.to_pylist()
    assert fmt == "db"
    with sqlite3.connect(f"file:{out}?mode=ro", uri=True) as db:
        cursor = db.execute("SELECT * FROM predictions ORDER BY rowid")
        header = [d[0] for d in cursor.description]
        rows = [dict(zip(header, row, strict=True)) for row in cursor]
    db.close()
    # A SQLite output is a prediction log: every row names the model version that scored it
    # (a column at the end, also without --add). The other formats have no such column.
    named = [h for h in header if h.startswith("model_version")]
    assert named, "a SQLite output's rows carry the model version"
    for name in named:
        assert all(re.fullmatch("[0-9a-f]{16}", row[name]) for row in rows)
        if not versions:
            for row in rows:
                del row[name]
            header.remove(name)
    return header, rows


def numbers(rows: Sequence[dict[str, Any]], column: str, fmt: str) -> list[float]:
    """A numeric column: CSV text parsed by ``float``; elsewhere it must already be a number."""
    values = [row[column] for row in rows]
    if fmt.endswith("csv") or fmt.endswith("csv.gz"):
        return [float(v) for v in values]
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values), values[:3]
    return [float(v) for v in values]


def run_to(
    score_in_process: ScoreInProcess, folder: Path, fmt: str, **flags: Any
) -> tuple[Path | bytes, Path]:
    """Run a job writing ``fmt`` (a file extension, or ``stdout-csv``/``stdout-jsonl``).

    Returns what to read (a path or the stdout bytes) and where the errors file is.
    """
    errors = folder / "errors.jsonl"
    if fmt.startswith("stdout-"):
        extra = {"format": "jsonl"} if fmt == "stdout-jsonl" else {}
        run = score_in_process(output="-", errors=str(errors), **extra, **flags)
        assert run.status in (0, 3), run.stderr
        return run.stdout, errors
    out = folder / f"scores.{fmt}"
    run = score_in_process(output=str(out), **flags)
    assert run.status in (0, 3), run.stderr
    assert run.stdout == b""
    leftovers = sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
    assert leftovers == [], "a successful run leaves no partial, state or lock file"
    return out, Path(f"{out}.errors.jsonl")


def model_config(model: TrainedModel, folder: Path) -> Path:
    # Small batches: rows cross many fetches, scoring batches and commits.
    return write_config(
        folder / f"{model.kind}.toml",
        model=model.model_path,
        sources=[model.source(batch_size=40)],
        fetch={"concurrency": 4},
        score={"batch_size": 32},
    )


# -- scores ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw_score", [False, True], ids=["score", "raw"])
@pytest.mark.parametrize("fmt", FILE_FORMATS + STDOUT_FORMATS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_format_reads_back_to_the_exact_doubles_of_booster_predict(
    trained_models: dict[str, TrainedModel],
    score_in_process: ScoreInProcess,
    tmp_path: Path,
    kind: str,
    fmt: str,
    raw_score: bool,
) -> None:
    model = trained_models[kind]
    flags: dict[str, Any] = {"raw_score": True} if raw_score else {}
    out, _ = run_to(
        score_in_process,
        tmp_path,
        fmt,
        config=model_config(model, tmp_path),
        ids=str(model.ids_file(tmp_path / "ids.txt")),
        **flags,
    )
    header, rows = read_table(out, fmt)
    assert header == ["id", *model.score_columns]
    assert [row["id"] for row in rows] == list(model.ids)  # every ID once, in input order
    expected = model.expected(raw_score=raw_score)
    for k, column in enumerate(model.score_columns):
        got = bits(numbers(rows, column, fmt))
        assert np.array_equal(got, bits(expected[:, k])), f"{column} differs from Booster.predict"


def test_parquet_and_sqlite_store_scores_as_doubles(
    trained_models: dict[str, TrainedModel], score_in_process: ScoreInProcess, tmp_path: Path
) -> None:
    """Typed formats keep the type: a float64 column, a REAL value, never text."""
    model = trained_models["multiclass"]
    ids = str(model.ids_file(tmp_path / "ids.txt"))
    config = model_config(model, tmp_path)
    parquet, sqlite_db = tmp_path / "s.parquet", tmp_path / "s.db"
    for out in (parquet, sqlite_db):
        assert score_in_process(config=config, ids=ids, output=str(out)).status == 0
    schema = pq.read_schema(parquet)
    assert [str(schema.field(c).type) for c in model.score_columns] == ["double"] * 5
    assert str(schema.field("id").type) == "string"
    with sqlite3.connect(sqlite_db) as db:
        types = db.execute(
            "SELECT DISTINCT typeof(id), typeof(score_0), typeof(score_4) FROM predictions"
        ).fetchall()
    db.close()
    assert types == [("text", "real", "real")]


# -- IDs and kept columns -------------------------------------------------------------------------

NOTES = ["a,b", 'say "hi"', "", "ünï 日本", "0042", "line\u2028sep", "tab\there", "-0.0"]


def awkward_input(folder: Path) -> tuple[Path, list[tuple[str, str, str]]]:
    """A CSV input: every awkward ID of the store (``7`` before ``007``), one all-NULL row and
    one unknown ID, with two columns to keep; returns its path and its rows."""
    order = ["7", *[i for i in ID_STORE_KNOWN if i != "7"]]
    order.insert(4, ID_STORE_EMPTY)
    order.insert(8, "not-in-store")
    rows = [(ident, f"{i:03d}", NOTES[i % len(NOTES)]) for i, ident in enumerate(order)]
    path = folder / "input.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["segment", "id", "note"])  # the ID is not the first column
        writer.writerows((segment, ident, note) for ident, segment, note in rows)
    return path, rows


@pytest.mark.parametrize("fmt", FILE_FORMATS + STDOUT_FORMATS)
def test_awkward_ids_and_kept_columns_round_trip_exactly(
    id_store: IdStore, score_in_process: ScoreInProcess, tmp_path: Path, fmt: str
) -> None:
    path, given = awkward_input(tmp_path)
    config = write_config(
        tmp_path / "c.toml",
        model=id_store.model_path,
        sources=[sqlite_source(id_store.db_path, batch_size=3)],
        score={"batch_size": 2},
    )
    out, errors = run_to(
        score_in_process,
        tmp_path,
        fmt,
        config=config,
        ids=str(path),
        keep=("note", "segment"),
        max_failed=2,
    )
    header, rows = read_table(out, fmt)
    assert header == ["id", "score", "note", "segment"]  # kept columns in --keep order
    scored = [(i, s, n) for i, s, n in given if i in ID_STORE_KNOWN]
    assert [(r["id"], r["segment"], r["note"]) for r in rows] == scored
    expected = [id_store.score(ident) for ident, _, _ in scored]
    assert np.array_equal(bits(numbers(rows, "score", fmt)), bits(expected))
    # CSV line numbers: the header is line 1, as an editor shows it.
    lines = {ident: n for n, (ident, _, _) in enumerate(given, start=2)}
    records = [(e["id"], e["line"], e["reason"]) for e in read_errors(errors)]
    assert records == [
        (ID_STORE_EMPTY, lines[ID_STORE_EMPTY], "no_features"),
        ("not-in-store", lines["not-in-store"], "not_found"),
    ]


# -- explanations ---------------------------------------------------------------------------------


def missing_or_number(value: Any, fmt: str) -> float:
    """A feature value as written: a missing one is empty in CSV and null elsewhere (never
    ``nan``); returned as NaN, a number as its float."""
    if value is None or value == "":
        assert value == ("" if "csv" in fmt else None), f"a missing value written as {value!r}"
        return float("nan")
    if "csv" in fmt:
        return float(value)
    assert isinstance(value, float), value
    return value


EXPLAIN_K = 4


def assert_top_contributions(
    contrib: np.ndarray, names: Sequence[str], listed: Sequence[tuple[str, float]], row: str
) -> None:
    """``listed`` is the top ``EXPLAIN_K`` of one row's contributions (bias dropped), largest
    magnitude first, each value bit-identical; features tied in magnitude may come in any order."""
    assert len(listed) == EXPLAIN_K, row
    index = {name: j for j, name in enumerate(names)}
    chosen = [index[name] for name, _ in listed]
    assert len(set(chosen)) == EXPLAIN_K, f"{row}: a feature listed twice"
    assert np.array_equal(bits([v for _, v in listed]), bits(contrib[chosen])), row
    magnitudes = np.abs(contrib[chosen])
    assert np.all(magnitudes[:-1] >= magnitudes[1:]), f"{row}: not largest first"
    rest = np.delete(np.abs(contrib), chosen)
    assert rest.size == 0 or magnitudes[-1] >= rest.max(), f"{row}: a larger one is missing"


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl.gz", "db"])
@pytest.mark.parametrize("kind", KINDS)
def test_explain_lists_the_largest_contributions_of_the_predicted_class(
    trained_models: dict[str, TrainedModel],
    score_in_process: ScoreInProcess,
    tmp_path: Path,
    kind: str,
    fmt: str,
) -> None:
    model = trained_models[kind]
    out, _ = run_to(
        score_in_process,
        tmp_path,
        fmt,
        config=model_config(model, tmp_path),
        ids=str(model.ids_file(tmp_path / "ids.txt")),
        explain=EXPLAIN_K,
    )
    header, rows = read_table(out, fmt)
    explain_columns = [
        f"explain_{i}_{part}"
        for i in range(1, EXPLAIN_K + 1)
        for part in ("feature", "value", "contribution")
    ]
    assert header == ["id", *model.score_columns, *explain_columns]
    assert [row["id"] for row in rows] == list(model.ids)
    expected = model.expected()
    for k, column in enumerate(model.score_columns):  # explaining does not change the scores
        assert np.array_equal(bits(numbers(rows, column, fmt)), bits(expected[:, k]))

    names = model.booster.feature_name()
    width = len(names) + 1
    contrib = np.asarray(model.booster.predict(model.features, pred_contrib=True), np.float64)
    contrib = contrib.reshape(len(model.ids), -1, width)[:, :, :-1]  # drop the bias column
    predicted = np.argmax(expected, axis=1)  # the predicted class (0 for one score column)
    values = {i: numbers(rows, f"explain_{i}_contribution", fmt) for i in range(1, EXPLAIN_K + 1)}
    index = {name: j for j, name in enumerate(names)}
    for r, row in enumerate(rows):
        listed = [(row[f"explain_{i}_feature"], values[i][r]) for i in range(1, EXPLAIN_K + 1)]
        assert_top_contributions(contrib[r, predicted[r]], names, listed, row["id"])
        # Beside each contribution, the value the model saw (the stored row; NULL is missing).
        seen = [model.features[r, index[name]] for name, _ in listed]
        shown = [missing_or_number(row[f"explain_{i}_value"], fmt) for i in range(1, EXPLAIN_K + 1)]
        assert np.array_equal(bits(shown), bits(seen)), row["id"]
    if kind == "multiclass":
        # The class matters: some rows' top features differ between class 0 and the predicted one.
        assert any(
            np.argmax(np.abs(contrib[r, 0])) != np.argmax(np.abs(contrib[r, predicted[r]]))
            for r in range(len(rows))
        )
