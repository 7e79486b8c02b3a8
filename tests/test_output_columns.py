"""Columns on request and the retry of failures, read back as a user would (issue 11).

- ``--explain K``: beside each contribution, the value the model saw; contributions and the
  bias sum to the raw score of the explained class; K is capped at the model's features.
- ``--with-features``: ``feature_<name>`` columns in model order holding what the model saw:
  what the SQLite source served (NULL: missing), categoricals as their codes.
- ``--add model_version`` / ``--add scored_at``: the model file's hash; the UTC time of scoring.
- ``--from-errors PATH``: the IDs (and kept columns) of an errors file are the input.

Every format is read with its own reader (the helpers of ``test_outputs``).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import re
import sqlite3
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest

from conftest import (
    ROOT,
    SAMPLE_DIR,
    RunCli,
    ScoreInProcess,
    TrainedModel,
    read_errors,
    read_output,
    write_config,
)
from featureserver import Faults, FeatureServer
from test_outputs import (
    FILE_FORMATS,
    STDOUT_FORMATS,
    bits,
    missing_or_number,
    model_config,
    numbers,
    read_table,
    run_to,
)
from test_runs import HeldRun, run, score_args

# -- --explain: what the contributions are -------------------------------------------------------


@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_contributions_and_bias_sum_to_the_raw_score_of_the_explained_class(
    trained_models: dict[str, TrainedModel],
    score_in_process: ScoreInProcess,
    tmp_path: Path,
    kind: str,
) -> None:
    """What --help and the README promise: raw margins (log-odds for binary) of the predicted
    class that, with LightGBM's bias, add up to the raw score; K past the features is capped."""
    model = trained_models[kind]
    names = model.booster.feature_name()
    out, _ = run_to(
        score_in_process,
        tmp_path,
        "jsonl",
        config=model_config(model, tmp_path),
        ids=str(model.ids_file(tmp_path / "ids.txt")),
        explain=len(names) + 50,
        raw_score=True,
    )
    header, rows = read_table(out, "jsonl")
    explained = [
        f"explain_{i}_{part}"
        for i in range(1, len(names) + 1)
        for part in ("feature", "value", "contribution")
    ]
    assert header == ["id", *model.score_columns, *explained]  # no empty pairs past the features
    raw = model.expected(raw_score=True)
    contrib = np.asarray(model.booster.predict(model.features, pred_contrib=True), np.float64)
    bias = contrib.reshape(len(rows), -1, len(names) + 1)[:, :, -1]
    for r, row in enumerate(rows):
        explained_class = int(np.argmax(raw[r]))  # the predicted class (the only one for binary)
        listed = [row[f"explain_{i}_contribution"] for i in range(1, len(names) + 1)]
        assert sorted(row[f"explain_{i}_feature"] for i in range(1, len(names) + 1)) == sorted(
            names
        )
        total = float(np.sum(listed)) + bias[r, explained_class]
        assert total == pytest.approx(raw[r, explained_class], rel=1e-9, abs=1e-9), row["id"]
    if kind == "binary":  # log-odds: the sigmoid of the sum is the probability
        probability = model.expected()[:, 0]
        totals = raw[:, 0]
        assert np.allclose(1 / (1 + np.exp(-totals)), probability, rtol=1e-12)


# -- --with-features -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FILE_FORMATS + STDOUT_FORMATS)
def test_with_features_writes_what_the_source_served_in_model_order(
    trained_models: dict[str, TrainedModel],
    score_in_process: ScoreInProcess,
    tmp_path: Path,
    fmt: str,
) -> None:
    model = trained_models["binary"]
    out, _ = run_to(
        score_in_process,
        tmp_path,
        fmt,
        config=model_config(model, tmp_path),
        ids=str(model.ids_file(tmp_path / "ids.txt")),
        with_features=True,
    )
    header, rows = read_table(out, fmt)
    names = model.booster.feature_name()
    assert header == ["id", "score", *[f"feature_{name}" for name in names]]
    assert [row["id"] for row in rows] == list(model.ids)
    assert np.array_equal(bits(numbers(rows, "score", fmt)), bits(model.expected()[:, 0]))
    stored = sqlite_rows(model)
    assert np.isnan(stored).any(), "the store has NULLs: the test covers missing values"
    for j, name in enumerate(names):
        written = [missing_or_number(row[f"feature_{name}"], fmt) for row in rows]
        assert np.array_equal(bits(written), bits(stored[:, j])), name


