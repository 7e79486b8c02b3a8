"""``kind = "input"``: model features from the input file's own columns (CSV, TSV, JSON lines).

What an analyst checks: the scores of a file of feature rows are ``Booster.predict`` on those
rows, bit for bit; a cell gives the same double as the same value from any other source (an
empty cell and a JSON null are missing exactly like a SQLite NULL, a category's text is its
category); the input mixes with a SQLite source; a wrong column or a plain text input is one
line and exit 2; a stopped run resumes to the identical file.  Real LightGBM models, real SQLite
files, and the real command where the process is the point.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import signal
import sqlite3
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from batchscore.errors import UsageError
from batchscore.feed import ChunkFeed, Filters
from batchscore.idrows import IdRow, InputProblem
from batchscore.ids import read_ids
from conftest import (
    ROOT,
    SAMPLE_CONFIG,
    SAMPLE_DIR,
    RunCli,
    ScoreInProcess,
    TrainedModel,
    batchscore_command,
    clean_environ,
    feature_names,
    read_output,
    sqlite_source,
    write_config,
    write_feature_db,
)

INPUT_CONFIG = ROOT / "configs" / "input.toml"
KINDS = ["binary", "multiclass", "regression"]
FORMATS = ["csv", "tsv", "jsonl"]


def bits(values: Any) -> np.ndarray:
    """Doubles as their bit patterns: equal only if identical to the last bit and the sign."""
    return np.ascontiguousarray(np.asarray(values, np.float64)).view(np.uint64)


def cell(value: float) -> str:
    """A float as an analyst's CSV holds it: its shortest round-tripping text, empty if NaN."""
    return "" if math.isnan(value) else repr(float(value))


def write_rows(
    path: Path,
    fmt: str,
    ids: Sequence[str],
    rows: np.ndarray | Sequence[Sequence[Any]],
    names: Sequence[str],
    id_column: str = "id",
) -> Path:
    """A file of feature rows: CSV (quoted as needed), TSV, or JSON lines (NaN as null)."""
    if fmt == "jsonl":
        lines = []
        for ident, row in zip(ids, rows, strict=True):
            record: dict[str, Any] = {id_column: ident}
            for name, value in zip(names, row, strict=True):
                missing = isinstance(value, float) and math.isnan(value)
                record[name] = None if missing else value
            lines.append(json.dumps(record, ensure_ascii=False))
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path
    text = io.StringIO()
    if fmt == "csv":
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow([id_column, *names])
        for ident, row in zip(ids, rows, strict=True):
            writer.writerow([ident, *(cell(v) if isinstance(v, float) else v for v in row)])
    else:
        text.write("\t".join([id_column, *names]) + "\n")
        for ident, row in zip(ids, rows, strict=True):
            values = (cell(v) if isinstance(v, float) else str(v) for v in row)
            text.write("\t".join([ident, *values]) + "\n")
    path.write_text(text.getvalue(), encoding="utf-8")
    return path


def input_config(path: Path, model: Path, *sources: dict[str, Any], **table: Any) -> Path:
    """A config whose first source is of kind input (``table`` adds its keys)."""
    return write_config(path, model=model, sources=[{"kind": "input", **table}, *sources])


def scores_of(out: Path, columns: Sequence[str]) -> tuple[list[str], np.ndarray]:
    rows = read_output(out)
    matrix = np.array([[float(r[c]) for c in columns] for r in rows], dtype=np.float64)
    return [r["id"] for r in rows], matrix


# -- the reader carries the cells, the feed hands them over as columns ---------------------------


def _choose(wanted: Sequence[str]) -> Any:
    seen: list[tuple[list[str], str]] = []

    def choose(header: Sequence[str], what: str) -> Sequence[str]:
        seen.append((list(header), what))
        missing = [c for c in wanted if c not in header]
        if missing:
            raise UsageError(f"{what} lacks {missing[0]}")
        return wanted

    choose.seen = seen  # type: ignore[attr-defined]
    return choose


