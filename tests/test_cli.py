"""The real ``batchscore`` command as a subprocess: exit statuses, what reaches stdout and
stderr, one-line errors, messy input end to end, help and version.

Each test runs the installed command the way a user or a cron job would, and checks what they
would check: the exit status, the bytes on stdout, the files left behind, the errors file.
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import json
import pickle
import re
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import (
    ID_STORE_EMPTY,
    ROOT,
    SAMPLE_CONFIG,
    IdStore,
    RunCli,
    ScoreInProcess,
    read_errors,
    read_output,
    sqlite_source,
    write_config,
)


def assert_one_line_error(code: int, out: bytes, err: str, expected_code: int = 2) -> None:
    """The failure a user sees: the status, nothing on stdout, one line on stderr."""
    assert code == expected_code, err
    assert out == b""
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("batchscore: error: ")


def score_of(store: IdStore, ident: str) -> str:
    return repr(store.score(ident))


# -- help and version -----------------------------------------------------------------------------


def command_names() -> list[str]:
    from batchscore.app import app

    return [c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands]


def test_every_command_is_covered_by_the_help_test() -> None:
    assert {"score", "model-info"} <= set(command_names())


@pytest.mark.parametrize(
    "command",
    [
        None,
        *command_names(),
    ],
)
def test_help_of_every_command_shows_an_example(run_cli: RunCli, command: str | None) -> None:
    code, out, err = run_cli(*([command] if command else []), "--help")
    assert code == 0, err
    text = out.decode()
    assert "Example" in text
    assert "batchscore " in text.split("Example", 1)[1]


def test_version_is_the_installed_version(run_cli: RunCli) -> None:
    code, out, _ = run_cli("--version")
    assert code == 0
    assert out.decode().split() == ["batchscore", importlib.metadata.version("batchscore")]


# -- errors that stop a run before it starts ------------------------------------------------------


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def bad_model(kind: str, store: IdStore, folder: Path) -> Path:
    good = store.model_path.read_bytes()
    path = folder / ("model.pkl" if kind == "pickle" else "model.txt")
    content = {
        "truncated": good[: len(good) // 2],
        "corrupt": good.replace(b"num_leaves=", b"num_leaves=abc", 1),  # LightGBM aborts on it
        "pickle": pickle.dumps({"booster": good}),
    }[kind]
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("missing", "does not exist"),
        ("truncated", "truncated"),
        ("corrupt", "corrupt"),
        ("pickle", "pickle"),
    ],
)
def test_bad_model_is_exit_2_in_one_line_and_creates_nothing(
    run_cli: RunCli, id_store: IdStore, tmp_path: Path, out_dir: Path, kind: str, words: str
) -> None:
    model = tmp_path / "missing.txt" if kind == "missing" else bad_model(kind, id_store, tmp_path)
    code, out, err = run_cli(
        "score", "-c", id_store.config_path, "-m", model, "-o", out_dir / "s.csv", stdin=b"C1\n"
    )
    assert_one_line_error(code, out, err)  # stdout empty: no LightGBM line leaked either
    assert words in err
    assert str(model) in err
    assert list(out_dir.iterdir()) == []  # no output, no temporary file


@pytest.mark.parametrize(
    ("toml", "environ", "words"),
    [
        ("[score\nbatch_size = 5\n", {}, ["not valid TOML"]),
        ("[score]\nbatch_sise = 5\n", {}, ["batch_sise", "did you mean 'batch_size'"]),
        ("[output]\npath = '${OUT_DIR}/s.csv'\n", {}, ["OUT_DIR"]),
        (
            "[fetch]\nconcurrency = 8\n",
            {"BATCHSCORE_BATCH_SIZE": "lots"},
            ["BATCHSCORE_BATCH_SIZE"],
        ),
    ],
)
def test_bad_config_is_exit_2_in_one_line(
    run_cli: RunCli,
    id_store: IdStore,
    tmp_path: Path,
    toml: str,
    environ: dict[str, str],
    words: list[str],
) -> None:
    base = id_store.config_path.read_text()
    config = tmp_path / "bad.toml"
    config.write_text(base + "\n" + toml)
    code, out, err = run_cli("score", "-c", config, stdin=b"C1\n", env=environ)
    assert_one_line_error(code, out, err)
    for word in words:
        assert word in err


def test_unknown_flag_is_exit_2_with_a_suggestion(run_cli: RunCli, id_store: IdStore) -> None:
    code, out, err = run_cli("score", "-c", id_store.config_path, "--batchsize", "3")
    assert code == 2
    assert out == b""
    assert "Traceback" not in err
    assert "--batch-size" in err


def test_existing_output_is_exit_2_and_left_alone_without_overwrite(
    run_cli: RunCli, id_store: IdStore, out_dir: Path
) -> None:
    existing = out_dir / "s.csv"
    existing.write_text("precious\n")
    code, out, err = run_cli("score", "-c", id_store.config_path, "-o", existing, stdin=b"C1\n")
    assert_one_line_error(code, out, err)
    assert "--overwrite" in err
    assert existing.read_text() == "precious\n"
    assert sorted(p.name for p in out_dir.iterdir()) == ["s.csv"]

    code, out, err = run_cli(
        "score", "-c", id_store.config_path, "-o", existing, "--overwrite", stdin=b"C1\n"
    )
    assert code == 0, err
    assert read_output(existing) == [{"id": "C1", "score": score_of(id_store, "C1")}]


def test_csv_input_without_the_id_column_is_exit_2_in_one_line(
    run_cli: RunCli, id_store: IdStore, tmp_path: Path
) -> None:
    ids = tmp_path / "ids.csv"
    ids.write_text("customer,segment\nC1,x\n")
    code, out, err = run_cli("score", ids, "-c", id_store.config_path)
    assert "customer, segment" in err
    assert_one_line_error(code, out, err)


def test_feature_view_that_cannot_be_read_is_exit_2_and_the_process_ends(
    run_cli: RunCli, id_store: IdStore, tmp_path: Path
) -> None:
    db = tmp_path / "broken.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE base (id TEXT, f0 REAL)")
        conn.execute("CREATE VIEW features AS SELECT * FROM base")
        conn.execute("DROP TABLE base")
    conn.close()
    config = write_config(
        tmp_path / "c.toml", model=id_store.model_path, sources=[sqlite_source(db)]
    )
    try:
        code, out, err = run_cli("score", "-c", config, stdin=b"C1\n", timeout=6)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError("the process did not end") from exc
    assert_one_line_error(code, out, err)
    assert "features" in err


# -- failures during a run: exit 3 or 0 -----------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ((), 3),
        (("--max-failed", "2"), 0),
        (("--max-failed-rate", "0.5"), 0),
        (("--max-failed-rate", "0.25"), 3),
    ],
)
def test_failures_beyond_the_allowance_exit_3_within_it_exit_0(
    run_cli: RunCli, id_store: IdStore, out_dir: Path, flags: tuple[str, ...], expected: int
) -> None:
    out = out_dir / "s.csv"
    code, stdout, err = run_cli(
        "score", "-c", id_store.config_path, "-o", out, *flags, stdin=b"C1\nNOPE-1\nNOPE-2\nC2\n"
    )
    assert code == expected, err
    assert "Traceback" not in err
    # Either way the outputs are complete: every ID is scored or recorded.
    assert [row["id"] for row in read_output(out)] == ["C1", "C2"]
    errors = read_errors(Path(f"{out}.errors.jsonl"))
    assert [(e["id"], e["line"], e["reason"]) for e in errors] == [
        ("NOPE-1", 2, "not_found"),
        ("NOPE-2", 3, "not_found"),
    ]
    assert stdout == b""


# -- stdout and stderr ----------------------------------------------------------------------------


def test_stdout_has_only_csv_rows_and_stderr_the_summary(
    run_cli: RunCli, id_store: IdStore
) -> None:
    code, out, err = run_cli(
        "score", "-c", id_store.config_path, "--debug", stdin=b"C1\nNOPE\n007\n"
    )
    assert code == 3, err
    rows = list(csv.reader(io.StringIO(out.decode())))
    assert rows == [
        ["id", "score"],
        ["C1", score_of(id_store, "C1")],
        ["007", score_of(id_store, "007")],
    ]
    assert "read 3 IDs, scored 2, failed 1" in err
    assert "failed by reason: not_found 1" in err
    # Without an errors file, the summary still says which ID failed, where and why.
    assert "failed IDs:\n  line 2  NOPE  not_found (features)\n" in err
    assert re.search(r"source features: .*p50 .*p95 .*p99 ", err)
    assert re.search(r"time busy: fetch .*score .*write ", err)
    assert "--errors" in err  # where failed IDs could have been recorded


def test_quiet_prints_nothing_on_success(run_cli: RunCli, id_store: IdStore, out_dir: Path) -> None:
    code, out, err = run_cli(
        "score", "-c", id_store.config_path, "--quiet", "-o", out_dir / "s.csv", stdin=b"C1\n"
    )
    assert (code, out, err) == (0, b"", "")
    code, out, err = run_cli("score", "-c", id_store.config_path, "-q", stdin=b"C1\n")
    assert (code, err) == (0, "")
    assert out.decode() == f"id,score\nC1,{score_of(id_store, 'C1')}\n"


def test_quiet_still_shows_errors(run_cli: RunCli, id_store: IdStore, tmp_path: Path) -> None:
    code, out, err = run_cli(
        "score", "-c", id_store.config_path, "--quiet", "-m", tmp_path / "nope.txt"
    )
    assert_one_line_error(code, out, err)


# -- messy input, end to end ---------------------------------------------------------------------


def test_messy_text_input_is_scored_with_errors_recorded_by_line(
    run_cli: RunCli, id_store: IdStore, out_dir: Path
) -> None:
    lines = [
        b"\xef\xbb\xbfC1\r\n",  # 1: BOM, CRLF
        b"\r\n",  # 2: blank
        b"   007  \r\n",  # 3: surrounding whitespace; stays 007
        b"\xff\xfeC2\n",  # 4: not UTF-8
        b"y" * 1025 + b"\n",  # 5: too long
        b"\n",  # 6: blank
        b"C1\n",  # 7: duplicate, scored again
        b"UNKNOWN\n",  # 8: not in the store
        b'\tsay "hi"\t\n',  # 9: quotes
        b"a,b\n",  # 10: a comma
        ID_STORE_EMPTY.encode() + b"\n",  # 11: every feature missing
        b"x" * 1024,  # 12: longest allowed, no final newline
    ]
    ids = out_dir.parent / "ids.txt"
    ids.write_bytes(b"".join(lines))
    out = out_dir / "scores.csv"
    code, stdout, err = run_cli("score", ids, "-c", id_store.config_path, "-o", out)
    assert code == 3, err
    assert stdout == b""
    expected_ids = ["C1", "007", "C1", 'say "hi"', "a,b", "x" * 1024]
    rows = read_output(out)
    assert [row["id"] for row in rows] == expected_ids
    assert [row["score"] for row in rows] == [score_of(id_store, i) for i in expected_ids]
    errors = read_errors(Path(f"{out}.errors.jsonl"))
    assert [(e["line"], e["stage"], e["reason"]) for e in errors] == [
        (4, "input", "invalid_utf8"),
        (5, "input", "id_too_long"),
        (8, "fetch", "not_found"),
        (11, "score", "no_features"),
    ]
    assert [e["id"] for e in errors][2:] == ["UNKNOWN", ID_STORE_EMPTY]
    assert errors[2]["source"] == "features"
    # The run succeeded as far as files go: final names only, no temporary left behind.
    assert sorted(p.name for p in out_dir.iterdir()) == ["scores.csv", "scores.csv.errors.jsonl"]


def test_dedupe_scores_each_id_once_in_first_seen_order(run_cli: RunCli, id_store: IdStore) -> None:
    code, out, err = run_cli(
        "score", "-c", id_store.config_path, "--dedupe", stdin=b"C1\nC2\nC1\n007\nC2\n"
    )
    assert code == 0, err
    assert [row["id"] for row in read_output(out)] == ["C1", "C2", "007"]


def test_csv_input_with_id_column_and_kept_columns(
    run_cli: RunCli, id_store: IdStore, tmp_path: Path
) -> None:
    ids = tmp_path / "accounts.csv"
    ids.write_bytes(
        b'\xef\xbb\xbfsegment,customer,note\r\ngold,007,"a, b"\r\nsilver,7,plain\r\n\r\n'
        b"bronze,UNKNOWN,x\r\n"
    )
    out = tmp_path / "scores.csv"
    code, _, err = run_cli(
        "score",
        ids,
        "-c",
        id_store.config_path,
        "--id-column",
        "customer",
        "--keep",
        "note",
        "--keep",
        "segment",
        "-o",
        out,
        "--max-failed",
        "1",
    )
    assert code == 0, err
    assert read_output(out) == [
        {"id": "007", "score": score_of(id_store, "007"), "note": "a, b", "segment": "gold"},
        {"id": "7", "score": score_of(id_store, "7"), "note": "plain", "segment": "silver"},
    ]
    assert score_of(id_store, "007") != score_of(id_store, "7")  # "007" was not read as 7
    errors = read_errors(Path(f"{out}.errors.jsonl"))
    assert [(e["id"], e["line"]) for e in errors] == [("UNKNOWN", 5)]


def test_jsonl_input_with_id_field_and_kept_fields(
    run_cli: RunCli, id_store: IdStore, tmp_path: Path
) -> None:
    ids = tmp_path / "accounts.jsonl"
    ids.write_text(
        '{"acct": "007", "tier": "gold"}\n\n{"acct": 7, "tier": 2}\n{"acct": "日本"}\n',
        encoding="utf-8",
    )
    out = tmp_path / "scores.jsonl"
    code, _, err = run_cli(
        "score", ids, "-c", id_store.config_path, "--id-field", "acct", "--keep", "tier", "-o", out
    )
    assert code == 0, err
    rows = read_output(out)
    # Kept values keep their JSON type in a JSON-lines output (an absent field is null).
    assert [(row["id"], row["tier"]) for row in rows] == [("007", "gold"), ("7", 2), ("日本", None)]
    assert np.array_equal(
        [row["score"] for row in rows], [id_store.score(i) for i in ("007", "7", "日本")]
    )


def test_jsonl_input_without_the_id_field_stops_with_exit_2_naming_the_fields(
    run_cli: RunCli, id_store: IdStore, tmp_path: Path
) -> None:
    ids = tmp_path / "accounts.jsonl"
    ids.write_text("".join(f'{{"acct": "{n}", "tier": 1}}\n' for n in range(500)))
    out = tmp_path / "scores.csv"
    code, _, err = run_cli("score", ids, "-c", id_store.config_path, "-o", out)
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "'id'" in err and "acct, tier" in err and "--id-field" in err
    assert not out.exists()
    # Nothing left behind that the fixed command would have to --resume or --overwrite.
    code, _, err = run_cli(
        "score", ids, "-c", id_store.config_path, "-o", out, "--id-field", "acct"
    )
    assert code == 3, err  # the IDs are not in the store: not_found, but a real run


# -- configuration, as the process sees it --------------------------------------------------------


def test_flag_beats_environment_beats_config_file(
    run_cli: RunCli, id_store: IdStore, tmp_path: Path
) -> None:
    paths = {name: tmp_path / f"{name}.csv" for name in ("config", "env", "flag")}
    config = write_config(
        tmp_path / "c.toml",
        model=id_store.model_path,
        sources=[sqlite_source(id_store.db_path)],
        output={"path": str(paths["config"])},
        run={"max_failed": 0},
    )
    env = {"BATCHSCORE_OUTPUT": str(paths["env"]), "BATCHSCORE_MAX_FAILED": "1"}
    code, _, err = run_cli("score", "-c", config, "-o", paths["flag"], stdin=b"C1\nNOPE\n", env=env)
    assert code == 0, err  # the environment's allowance of one failure beat the config's zero
    assert [p.name for p in paths.values() if p.exists()] == ["flag.csv"]


def test_errors_file_for_a_stdout_run_goes_where_errors_says(
    run_cli: RunCli, id_store: IdStore, tmp_path: Path
) -> None:
    errors = tmp_path / "failed.jsonl"
    code, out, err = run_cli(
        "score", "-c", id_store.config_path, "--errors", errors, stdin=b"NOPE\n\nC1\n"
    )
    assert code == 3, err
    assert [row["id"] for row in read_output(out)] == ["C1"]
    record = json.loads(errors.read_text())
    assert record == {
        "id": "NOPE",
        "line": 1,
        "stage": "fetch",
        "source": "features",
        "reason": "not_found",
        "status": None,
        "attempts": 1,
    }


def test_progress_is_a_log_line_on_stderr_when_not_on_a_terminal(
    score_in_process: ScoreInProcess, id_store: IdStore
) -> None:
    ids = "".join(f"{i}\n" for i in ["C1", "C2", "NOPE"] * 200).encode()
    run = score_in_process(
        config=id_store.config_path,
        stdin=ids,
        progress_interval=0.001,
        batch_size=10,
        max_failed=200,
    )
    assert run.status == 0, run.stderr
    progress = [line for line in run.stderr.splitlines() if " done, " in line]
    assert progress
    assert all(re.match(r"batchscore: [\d,]+ done, [\d,]+ failed, ", line) for line in progress)
    assert b" done, " not in run.stdout


def test_score_help_shows_defaults_and_the_scale_out_options(run_cli: RunCli) -> None:
    result = run_cli("score", "--help")
    assert result.returncode == 0
    text = result.stdout.decode()
    assert "--concurrency N|auto" in text and "[default: auto]" in text
    assert "--max-concurrency N" in text and "[default: 256]" in text and "[default: 1024]" in text
    panels = help_panels(text)
    for flag in ("--engine ENGINE", "--scheduler ADDR", "--partition-size N"):
        assert flag in panels["Run"]
    assert "--merge" in panels["Output"]
    assert "list[str]" not in text


def help_panels(text: str) -> dict[str, str]:
    """The sections of a help text: title line (``Input:``) -> the lines under it."""
    panels: dict[str, str] = {}
    title = ""
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            title = line[:-1]
            panels[title] = ""
        elif title:
            panels[title] += line + "\n"
    return panels


def test_score_help_groups_its_options_in_panels_with_their_defaults(run_cli: RunCli) -> None:
    result = run_cli("score", "--help")
    assert result.returncode == 0
    panels = help_panels(result.stdout.decode())
    assert [title for title in panels if title not in ("Arguments", "Options")] == [
        "Input",
        "Sources",
        "Scoring",
        "Output",
        "Run",
    ]
    assert re.search(r"--concurrency N\|auto +Requests in flight", panels["Sources"])
    assert "[default: auto]" in panels["Sources"] and "--max-concurrency N" in panels["Sources"]
    assert "--batch-size N" in panels["Scoring"] and "[default: 1024]" in panels["Scoring"]
    assert "--header" in panels["Input"] and "text|csv|tsv|jsonl" in panels["Input"]
    assert "--min-ids N" in panels["Input"]
    assert "-o, --output PATH" in panels["Output"] and "--max-failed N" in panels["Run"]


def test_an_empty_input_warns_and_a_misplaced_key_names_its_table(
    run_cli: RunCli, tmp_path: Path
) -> None:
    empty = run_cli("score", "-", "-c", SAMPLE_CONFIG, cwd=ROOT)
    assert empty.returncode == 0 and "held no IDs" in empty.stderr
    config = tmp_path / "c.toml"
    config.write_text(SAMPLE_CONFIG.read_text().replace("[score]", "[score]\nmax_failed = 3"))
    misplaced = run_cli("score", "-", "-c", config, cwd=ROOT)
    assert misplaced.returncode == 2
    assert "belongs in [run]" in misplaced.stderr and "max_failed" in misplaced.stderr


# -- an analyst's input: TSV, a header in text, too few IDs, a file that fails throughout ---------


def test_tsv_input_is_split_on_tabs_with_kept_columns_and_real_line_numbers(
    run_cli: RunCli, id_store: IdStore, tmp_path: Path
) -> None:
    ids = tmp_path / "accounts.tsv"
    ids.write_bytes(b'segment\tcustomer\r\ngold\t007\r\n\r\nsilver\tsay "hi"\r\nx\tNOPE\r\n')
    out = tmp_path / "scores.csv"
    code, _, err = run_cli(
        "score",
        ids,
        "-c",
        id_store.config_path,
        "--id-column",
        "customer",
        "--keep",
        "segment",
        "-o",
        out,
    )
    assert code == 3, err
    assert read_output(out) == [
        {"id": "007", "score": score_of(id_store, "007"), "segment": "gold"},
        {"id": 'say "hi"', "score": score_of(id_store, 'say "hi"'), "segment": "silver"},
    ]
    assert [(e["id"], e["line"]) for e in read_errors(Path(f"{out}.errors.jsonl"))] == [("NOPE", 5)]


def test_a_text_header_is_skipped_with_header_and_warned_about_without(
    run_cli: RunCli, id_store: IdStore, tmp_path: Path
) -> None:
    stdin = b"customer_id\nC1\n\nNOPE\nC2\n"  # cut -d, -f1 accounts.csv
    errors = tmp_path / "errors.jsonl"
    code, out, err = run_cli(
        "score", "-c", id_store.config_path, "--header", "--errors", errors, stdin=stdin
    )
    assert code == 3, err
    assert [row["id"] for row in read_output(out)] == ["C1", "C2"]
    assert [(e["id"], e["line"]) for e in read_errors(errors)] == [("NOPE", 4)]
    assert "looks like a header" not in err

    code, out, err = run_cli("score", "-c", id_store.config_path, stdin=stdin)
    assert code == 3, err  # an ID that is not found is a failed ID, whatever it looks like
    assert (
        "batchscore: warning: line 1 'customer_id' was not found and looks like a header, not "
        "an ID: pass --header to skip it (or --input-format csv for a CSV)\n"
    ) in err
    # The same key in the config file ([input] header = true) skips it too.
    config = tmp_path / "c.toml"
    config.write_text(id_store.config_path.read_text() + "\n[input]\nheader = true\n")
    code, out, err = run_cli("score", "-c", config, "--max-failed", "1", stdin=stdin)
    assert code == 0, err
    assert [row["id"] for row in read_output(out)] == ["C1", "C2"]


def test_resuming_with_another_header_option_is_refused_naming_it(
    run_cli: RunCli, id_store: IdStore, tmp_path: Path
) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("id\nC1\nC2\n")
    out = tmp_path / "scores.csv"
    args = ["score", ids, "-c", id_store.config_path, "-o", out, "--max-failed", "1"]
    assert run_cli(*args, env={"_BATCHSCORE_CRASH_AT": "synced"}).returncode == -9
    code, stdout, err = run_cli(*args, "--resume", "--header")
    assert_one_line_error(code, stdout, err)
    assert "--header (None, now True)" in err


@pytest.mark.parametrize("where", ["file", "stdin", "config", "env"])
def test_fewer_ids_than_min_ids_is_exit_2_before_anything_is_written(
    run_cli: RunCli, id_store: IdStore, tmp_path: Path, out_dir: Path, where: str
) -> None:
    data = b"C1\n\nC2\n\xff\nC3\n"  # 3 IDs: a blank line and a bad line are no IDs
    ids = tmp_path / "ids.txt"
    ids.write_bytes(data)
    config = tmp_path / "c.toml"
    config.write_text(id_store.config_path.read_text() + "\n[input]\nmin_ids = 4\n")
    args: list[str | Path] = {
        "file": [ids, "-c", id_store.config_path, "--min-ids", "4"],
        "stdin": ["-", "-c", id_store.config_path, "--min-ids", "4"],
        "config": [ids, "-c", config],
        "env": [ids, "-c", id_store.config_path],
    }[where]
    env = {"BATCHSCORE_MIN_IDS": "4"} if where == "env" else {}
    out = out_dir / "scores.csv"
    code, stdout, err = run_cli("score", *args, "-o", out, stdin=data, env=env)
    assert_one_line_error(code, stdout, err)
    assert err == (
        "batchscore: error: the input held 3 IDs, fewer than --min-ids 4 "
        "(an empty or truncated export upstream?)\n"
    )
    assert list(out_dir.iterdir()) == []  # no output, no state, no lock: nothing to resume

    code, _, err = run_cli(
        "score", *args, "-o", out, "--min-ids", "3", "--max-failed", "1", stdin=data, env=env
    )
    assert code == 0, err
    assert [row["id"] for row in read_output(out)] == ["C1", "C2", "C3"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "accounts.csv",
            b"id,segment\n" + b",gold\n" * 40,
            "every one of the 40 rows of the input has an empty 'id' column; "
            "pass --id-column with the column that holds the ID",
        ),
        (
            "ids.txt",
            b"".join(b"caf\xe9-%d\n" % n for n in range(1500)),
            "every one of the first 1,000 lines is not UTF-8 (a Latin-1 or Windows-1252 export?); "
            "convert the file, e.g. with iconv -f WINDOWS-1252 -t UTF-8",
        ),
        (
            "ids.txt",
            "C1\nC2\n".encode("utf-16"),
            "the input is UTF-16 (it starts with a UTF-16 byte order mark); convert it to UTF-8 "
            "first, e.g. iconv -f UTF-16 -t UTF-8",
        ),
    ],
)
def test_an_input_whose_every_row_fails_alike_is_exit_2_naming_the_cause(
    run_cli: RunCli, id_store: IdStore, out_dir: Path, name: str, content: bytes, message: str
) -> None:
    ids = out_dir.parent / name
    ids.write_bytes(content)
    code, stdout, err = run_cli("score", ids, "-c", id_store.config_path, "-o", out_dir / "s.csv")
    assert_one_line_error(code, stdout, err)
    assert err == f"batchscore: error: {message}\n"
    assert list(out_dir.iterdir()) == []


def test_every_id_unknown_is_still_a_run_that_exits_3(run_cli: RunCli, id_store: IdStore) -> None:
    stdin = b"".join(b"NOPE-%d\n" % n for n in range(1500))
    code, _, err = run_cli("score", "-c", id_store.config_path, stdin=stdin)
    assert code == 3, err
    assert "read 1,500 IDs, scored 0, failed 1,500" in err
    assert "first 5 failed IDs:\n  line 1  NOPE-0  not_found (features)\n" in err
    assert "header" not in err


def test_a_bad_config_value_names_the_key_and_the_file(
    run_cli: RunCli, id_store: IdStore, tmp_path: Path
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(id_store.config_path.read_text() + "\n[fetch]\nconcurrency = 0\n")
    code, out, err = run_cli("score", "-c", config, stdin=b"C1\n")
    assert_one_line_error(code, out, err)
    assert err == (
        f"batchscore: error: [fetch] concurrency = 0 in {config} must be at least 1, or auto\n"
    )
    code, out, err = run_cli(
        "score", "-c", id_store.config_path, stdin=b"C1\n", env={"BATCHSCORE_CONCURRENCY": "0"}
    )
    assert err == "batchscore: error: BATCHSCORE_CONCURRENCY=0 must be at least 1, or auto\n"


def test_the_readme_model_info_sample_is_what_the_command_prints(run_cli: RunCli) -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("$ batchscore model-info sample_data/model.txt\n", 1)[1]
    sample = block.split("```", 1)[0].splitlines()
    shown = [line for line in sample if line.strip() != "..."]
    assert len(shown) >= 8  # the header lines and some features
    code, out, err = run_cli("model-info", "sample_data/model.txt", cwd=ROOT)
    assert code == 0, err
    printed = out.decode().splitlines()
    assert shown == printed[: len(shown)]