def sqlite_rows(model: TrainedModel) -> np.ndarray:
    """The feature table as SQLite holds it, in the IDs' order (NULL as NaN)."""
    names = model.booster.feature_name()
    with sqlite3.connect(f"file:{model.db_path}?mode=ro", uri=True) as db:
        query = f"SELECT id, {', '.join(names)} FROM features"
        by_id = {str(row[0]): row[1:] for row in db.execute(query)}
    db.close()
    return np.array(
        [[np.nan if v is None else v for v in by_id[i]] for i in model.ids], dtype=np.float64
    )


def test_with_features_writes_categoricals_as_the_codes_the_model_saw(
    score_in_process: ScoreInProcess, tmp_path: Path
) -> None:
    ids = [f"C{n:06d}" for n in range(1, 31)]
    out = tmp_path / "scores.jsonl"
    run = score_in_process(
        config=ROOT / "configs" / "sample.toml",
        stdin="\n".join(ids).encode(),
        output=str(out),
        with_features=True,
    )
    assert run.status == 0, run.stderr
    rows = read_output(out)
    booster = lgb.Booster(model_file=str(SAMPLE_DIR / "model.txt"))
    plans = booster.pandas_categorical[0]  # plan's categories, in the model's code order
    with sqlite3.connect(SAMPLE_DIR / "features.db") as db:
        stored = dict(db.execute("SELECT customer_id, plan FROM customer_features"))
    db.close()
    assert list(rows[0])[2:] == [f"feature_{name}" for name in booster.feature_name()]
    assert [row["feature_plan"] for row in rows] == [
        None if stored[i] is None else float(plans.index(stored[i])) for i in ids
    ]
    assert len({row["feature_plan"] for row in rows}) > 1


def test_a_kept_column_named_like_a_feature_column_is_refused(
    trained_models: dict[str, TrainedModel], run_cli: RunCli, tmp_path: Path
) -> None:
    model = trained_models["binary"]
    ids = tmp_path / "ids.csv"
    ids.write_text("id,feature_f0\nb-00000,x\n")
    code, out, err = run_cli(
        "score", ids, "-c", model_config(model, tmp_path), "--with-features", "--keep", "feature_f0"
    )
    assert (code, out) == (2, b""), err
    assert err.strip() == (
        "batchscore: error: --keep feature_f0 would give the output two columns named "
        "'feature_f0'; keep each column once, and not one named like an output column "
        "(id, score, explain_..., feature_..., model_version, scored_at)"
    )


@pytest.mark.parametrize(
    ("names", "fmt", "shown"),
    [
        (("m", "m_0"), "csv", "'score_m_0'"),  # multiclass m gives score_m_0 .. score_m_2
        (("M", "m"), "db", "'score_M' and 'score_m'"),  # SQLite names ignore case
    ],
)
def test_models_whose_score_columns_collide_are_refused_before_any_file(
    trained_models: dict[str, TrainedModel],
    run_cli: RunCli,
    tmp_path: Path,
    names: tuple[str, str],
    fmt: str,
    shown: str,
) -> None:
    multiclass, binary = trained_models["multiclass"], trained_models["binary"]
    first = multiclass if fmt == "csv" else binary
    out = tmp_path / f"o.{fmt}"
    code, _, err = run_cli(
        "score", "-", "-c", model_config(binary, tmp_path), "-o", out,
        "-m", f"{names[0]}={first.model_path}", "-m", f"{names[1]}={binary.model_path}",
        stdin=b"b-00000\n", timeout=30,
    )  # fmt: skip
    assert code == 2, err  # not a hang on an open SQLite connection, not exit 74
    assert err.count("\n") == 1 and shown in err
    assert not list(tmp_path.glob("*o.*"))