def test_csv_rows_carry_the_chosen_cells_as_text_and_a_row_short_of_them_is_short() -> None:
    choose = _choose(["b", "a"])
    data = b"id,a,b,c\nX,1.5,,z\nY,2\nZ,3,4,5\n"
    items = list(read_ids(io.BytesIO(data), "csv", "id", "id", ("c",), values=choose))
    assert choose.seen == [(["id", "a", "b", "c"], "the input CSV")]
    assert items == [
        IdRow(2, "X", ("z",), ("", "1.5")),  # cells as read: the Encoder decides
        InputProblem(3, None, "short_row"),
        IdRow(4, "Z", ("5",), ("4", "3")),
    ]


def test_jsonl_rows_carry_values_as_parsed_and_an_absent_field_as_none() -> None:
    choose = _choose(["a"])
    data = b'{"id": "X", "a": 3.5}\n{"id": "Y"}\n{"id": "Z", "a": "3.5"}\n'
    items = list(read_ids(io.BytesIO(data), "jsonl", "id", "id", (), values=choose))
    assert choose.seen == [(["id", "a"], "the first JSON line with an ID")]
    assert [item.values for item in items] == [(3.5,), (None,), ("3.5",)]  # type: ignore[union-attr]


def test_a_missing_column_is_refused_before_any_row_and_text_has_no_columns() -> None:
    with pytest.raises(UsageError, match="the input TSV lacks b"):
        read_ids(io.BytesIO(b"id\ta\nX\t1\n"), "tsv", "id", "id", (), values=_choose(["b"]))
    with pytest.raises(UsageError, match="plain text input has only IDs"):
        read_ids(io.BytesIO(b"X\n"), "text", "id", "id", (), values=_choose(["a"]))


def test_the_feed_hands_the_values_over_as_columns_with_none_for_problem_rows() -> None:
    data = b"id,a,b\nX,1,2\n,3,4\nY,5,6\n"

    async def go() -> list[Any]:
        items = read_ids(io.BytesIO(data), "csv", "id", "id", (), values=_choose(["a", "b"]))
        feed = ChunkFeed(items, size=10, filters=Filters(), keep=False, values=2)
        chunk = await feed.next()
        assert chunk is not None and await feed.next() is None
        return [chunk.ids, chunk.inputs]

    ids, inputs = asyncio.run(go())
    assert ids == ["X", "", "Y"]  # the second row has no ID: an input problem
    assert inputs == [("1", None, "5"), ("2", None, "6")]


# -- scores: Booster.predict on the file's rows, bit for bit --------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", KINDS)
def test_scores_are_booster_predict_on_the_files_rows_bit_for_bit(
    tmp_path: Path,
    trained_models: dict[str, TrainedModel],
    score_in_process: ScoreInProcess,
    kind: str,
    fmt: str,
) -> None:
    model = trained_models[kind]
    names = feature_names(model.features.shape[1])
    data = write_rows(tmp_path / f"rows.{fmt}", fmt, model.ids, model.features, names)
    config = input_config(tmp_path / "c.toml", model.model_path)
    out = tmp_path / "scores.csv"
    run = score_in_process(config=config, ids=str(data), output=str(out))
    assert run.status == 0, run.stderr
    ids, scores = scores_of(out, model.score_columns)
    assert ids == list(model.ids)
    assert (bits(scores) == bits(model.expected())).all()


def test_only_some_features_from_the_input_the_rest_from_sqlite(
    tmp_path: Path, trained_models: dict[str, TrainedModel], score_in_process: ScoreInProcess
) -> None:
    """The join: the first ten features from the CSV, the others from the SQLite store."""
    model = trained_models["binary"]
    names = feature_names(model.features.shape[1])
    data = write_rows(tmp_path / "rows.csv", "csv", model.ids, model.features[:, :10], names[:10])
    config = input_config(tmp_path / "c.toml", model.model_path, model.source(columns=names[10:]))
    out = tmp_path / "scores.csv"
    run = score_in_process(config=config, ids=str(data), output=str(out))
    assert run.status == 0, run.stderr
    ids, scores = scores_of(out, ["score"])
    assert ids == list(model.ids)
    assert (bits(scores) == bits(model.expected())).all()


