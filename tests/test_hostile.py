"""Hostile input and crash windows: each test is a finding of issue 10, run as a user meets it.

Real SQLite files, the real command where exit codes and processes matter, and a kill at every
step of the commit (``_BATCHSCORE_CRASH_AT`` stops the process there, as a kill -9 would).
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import (
    ROOT,
    SAMPLE_CONFIG,
    SAMPLE_DIR,
    RunCli,
    TrainedModel,
    batchscore_command,
    clean_environ,
    read_errors,
    read_output,
    sqlite_source,
    write_config,
)

# -- SQLite keys: SQLite decides what an ID finds --------------------------------------------------


def _keyed_store(tmp_path: Path, model: TrainedModel, declared: str, keys: list[object]) -> Path:
    """The first len(keys) rows of the model's features under ``keys`` of type ``declared``."""
    db = tmp_path / f"store-{abs(hash(declared))}.db"
    names = [f"f{j}" for j in range(model.features.shape[1])]
    with sqlite3.connect(db) as con:
        columns = ", ".join(f'"{n}" REAL' for n in names)
        con.execute(f'CREATE TABLE features ("id" {declared}, {columns})')
        rows = [(k, *map(float, model.features[i])) for i, k in enumerate(keys)]
        con.executemany(f"INSERT INTO features VALUES ({','.join('?' * (1 + len(names)))})", rows)
    return db