def test_a_kept_column_named_like_id_in_another_case_is_refused_for_sqlite(
    trained_models: dict[str, TrainedModel], run_cli: RunCli, tmp_path: Path
) -> None:
    model = trained_models["binary"]
    ids = tmp_path / "ids.csv"
    ids.write_text("id,ID\nb-00000,x\n")
    code, _, err = run_cli(
        "score", ids, "-c", model_config(model, tmp_path), "--keep", "ID",
        "-o", tmp_path / "o.db", timeout=30,
    )  # fmt: skip
    assert code == 2, err
    assert "'id' and 'ID'" in err


# -- --add model_version / scored_at --------------------------------------------------------------

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.mark.parametrize("fmt", FILE_FORMATS + STDOUT_FORMATS)
def test_add_model_version_and_scored_at(
    trained_models: dict[str, TrainedModel],
    score_in_process: ScoreInProcess,
    tmp_path: Path,
    fmt: str,
) -> None:
    model = trained_models["multiclass"]
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    out, _ = run_to(
        score_in_process,
        tmp_path,
        fmt,
        config=model_config(model, tmp_path),
        ids=str(model.ids_file(tmp_path / "ids.txt")),
        add=["model_version", "scored_at"],
        explain=2,
    )
    after = dt.datetime.now(dt.UTC)
    header, rows = read_table(out, fmt, versions=True)
    explained = [f"explain_{i}_{p}" for i in (1, 2) for p in ("feature", "value", "contribution")]
    assert header == ["id", *model.score_columns, *explained, "model_version", "scored_at"]
    version = hashlib.sha256(model.model_path.read_bytes()).hexdigest()[:16]
    assert {row["model_version"] for row in rows} == {version}
    for row in rows:
        assert ISO_UTC.match(row["scored_at"]), row["scored_at"]
        when = dt.datetime.fromisoformat(row["scored_at"])
        assert when.utcoffset() == dt.timedelta(0)
        assert before <= when <= after
    for k, column in enumerate(model.score_columns):  # audit columns change no score
        assert np.array_equal(bits(numbers(rows, column, fmt)), bits(model.expected()[:, k]))


def test_add_from_the_config_and_in_the_order_given(
    trained_models: dict[str, TrainedModel], run_cli: RunCli, tmp_path: Path
) -> None:
    model = trained_models["binary"]
    config = write_config(
        tmp_path / "c.toml",
        model=model.model_path,
        sources=[model.source()],
        output={"add": ["scored_at", "model_version"]},
    )
    code, out, err = run_cli("score", "-c", config, stdin=b"b-00000\nb-00001\n")
    assert code == 0, err
    rows = read_output(out)
    assert list(rows[0]) == ["id", "score", "scored_at", "model_version"]
    # Flag over config; repeats and commas are one column each.
    code, out, err = run_cli(
        "score", "-c", config, "--add", "model_version,model_version", stdin=b"b-00000\n"
    )
    assert code == 0, err
    assert list(read_output(out)[0]) == ["id", "score", "model_version"]


def test_an_unknown_audit_column_is_a_one_line_error_naming_the_choices(
    trained_models: dict[str, TrainedModel], run_cli: RunCli, tmp_path: Path
) -> None:
    config = model_config(trained_models["binary"], tmp_path)
    code, out, err = run_cli("score", "-c", config, "--add", "model_versoin", stdin=b"b-00000\n")
    assert (code, out) == (2, b""), err
    assert err.strip() == (
        "batchscore: error: --add takes model_version or scored_at, not 'model_versoin' "
        "(did you mean 'model_version'?)"
    )


def test_outputs_without_scored_at_are_byte_identical_across_runs(
    trained_models: dict[str, TrainedModel], score_in_process: ScoreInProcess, tmp_path: Path
) -> None:
    model = trained_models["regression"]
    config = model_config(model, tmp_path)
    ids = str(model.ids_file(tmp_path / "ids.txt"))
    outs = [tmp_path / "a.csv", tmp_path / "b.csv"]
    for out in outs:
        flags: dict[str, Any] = {"with_features": True, "add": ["model_version"], "explain": 3}
        assert score_in_process(config=config, ids=ids, output=str(out), **flags).status == 0
    assert outs[0].read_bytes() == outs[1].read_bytes()