# -- one conversion rule: what the model sees is what any other source would give -----------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_cells_and_nulls_are_missing_exactly_like_a_sqlite_null(
    tmp_path: Path,
    trained_models: dict[str, TrainedModel],
    score_in_process: ScoreInProcess,
    fmt: str,
) -> None:
    """The same rows scored from the file and from the SQLite store (NULLs where the file has
    empty cells or nulls) give byte-identical outputs, the features the model saw included."""
    model = trained_models["regression"]
    assert np.isnan(model.features).any(), "the fixture has missing values"
    names = feature_names(model.features.shape[1])
    data = write_rows(tmp_path / f"rows.{fmt}", fmt, model.ids, model.features, names)
    from_file, from_store = tmp_path / "file.csv", tmp_path / "store.csv"
    flags = {"with_features": True, "explain": 3}
    run = score_in_process(
        config=input_config(tmp_path / "c.toml", model.model_path),
        ids=str(data),
        output=str(from_file),
        **flags,
    )
    assert run.status == 0, run.stderr
    store_config = write_config(
        tmp_path / "s.toml", model=model.model_path, sources=[model.source()]
    )
    ids = model.ids_file(tmp_path / "ids.txt")
    assert (
        score_in_process(config=store_config, ids=str(ids), output=str(from_store), **flags).status
        == 0
    )
    assert from_file.read_bytes() == from_store.read_bytes()
    assert ",," in from_file.read_text()  # missing features written empty: NaN reached the model


def test_numbers_as_text_as_json_numbers_and_as_json_strings_are_the_same_double(
    tmp_path: Path, trained_models: dict[str, TrainedModel], score_in_process: ScoreInProcess
) -> None:
    model = trained_models["binary"]
    names = feature_names(model.features.shape[1])
    rows = model.features[:20]
    as_text = [[cell(v) for v in row] for row in rows]  # "3.5" in JSON: the string rule
    outputs = []
    config = input_config(tmp_path / "c.toml", model.model_path)
    for name, fmt, values in [
        ("csv", "csv", rows),
        ("numbers", "jsonl", rows),
        ("strings", "jsonl", as_text),
    ]:
        data = write_rows(tmp_path / f"{name}.{fmt}", fmt, model.ids[:20], values, names)
        out = tmp_path / f"{name}.out.csv"
        run = score_in_process(config=config, ids=str(data), output=str(out), with_features=True)
        assert run.status == 0, run.stderr
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]


# Numbers that are no finite double, as each format writes them (JSON: the bare tokens).
NOT_FINITE_TEXT = ["1e400", "-1e400", "inf", "-Infinity", "NaN", "1" + "0" * 400]
NOT_FINITE_JSON = ["1e400", "-1e400", "Infinity", "-Infinity", "NaN", "1" + "0" * 400]


@pytest.mark.parametrize("path", ["csv", "tsv", "jsonl", "sqlite"])
def test_a_number_that_is_no_finite_double_is_missing_in_every_input_format_and_store(
    tmp_path: Path,
    trained_models: dict[str, TrainedModel],
    score_in_process: ScoreInProcess,
    path: str,
) -> None:
    """One rule: ``1e400`` (or ``inf``, ``NaN``) in a CSV or TSV cell, in a JSON-lines line or
    in a SQLite REAL column is a missing value: the row is scored, as if the cell were empty.
    (HTTP and Feast answers: test_server_answers.py.)"""
    model = trained_models["binary"]
    names = feature_names(model.features.shape[1])
    n = 24
    ids, rows = list(model.ids[:n]), model.features[:n].copy()
    j = int(np.argmax(model.booster.feature_importance("split")))
    rows[:, j] = 0.5
    missing = rows.copy()
    missing[:, j] = math.nan
    expected = model.booster.predict(missing)
    infinite = rows.copy()
    infinite[:, j] = math.inf
    assert (model.booster.predict(infinite) != expected).any(), "inf would score otherwise"

    config = input_config(tmp_path / "c.toml", model.model_path)
    data = tmp_path / f"rows.{path}"
    if path in ("csv", "tsv"):
        texts = [[cell(v) for v in row] for row in rows]
        for i, row in enumerate(texts):
            row[j] = NOT_FINITE_TEXT[i % len(NOT_FINITE_TEXT)]
        write_rows(data, path, ids, texts, names)
    elif path == "jsonl":
        lines = []
        for i, (ident, row) in enumerate(zip(ids, rows, strict=True)):
            record = {"id": ident, **{name: float(v) for name, v in zip(names, row, strict=True)}}
            record[names[j]] = "@"
            lines.append(json.dumps(record).replace('"@"', NOT_FINITE_JSON[i % 6]))
        data.write_text("\n".join(lines) + "\n")
    else:
        store = rows.copy()
        store[:, j] = math.inf  # a REAL column holds infinities
        store[1::2, j] = -math.inf
        db = write_feature_db(tmp_path / "inf.db", store, ids)
        config = write_config(
            tmp_path / "s.toml", model=model.model_path, sources=[sqlite_source(db)]
        )
        data.write_text("\n".join(ids) + "\n")
    out = tmp_path / "scores.csv"
    run = score_in_process(config=config, ids=str(data), output=str(out))
    assert run.status == 0, run.stderr
    scored, scores = scores_of(out, ["score"])
    assert scored == ids
    assert (bits(scores[:, 0]) == bits(expected)).all()