def _score_ids(
    tmp_path: Path, run_cli: RunCli, model: TrainedModel, db: Path, ids: list[str]
) -> tuple[int, dict[str, float], dict[str, str]]:
    config = write_config(tmp_path / "c.toml", model=model.model_path, sources=[sqlite_source(db)])
    (tmp_path / "ids.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    out = tmp_path / "out.csv"
    result = run_cli("score", "ids.txt", "-c", config, "-o", out, "--max-failed", "100")
    assert "Traceback" not in result.stderr and result.returncode != 1, result.stderr
    scores = {row["id"]: float(row["score"]) for row in read_output(out)}
    errors = {r["id"]: r["reason"] for r in read_errors(Path(f"{out}.errors.jsonl"))}
    return result.returncode, scores, errors


def test_an_integer_key_finds_only_what_sqlite_matches(
    tmp_path: Path, run_cli: RunCli, trained_models: dict[str, TrainedModel]
) -> None:
    model = trained_models["binary"]
    db = _keyed_store(tmp_path, model, "INTEGER PRIMARY KEY", [10, 7])
    ids = ["10", "1_0", "٣", "99999999999999999999", "-", "7"]
    status, scores, errors = _score_ids(tmp_path, run_cli, model, db, ids)
    expected = model.booster.predict(model.features[:2])
    assert status == 0
    assert scores == {"10": expected[0], "7": expected[1]}  # never another row for odd digits
    assert errors == dict.fromkeys(["1_0", "٣", "99999999999999999999", "-"], "not_found")


@pytest.mark.parametrize("declared", ["NUMERIC", "REAL", "DECIMAL(10, 2)"])
def test_numeric_keys_are_found(
    tmp_path: Path, run_cli: RunCli, trained_models: dict[str, TrainedModel], declared: str
) -> None:
    model = trained_models["binary"]
    db = _keyed_store(tmp_path, model, declared, [10, 1.5])
    status, scores, errors = _score_ids(tmp_path, run_cli, model, db, ["10", "1.5", "2"])
    assert (status, errors) == (0, {"2": "not_found"})
    assert scores == dict(
        zip(["10", "1.5"], model.booster.predict(model.features[:2]), strict=True)
    )


def test_a_nocase_key_finds_its_row_in_any_case(
    tmp_path: Path, run_cli: RunCli, trained_models: dict[str, TrainedModel]
) -> None:
    model = trained_models["binary"]
    db = _keyed_store(tmp_path, model, "TEXT COLLATE NOCASE", ["abc", "Def"])
    status, scores, errors = _score_ids(tmp_path, run_cli, model, db, ["ABC", "def", "gh"])
    expected = model.booster.predict(model.features[:2])
    assert (status, errors) == (0, {"gh": "not_found"})
    assert scores == {"ABC": expected[0], "def": expected[1]}


# -- input ---------------------------------------------------------------------------------------


def test_a_bare_cr_in_a_csv_line_is_an_input_error_and_the_run_goes_on(
    tmp_path: Path, run_cli: RunCli
) -> None:
    (tmp_path / "ids.csv").write_bytes(b"id,x\nC000858,1\nb\rc,2\nC004769,3\n")
    result = run_cli(
        "score",
        tmp_path / "ids.csv",
        "-c",
        SAMPLE_CONFIG,
        "-o",
        tmp_path / "out.csv",
        "--max-failed",
        "1",
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert [r["id"] for r in read_output(tmp_path / "out.csv")] == ["C000858", "C004769"]
    errors = read_errors(tmp_path / "out.csv.errors.jsonl")
    assert [(e["line"], e["reason"]) for e in errors] == [(3, "invalid_csv")]


def test_a_quote_never_closed_in_a_csv_loses_no_line(tmp_path: Path, run_cli: RunCli) -> None:
    (tmp_path / "ids.csv").write_bytes(
        b'id,note\nC000858,"5 inch screen\nC004769,x\nC004943,y\nC000858,z\n'
    )
    result = run_cli(
        "score",
        tmp_path / "ids.csv",
        "-c",
        SAMPLE_CONFIG,
        "-o",
        tmp_path / "out.csv",
        "--max-failed",
        "1",
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "read 4 IDs, scored 3, failed 1" in result.stderr
    assert [r["id"] for r in read_output(tmp_path / "out.csv")] == [
        "C004769",
        "C004943",
        "C000858",
    ]
    errors = read_errors(tmp_path / "out.csv.errors.jsonl")
    assert [(e["line"], e["reason"]) for e in errors] == [(2, "invalid_csv")]


def test_a_window_smaller_than_a_batch_still_finishes(tmp_path: Path, run_cli: RunCli) -> None:
    config = tmp_path / "small.toml"
    config.write_text(SAMPLE_CONFIG.read_text() + "\n[output]\nwindow = 10\n")
    result = run_cli(
        "score",
        SAMPLE_DIR / "ids_small.txt",
        "-c",
        config,
        "-o",
        tmp_path / "out.csv",
        "--max-failed",
        "100",
        cwd=ROOT,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert len(read_output(tmp_path / "out.csv")) > 0


# -- refusals that are usage errors, said up front ----------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "{folder}"], "is a folder"),
        (["-o", "{folder}/out.csv", "--errors", "{folder}/missing/e.jsonl"], "does not exist"),
        (["-o", "{folder}/{{run_id}}.csv", "--resume"], "--resume can never"),
        (["-o", "{folder}/o.csv", "--keep", "id", "--input-format", "csv"], "two columns named"),
    ],
)
def test_usage_errors_exit_2_in_one_line_and_leave_nothing(
    tmp_path: Path, run_cli: RunCli, args: list[str], message: str
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (tmp_path / "ids.csv").write_text("id\nC000858\n")
    filled = [a.format(folder=folder) for a in args]
    result = run_cli("score", tmp_path / "ids.csv", "-c", SAMPLE_CONFIG, *filled, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(folder.iterdir()) == []


def test_two_sources_giving_one_feature_exit_2_and_the_process_exits(tmp_path: Path) -> None:
    source = sqlite_source(SAMPLE_DIR / "features.db", table="customer_features", key="customer_id")
    config = write_config(
        tmp_path / "c.toml",
        model=SAMPLE_DIR / "model.txt",
        sources=[{**source, "name": "a"}, {**source, "name": "b"}],
    )
    out = tmp_path / "out.csv"
    started = time.monotonic()
    result = subprocess.run(
        [
            *batchscore_command(),
            "score",
            str(SAMPLE_DIR / "ids_small.txt"),
            "-c",
            str(config),
            "-o",
            str(out),
        ],
        capture_output=True,
        env=clean_environ(),
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    assert time.monotonic() - started < 20, "the process must exit, not hang on a thread"
    assert result.returncode == 2 and b"wins" in result.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "c.toml"], "no state left to --resume"


def test_metrics_say_how_a_run_refused_at_the_start_ended(tmp_path: Path, run_cli: RunCli) -> None:
    metrics = tmp_path / "batchscore.prom"
    metrics.write_text("batchscore_exit_code 0\n")  # what an earlier, good run left
    result = run_cli(
        "score",
        SAMPLE_DIR / "ids_small.txt",
        "-m",
        tmp_path / "missing.txt",
        "-c",
        SAMPLE_CONFIG,
        "-o",
        tmp_path / "o.csv",
        "--metrics",
        metrics,
        cwd=ROOT,
    )
    assert result.returncode == 2
    lines = [
        line for line in metrics.read_text().splitlines() if line.startswith("batchscore_exit")
    ]
    assert lines and lines[0].endswith(" 2")


# -- the commit protocol: a kill at every step, then --resume ---------------------------------


def _sample_run(out: Path, *extra: str) -> list[str]:
    """``score`` of the sample's IDs into ``out`` (its 10 unknown IDs allowed)."""
    ids, config = str(SAMPLE_DIR / "ids.txt"), str(SAMPLE_CONFIG)
    return ["score", ids, "-c", config, "-o", str(out), "--max-failed", "100", *extra]


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*batchscore_command(), *args],
        capture_output=True,
        env=clean_environ(env),
        cwd=ROOT,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    out = tmp_path_factory.mktemp("reference") / "scores.csv"
    done = _run(_sample_run(out))
    assert done.returncode == 0, done.stderr
    return out.read_bytes(), Path(f"{out}.errors.jsonl").read_bytes()


@pytest.mark.parametrize("step", ["synced", "complete", "errors-renamed", "output-renamed"])
def test_a_kill_at_any_step_of_the_commit_resumes_to_the_same_files(
    tmp_path: Path, reference: tuple[bytes, bytes], step: str
) -> None:
    out = tmp_path / "scores.csv"
    args = _sample_run(out)
    killed = _run(args, {"_BATCHSCORE_CRASH_AT": step})
    assert killed.returncode == -9, killed.stderr
    resumed = _run([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert out.read_bytes() == reference[0]
    assert Path(f"{out}.errors.jsonl").read_bytes() == reference[1], "no failure is lost"
    # Only the files and the record that makes the same --resume command a no-op.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".scores.csv.done",
        "scores.csv",
        "scores.csv.errors.jsonl",
    ]


def test_a_changed_errors_path_is_refused_naming_it(tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    args = _sample_run(out)
    assert _run(args, {"_BATCHSCORE_CRASH_AT": "synced"}).returncode == -9
    moved = _run([*args, "--resume", "--errors", str(tmp_path / "elsewhere.jsonl")])
    assert moved.returncode == 2
    assert b"errors file" in moved.stderr and b"elsewhere.jsonl" in moved.stderr


def test_a_missing_partial_errors_file_is_refused_not_started_afresh(tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    args = _sample_run(out)
    assert _run(args, {"_BATCHSCORE_CRASH_AT": "synced"}).returncode == -9
    (tmp_path / ".scores.csv.errors.jsonl.partial").unlink()
    resumed = _run([*args, "--resume"])
    assert resumed.returncode == 2
    assert b"missing" in resumed.stderr and b"--overwrite" in resumed.stderr


def test_overwrite_after_a_stopped_parquet_run_starts_over(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    out = tmp_path / "scores.parquet"
    args = _sample_run(out)
    assert _run(args, {"_BATCHSCORE_CRASH_AT": "synced"}).returncode == -9
    assert (tmp_path / ".scores.parquet.partial").is_dir()
    again = _run([*args, "--overwrite"])
    assert again.returncode == 0, again.stderr
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert table.num_rows == 5000 and np.isfinite(table.column("score").to_numpy()).all()


def test_resume_of_a_finished_run_that_lost_only_its_state_removal(tmp_path: Path) -> None:
    """A nightly cron line always passes --resume: a run killed after its renames finishes."""
    out = tmp_path / "scores.csv"
    args = _sample_run(out, "--report", str(tmp_path / "r.json"))
    assert _run(args, {"_BATCHSCORE_CRASH_AT": "output-renamed"}).returncode == -9
    resumed = _run([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert b"written every row already" in resumed.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["scored"], report["failed"]) == (5000, 10)


ALLOW = ("--max-failed", "100")  # the sample holds 10 unknown IDs


# -- cron: the same --resume command every night ------------------------------------------------


def test_resume_of_a_completed_run_is_a_no_op_that_says_so(tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    report = tmp_path / "r.json"
    args = _sample_run(out, "--resume", "--report", str(report))
    first = _run(args)
    assert first.returncode == 0, first.stderr
    before = out.read_bytes(), out.stat().st_mtime_ns
    again = _run(args)
    assert again.returncode == 0, again.stderr
    lines = again.stderr.decode().splitlines()
    assert len(lines) == 1 and "is complete already" in lines[0] and "nothing to do" in lines[0]
    assert (out.read_bytes(), out.stat().st_mtime_ns) == before, "the output is not touched"
    assert json.loads(report.read_text())["scored"] == 5000  # the report tells what was done


def test_a_no_op_resume_holds_the_lock_and_clears_a_killed_runs_lock_files(
    tmp_path: Path,
) -> None:
    """A run killed after its commit (the done record written) leaves its lock files; the
    no-op that follows takes the locks too, so it clears them (the kill-and-resume campaign
    found them left for good), and it is refused (75) while another run holds the output."""
    out = tmp_path / "scores.csv"
    args = _sample_run(out, "--resume")
    assert _run(args).returncode == 0
    stale = [tmp_path / ".scores.csv.lock", tmp_path / ".scores.csv.errors.jsonl.lock"]
    for lock in stale:  # as a kill -9 leaves them: a holder named, no flock held
        lock.write_text("pid 999999 started 2026-12-07T03:15:00+00:00\n")
    again = _run(args)
    assert again.returncode == 0 and b"is complete already" in again.stderr, again.stderr
    assert not [lock.name for lock in stale if lock.exists()]
    with open(stale[0], "w") as held:  # another run holds the output now
        fcntl.flock(held, fcntl.LOCK_EX)
        busy = _run(args)
    assert busy.returncode == 75, busy.stderr


def test_resume_of_a_completed_run_refuses_when_something_changed(tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_bytes((SAMPLE_DIR / "ids.txt").read_bytes())
    out = tmp_path / "scores.csv"

    def nightly(*extra: str) -> list[str]:
        return ["score", str(ids), "-c", str(SAMPLE_CONFIG), "-o", str(out), *ALLOW, *extra]

    assert _run(nightly("--resume")).returncode == 0
    other_option = _run(nightly("--resume", "--dedupe"))
    assert other_option.returncode == 2
    assert b"--dedupe" in other_option.stderr  # the difference is named
    without_resume = _run(nightly())
    assert without_resume.returncode == 2 and b"already exists" in without_resume.stderr
    with ids.open("ab") as f:
        f.write(b"C000001\n")  # tonight's export has one more line
    changed = _run(nightly("--resume"))
    assert changed.returncode == 2
    assert b"has changed since" in changed.stderr and str(ids).encode() in changed.stderr


def test_resume_of_a_completed_run_refuses_other_raw_scores(tmp_path: Path) -> None:
    """--raw-score changes every score but no column name: the done record must tell it, or
    the same command with --raw-score would be a no-op that leaves probabilities in place."""
    out = tmp_path / "scores.csv"
    args = _sample_run(out, "--resume", *ALLOW)
    assert _run(args).returncode == 0
    raw = _run([*args, "--raw-score"])
    assert raw.returncode == 2, raw.stderr
    assert b"--raw-score" in raw.stderr and b"already exists" in raw.stderr


def test_another_days_unfinished_run_is_named_and_can_be_resumed(
    tmp_path: Path, reference: tuple[bytes, bytes]
) -> None:
    template = str(tmp_path / "scores-{date}.csv")
    report = tmp_path / "r.json"
    killed = _run(
        _sample_run(Path(template), "--date", "2026-11-30"), {"_BATCHSCORE_CRASH_AT": "synced"}
    )
    assert killed.returncode == -9
    tonight = _run(_sample_run(Path(template), "--resume", "--report", str(report)))
    assert tonight.returncode == 0, tonight.stderr
    assert (
        b"the run for 2026-11-30 stopped before it finished" in tonight.stderr
        and b"--date 2026-11-30 --resume" in tonight.stderr
    )
    assert [r["date"] for r in json.loads(report.read_text())["unfinished_runs"]] == ["2026-11-30"]
    old = _run(_sample_run(Path(template), "--date", "2026-11-30", "--resume"))
    assert old.returncode == 0, old.stderr
    assert (tmp_path / "scores-2026-11-30.csv").read_bytes() == reference[0]
    assert not list(tmp_path.glob(".*.state"))


@pytest.mark.parametrize("day", ["2026-11-31", "yesterday", "2026-1-5"])
def test_a_date_that_is_not_a_day_is_refused(tmp_path: Path, day: str) -> None:
    result = _run(_sample_run(tmp_path / "s-{date}.csv", "--date", day))
    assert result.returncode == 2
    assert result.stderr.decode().strip().endswith(f"not '{day}'")


def test_ctrl_c_stops_a_run_waiting_for_a_csv_header_on_a_silent_stdin(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            *batchscore_command(),
            "score",
            "-",
            "--input-format",
            "csv",
            "-c",
            str(SAMPLE_CONFIG),
            "-o",
            str(tmp_path / "out.csv"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_environ(),
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        # The run has started once it holds its output's lock (taken just before its event
        # loop, where the signal handlers go): waited for, never a fixed sleep.
        lock = tmp_path / ".out.csv.lock"
        deadline = time.monotonic() + 60
        while not lock.exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.02)
        time.sleep(0.2)  # the header never comes: the run is (still) waiting for it
        proc.send_signal(2)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert b"Traceback" not in err and b"--resume" in err


def test_kept_json_values_keep_their_type_in_json_lines_and_read_as_json_in_csv(
    tmp_path: Path, score_in_process: Any
) -> None:
    values = [0, True, None, [1, 2], {"a": 1}, "x", 1.5]
    lines = [json.dumps({"id": "C000858", "v": v}) for v in values]
    (tmp_path / "ids.jsonl").write_text("\n".join(lines) + "\n")
    for fmt in ("jsonl", "csv"):
        out = tmp_path / f"out.{fmt}"
        score_in_process(
            config=SAMPLE_CONFIG, ids=str(tmp_path / "ids.jsonl"), output=str(out), keep=("v",)
        )
        kept = [row["v"] for row in read_output(out)]
        if fmt == "jsonl":
            assert kept == values
        else:
            assert kept == ["0", "true", "", "[1,2]", '{"a":1}', "x", "1.5"]


def test_a_rename_of_a_column_that_does_not_exist_is_a_config_error(
    tmp_path: Path, run_cli: RunCli
) -> None:
    source = sqlite_source(SAMPLE_DIR / "features.db", table="customer_features", key="customer_id")
    config = write_config(
        tmp_path / "c.toml",
        model=SAMPLE_DIR / "model.txt",
        sources=[{**source, "rename": {"plann": "plan"}}],
    )
    result = run_cli("score", SAMPLE_DIR / "ids_small.txt", "-c", config, "-o", tmp_path / "o.csv")
    assert result.returncode == 2
    assert "plann" in result.stderr and "plan" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -- the process always exits: every error path, after the sources are open ---------------------


def _exit_case(tmp_path: Path, case: str) -> tuple[list[str], int, str]:
    """The arguments of a run that fails in ``case``, its exit status and a word of its message.

    Each fails after the SQLite source (an aiosqlite thread) is open, the state of those runs
    that have one too: a thread or connection left open would keep the process alive."""
    source = sqlite_source(SAMPLE_DIR / "features.db", table="customer_features", key="customer_id")
    out = tmp_path / "out.csv"
    ids = tmp_path / "ids.txt"
    ids.write_bytes((SAMPLE_DIR / "ids_small.txt").read_bytes())
    sources: list[dict[str, Any]] = [source]
    extra: list[str] = []
    fetch: dict[str, Any] = {}
    if case == "coverage":
        sources = [{**source, "columns": ["tenure_days"]}]
        status, word = 2, "no source provides"
    elif case == "kept-column":
        ids = tmp_path / "ids.csv"
        ids.write_text("id,x\nC000858,1\n")
        extra, status, word = ["--keep", "y"], 2, "y"
    elif case == "leftover-state":
        (tmp_path / ".out.csv.state").write_bytes(b"")
        status, word = 2, "--resume"
    elif case == "min-ids":
        extra, status, word = ["--min-ids", "1000"], 2, "--min-ids"
    elif case == "wrong-as-a-whole":
        ids.write_bytes(b"\xff\xfe\n" * 50)
        status, word = 2, "UTF-8"
    elif case == "source-down":
        down = {"name": "down", "kind": "http", "url": "http://127.0.0.1:1/f/{id}"}
        sources = [{**source, "columns": []}, down]
        sources[0].pop("columns")
        status, word = 4, "down"
        fetch = {"down_after": 5}
    elif case == "state-unusable":
        (tmp_path / ".out.csv.state").mkdir()
        extra, status, word = ["--resume"], 74, "state file"
    else:  # pragma: no cover
        raise AssertionError(case)
    config = write_config(
        tmp_path / "c.toml", model=SAMPLE_DIR / "model.txt", sources=sources, fetch=fetch
    )
    return ["score", str(ids), "-c", str(config), "-o", str(out), *extra], status, word


@pytest.mark.parametrize(
    "case",
    [
        "coverage",
        "kept-column",
        "leftover-state",
        "min-ids",
        "wrong-as-a-whole",
        "source-down",
        "state-unusable",
    ],
)
def test_every_error_path_exits_at_once_with_one_line(tmp_path: Path, case: str) -> None:
    args, status, word = _exit_case(tmp_path, case)
    started = time.monotonic()
    result = _run(args)
    took = time.monotonic() - started
    err = result.stderr.decode()
    assert result.returncode == status, err
    assert took < 20, f"{case}: the process took {took:.0f} s to exit after its error"
    assert "Traceback" not in err and word in err, err
    errors = [line for line in err.splitlines() if line.startswith("batchscore: error:")]
    assert len(errors) == 1, err


def test_resume_of_a_completed_run_refuses_when_the_config_changed(tmp_path: Path) -> None:
    """Another table or store behind the same IDs makes other scores: not a no-op."""
    config = tmp_path / "c.toml"
    text = SAMPLE_CONFIG.read_text().replace('"sample_data/', f'"{SAMPLE_DIR}/')
    config.write_text(text)
    out = tmp_path / "scores.csv"
    args = ["score", str(SAMPLE_DIR / "ids.txt"), "-c", str(config), "-o", str(out), *ALLOW]
    assert _run([*args, "--resume"]).returncode == 0
    config.write_text(text.replace("concurrency = 8", "concurrency = 4"))
    changed = _run([*args, "--resume"])
    assert changed.returncode == 2
    assert b"config file with other content" in changed.stderr