# -- resume: a stopped run's columns are the resumed run's ----------------------------------------


def test_resume_refuses_other_columns_and_finishes_with_the_same_ones(tmp_path: Path) -> None:
    reference = tmp_path / "reference.csv"
    done = run(score_args(reference, "--add", "model_version", "--with-features"))
    assert done.returncode == 0, done.stderr

    out = tmp_path / "scores.csv"
    held = HeldRun(out, "--add", "model_version", "--with-features")
    try:
        held.feed(600)
        held.wait_committed(1)
    finally:
        held.kill()

    other = run(score_args(out, "--resume", "--add", "model_version"))
    assert other.returncode == 2, other.stderr
    message = other.stderr.decode().strip()
    assert len(message.splitlines()) == 1 and "output columns" in message, message

    resumed = run(score_args(out, "--resume", "--add", "model_version", "--with-features"))
    assert resumed.returncode == 0, resumed.stderr
    assert out.read_bytes() == reference.read_bytes()


# -- --from-errors --------------------------------------------------------------------------------


def test_from_errors_scores_exactly_the_failed_ids_with_their_kept_columns(
    run_cli: RunCli, tmp_path: Path
) -> None:
    ids = [f"C{n:06d}" for n in range(1, 61)]
    ids.insert(20, "C999001")  # not in the store: still not found when retried
    failing = {ids[3], ids[17], ids[42], ids[59]}
    ids_csv = tmp_path / "ids.csv"
    with open(ids_csv, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "segment"])
        writer.writerows([i, f"seg,{n}"] for n, i in enumerate(ids))
    segment = {i: f"seg,{n}" for n, i in enumerate(ids)}
    server = FeatureServer.from_sqlite(
        SAMPLE_DIR / "features.db",
        "customer_features",
        "customer_id",
        faults=Faults(fail_ids=dict.fromkeys(failing, 503)),
    )
    with server as srv:
        config = tmp_path / "http.toml"
        config.write_text(
            f'[model]\npath = "{SAMPLE_DIR / "model.txt"}"\n\n[[sources]]\nname = "profile"\n'
            f'kind = "http"\nurl = "{srv.url}/features/{{id}}"\nfeatures_path = "features"\n'
        )
        first = tmp_path / "scores.csv"
        common = ["-c", config, "--keep", "segment", "--retries", "0"]
        code, _, err = run_cli("score", ids_csv, *common, "-o", first)
        assert code == 3, err
        errors_file = Path(f"{first}.errors.jsonl")
        records = read_errors(errors_file)
        assert {r["id"] for r in records} == failing | {"C999001"}
        assert all(r["keep"] == {"segment": segment[r["id"]]} for r in records)

        srv.faults.fail_ids = {}  # the outage is over
        retry = tmp_path / "retry.csv"
        code, out, err = run_cli(
            "score", "--from-errors", errors_file, *common, "-o", retry, "--max-failed", "1"
        )
        assert code == 0, err
        assert out == b""

    rows = read_output(retry)
    assert [(r["id"], r["segment"]) for r in rows] == [
        (r["id"], segment[r["id"]]) for r in records if r["id"] in failing
    ]
    # Scored like the IDs the first run did score.
    reference = tmp_path / "reference.csv"
    code, _, err = run_cli(
        "score", "-", "-c", ROOT / "configs" / "sample.toml", "-o", reference,
        stdin="\n".join(sorted(failing)).encode(), cwd=ROOT,
    )  # fmt: skip
    assert code == 0, err
    expected = {r["id"]: r["score"] for r in read_output(reference)}
    assert {r["id"]: r["score"] for r in rows} == expected
    # The retry's errors file numbers lines of the file it read.
    again = read_errors(Path(f"{retry}.errors.jsonl"))
    line_of = {r["id"]: n for n, r in enumerate(records, start=1)}
    assert [(r["id"], r["line"], r["reason"]) for r in again] == [
        ("C999001", line_of["C999001"], "not_found")
    ]