def test_the_sample_csv_scores_as_the_store_does_categoricals_given_as_text(
    run_cli: RunCli,
) -> None:
    """The README's command on ``sample_data/customers.csv`` (``plan`` and ``region`` are text,
    some cells empty) gives the same bytes as the SQLite store for the same IDs."""
    csv_path = SAMPLE_DIR / "customers.csv"
    text = csv_path.read_text(encoding="ascii")
    assert ",," in text and ",basic," in text  # empty cells; a category as text
    ids = [line.split(",", 1)[0] for line in text.splitlines()[1:]]
    from_file = run_cli(
        "score",
        "sample_data/customers.csv",
        "-c",
        "configs/input.toml",
        "--with-features",
        cwd=ROOT,
    )
    assert from_file.returncode == 0, from_file.stderr
    from_store = run_cli(
        "score",
        "-",
        "-c",
        str(SAMPLE_CONFIG),
        "--with-features",
        stdin="\n".join(ids).encode(),
        cwd=ROOT,
    )
    assert from_store.returncode == 0, from_store.stderr
    assert from_file.stdout == from_store.stdout
    rows = read_output(from_file.stdout)
    assert [r["id"] for r in rows] == ids
    assert any(r["feature_plan"] for r in rows), "the categorical reached the model as a code"


def test_a_category_given_as_text_is_its_code_and_an_unseen_one_is_missing(
    tmp_path: Path, score_in_process: ScoreInProcess
) -> None:
    import lightgbm as lgb

    booster = lgb.Booster(model_file=str(SAMPLE_DIR / "model.txt"))
    names = booster.feature_name()
    with sqlite3.connect(SAMPLE_DIR / "features.db") as db:
        row = db.execute("SELECT * FROM customer_features WHERE customer_id = 'C000001'").fetchone()
    values = list(row[1:])
    plan = names.index("plan")
    rows = []
    for category in ("basic", "premium", "gold"):  # gold: not one of the model's categories
        changed = list(values)
        changed[plan] = category
        rows.append(["" if v is None else v for v in changed])
    data = write_rows(tmp_path / "rows.csv", "csv", ["A", "B", "C"], rows, names)
    config = input_config(tmp_path / "c.toml", SAMPLE_DIR / "model.txt")
    out = tmp_path / "scores.csv"
    run = score_in_process(config=config, ids=str(data), output=str(out), with_features=True)
    assert run.status == 0, run.stderr
    seen = [r["feature_plan"] for r in read_output(out)]
    categories = ["basic", "plus", "premium", "family"]  # the model's order (model-info)
    assert seen == [repr(float(categories.index("basic"))), "2.0", ""]


# -- which columns -------------------------------------------------------------------------------