def test_from_errors_and_ids_together_is_a_usage_error(run_cli: RunCli, tmp_path: Path) -> None:
    errors_file = tmp_path / "e.jsonl"
    errors_file.write_text('{"id":"C000001","line":1,"stage":"fetch","source":null,'
                           '"reason":"not_found","status":null,"attempts":1}\n')  # fmt: skip
    sample = ROOT / "configs" / "sample.toml"
    code, out, err = run_cli(
        "score", "ids.txt", "--from-errors", errors_file, "-c", sample, cwd=ROOT
    )
    assert (code, out) == (2, b""), err
    assert err.strip() == (
        "batchscore: error: IDS and --from-errors both name the input; pass one of them "
        "(--from-errors takes the IDs of an errors file)"
    )


def test_from_errors_refuses_a_file_that_is_not_an_errors_file(
    run_cli: RunCli, tmp_path: Path
) -> None:
    scores = tmp_path / "scores.csv"
    scores.write_text("id,score\nC000001,0.5\n")
    sample = ROOT / "configs" / "sample.toml"
    code, out, err = run_cli("score", "--from-errors", scores, "-c", sample, cwd=ROOT)
    assert (code, out) == (2, b""), err
    assert err.startswith("batchscore: error: the --from-errors file is not a batchscore errors")
    assert len(err.strip().splitlines()) == 1


def test_from_errors_without_the_kept_column_in_its_records_says_so(
    run_cli: RunCli, tmp_path: Path
) -> None:
    errors_file = tmp_path / "e.jsonl"
    errors_file.write_text('{"id":"C000001","line":1,"stage":"fetch","source":null,'
                           '"reason":"not_found","status":null,"attempts":1}\n')  # fmt: skip
    code, out, err = run_cli(
        "score", "--from-errors", errors_file, "-c", ROOT / "configs" / "sample.toml",
        "--keep", "segment", "-o", tmp_path / "r.csv", cwd=ROOT,
    )  # fmt: skip
    assert (code, out) == (2, b""), err
    assert err.strip() == (
        "batchscore: error: the --from-errors records carry no kept column 'segment' (they "
        "carry: none); a run keeps in its errors file the columns it was given with --keep"
    )
    assert not (tmp_path / "r.csv").exists()


def test_score_help_says_what_contributions_are_and_lists_the_new_options(
    run_cli: RunCli,
) -> None:
    code, out, err = run_cli("score", "--help")
    assert code == 0, err
    text = " ".join(out.decode().split())  # as read, whatever the wrapping
    assert "LightGBM pred_contrib: raw margin, log-odds for binary" in text
    assert "with the bias they sum to the raw score; multiclass: the predicted class" in text
    for option in ("--with-features", "--add COL", "--from-errors PATH"):
        assert option in text


def test_from_errors_keeps_the_reason_of_an_input_error_without_an_id(
    run_cli: RunCli, tmp_path: Path
) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_bytes(b"C000001\n\xff\xfe\nC999001\n")
    sample = ROOT / "configs" / "sample.toml"
    first = tmp_path / "first.csv"
    code, _, err = run_cli("score", ids, "-c", sample, "-o", first, cwd=ROOT)
    assert code == 3, err
    errors_file = Path(f"{first}.errors.jsonl")
    assert [(r["id"], r["reason"]) for r in read_errors(errors_file)] == [
        (None, "invalid_utf8"),
        ("C999001", "not_found"),
    ]
    retry = tmp_path / "retry.csv"
    code, _, err = run_cli(
        "score", "--from-errors", errors_file, "-c", sample, "-o", retry, cwd=ROOT
    )
    assert code == 3, err
    again = read_errors(Path(f"{retry}.errors.jsonl"))
    assert [(r["id"], r["line"], r["reason"]) for r in again] == [
        (None, 1, "invalid_utf8"),
        ("C999001", 2, "not_found"),
    ]