def test_columns_and_rename_choose_the_input_columns(
    tmp_path: Path, trained_models: dict[str, TrainedModel], score_in_process: ScoreInProcess
) -> None:
    """``rename`` maps an input column to a model feature; ``columns`` leaves the others to the
    store; a column that is no feature (``segment``) is never read as one."""
    model = trained_models["binary"]
    names = feature_names(model.features.shape[1])
    header = ["first", *names[1:5], "segment"]
    rows = [[*row[:5], "gold"] for row in model.features.tolist()]
    data = write_rows(tmp_path / "rows.csv", "csv", model.ids, rows, header, id_column="key")
    config = input_config(
        tmp_path / "c.toml",
        model.model_path,
        model.source(columns=names[2:]),
        columns=["first", "f1"],
        rename={"first": "f0"},
    )
    out = tmp_path / "scores.csv"
    run = score_in_process(
        config=config, ids=str(data), output=str(out), id_column="key", keep=("segment",)
    )
    assert run.status == 0, run.stderr
    ids, scores = scores_of(out, ["score"])
    assert ids == list(model.ids)
    assert (bits(scores) == bits(model.expected())).all()
    assert {r["segment"] for r in read_output(out)} == {"gold"}


def test_a_feature_from_the_input_and_another_source_is_a_config_error(
    tmp_path: Path, trained_models: dict[str, TrainedModel], run_cli: RunCli
) -> None:
    model = trained_models["binary"]
    names = feature_names(model.features.shape[1])
    data = write_rows(tmp_path / "rows.csv", "csv", model.ids, model.features[:, :3], names[:3])
    config = input_config(tmp_path / "c.toml", model.model_path, model.source())
    result = run_cli("score", data, "-c", config, "-o", tmp_path / "out.csv")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "feature 'f0' comes from sources input, features" in result.stderr
    assert "`columns` of source 'input'" in result.stderr
    assert not (tmp_path / "out.csv").exists()


# -- refusals: one line, exit 2, nothing written --------------------------------------------------


def test_a_configured_column_the_csv_lacks_is_one_line_naming_its_columns(
    tmp_path: Path, trained_models: dict[str, TrainedModel], run_cli: RunCli
) -> None:
    model = trained_models["binary"]
    names = feature_names(model.features.shape[1])
    data = write_rows(tmp_path / "rows.csv", "csv", model.ids, model.features, names)
    config = input_config(tmp_path / "c.toml", model.model_path, columns=["f0", "f_1"])
    result = run_cli("score", data, "-c", config, "-o", tmp_path / "out.csv")
    assert result.returncode == 2
    assert result.stderr == (
        "batchscore: error: source 'input': the input CSV has no column 'f_1' (did you mean "
        f"'f1'?) (its columns: id, {', '.join(names)})\n"
    )
    assert not (tmp_path / "out.csv").exists()


def test_a_renamed_column_the_jsonl_lacks_is_one_line(
    tmp_path: Path, trained_models: dict[str, TrainedModel], run_cli: RunCli
) -> None:
    model = trained_models["binary"]
    names = feature_names(model.features.shape[1])
    data = write_rows(tmp_path / "rows.jsonl", "jsonl", model.ids, model.features, names)
    config = input_config(tmp_path / "c.toml", model.model_path, rename={"tenure": "f0"})
    result = run_cli("score", data, "-c", config, "-o", tmp_path / "out.csv")
    assert result.returncode == 2
    assert result.stderr.startswith(
        "batchscore: error: source 'input': rename names column 'tenure', which the first "
        "JSON line with an ID does not have (its columns: id, f0, f1,"
    )
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "args",
    [["ids.txt"], ["-", "--input-format", "text"], ["--from-errors", "ids.txt.errors.jsonl"]],
    ids=["text-file", "stdin-text", "from-errors"],
)
def test_an_input_without_feature_columns_is_refused(
    tmp_path: Path, trained_models: dict[str, TrainedModel], run_cli: RunCli, args: list[str]
) -> None:
    model = trained_models["binary"]
    model.ids_file(tmp_path / "ids.txt")
    (tmp_path / "ids.txt.errors.jsonl").write_text('{"id": "b-00001", "line": 1}\n')
    config = input_config(tmp_path / "c.toml", model.model_path)
    result = run_cli("score", *args, "-c", config, "-o", "out.csv", stdin=b"b-00001\n")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "kind input" in result.stderr
    if args[0] != "--from-errors":
        assert "pass a CSV, TSV or JSON-lines input" in result.stderr
    assert not (tmp_path / "out.csv").exists()


def test_two_input_sources_are_a_config_error(
    tmp_path: Path, trained_models: dict[str, TrainedModel], run_cli: RunCli
) -> None:
    config = write_config(
        tmp_path / "c.toml",
        model=trained_models["binary"].model_path,
        sources=[{"kind": "input"}, {"kind": "input", "name": "again"}],
    )
    result = run_cli("score", "x.csv", "-c", config)
    assert result.returncode == 2
    assert "sources[1] is a second source of kind input" in result.stderr


def test_an_input_source_alone_is_enough_and_an_empty_input_still_exits_0(
    tmp_path: Path, trained_models: dict[str, TrainedModel], run_cli: RunCli
) -> None:
    config = input_config(tmp_path / "c.toml", trained_models["binary"].model_path)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    result = run_cli("score", empty, "-c", config, "-o", tmp_path / "out.csv")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.csv").read_text() == "id,score\n"


# -- check ---------------------------------------------------------------------------------------


def test_check_reads_the_inputs_columns_and_reports_coverage_from_them(run_cli: RunCli) -> None:
    result = run_cli("check", "-c", "configs/input.toml", "sample_data/customers.csv", cwd=ROOT)
    assert result.returncode == 0, result.stdout.decode() + result.stderr
    out = result.stdout.decode()
    assert "input (input): columns tenure_days, account_age_days," in out
    assert "no requests" in out
    assert "coverage every one of the 28 model features came from a source" in out
    assert out.rstrip().endswith("ok       a real run should work")


def test_check_without_the_input_says_to_pass_it(run_cli: RunCli) -> None:
    result = run_cli("check", "-c", "configs/input.toml", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "pass the input (IDS)" in result.stdout.decode()


# -- resume: a stopped run of an input source finishes to the identical file ----------------------


def _committed(output: Path) -> int:
    state = output.with_name(f".{output.name}.state")
    if not state.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
            row = db.execute("SELECT lines FROM run").fetchone()
    except sqlite3.Error:
        return 0
    ranges = json.loads(row[0]) if row else []
    return int(ranges[0][1]) if ranges and ranges[0][0] <= 1 else 0


def test_a_killed_input_source_run_resumes_to_the_identical_output(
    tmp_path: Path, trained_models: dict[str, TrainedModel]
) -> None:
    model = trained_models["multiclass"]  # IDs with commas and quotes, five score columns
    names = feature_names(model.features.shape[1])
    data = write_rows(tmp_path / "rows.csv", "csv", model.ids, model.features, names)
    lines = data.read_bytes().splitlines(keepends=True)
    config = input_config(tmp_path / "c.toml", model.model_path)
    reference, out = tmp_path / "reference.csv", tmp_path / "scores.csv"

    def args(output: Path, *extra: str) -> list[str]:
        return [*batchscore_command(), "score", "-", "--input-format", "csv", "-c",
                str(config), "-o", str(output), "--batch-size", "16", *extra]  # fmt: skip

    whole = data.read_bytes()

    def run(output: Path, *extra: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            args(output, *extra), input=whole, capture_output=True, env=clean_environ(), check=False
        )

    done = run(reference)
    assert done.returncode == 0, done.stderr

    proc = subprocess.Popen(
        args(out, "--resume"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_environ(),
        start_new_session=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(b"".join(lines[:150]))  # the header and 149 rows; the pipe stays open
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while _committed(out) < 40:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no commit"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert not out.exists()
    assert 40 <= _committed(out) < len(lines)

    resumed = run(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert b"resumed" in resumed.stderr
    assert out.read_bytes() == reference.read_bytes()
    ids, scores = scores_of(out, model.score_columns)
    assert ids == list(model.ids)
    assert (bits(scores) == bits(model.expected())).all()
