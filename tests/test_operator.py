"""An operator's night (issue 22): what cron, a dashboard and an on-call reader see.

Each test runs the real command as the README shows it and checks what its reader would.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import pty
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchscore.progress import LogProgress
from batchscore.report import RunStats
from conftest import ROOT, SAMPLE_CONFIG, RunCli, batchscore_command, read_output
from featureserver import Faults, FeatureServer
from test_http_source import tls_server  # noqa: F401 - a fixture, shared

NIGHTLY = ROOT / "configs" / "nightly.toml"


def nightly_folder(tmp_path: Path) -> Path:
    """A folder laid out like the README's cron line expects: the sample data beside an out/."""
    (tmp_path / "sample_data").symlink_to(ROOT / "sample_data")
    (tmp_path / "out").mkdir()
    return tmp_path


def test_the_same_cron_command_run_again_keeps_the_nights_figures(
    tmp_path: Path, run_cli: RunCli
) -> None:
    folder = nightly_folder(tmp_path)
    cron = ("score", "sample_data/ids.txt", "-c", NIGHTLY, "--resume")
    first = run_cli(*cron, cwd=folder)
    assert first.returncode == 0, first.stderr
    report = folder / "out" / "report-latest.json"
    metrics = folder / "out" / "batchscore.prom"
    night = json.loads(report.read_text())
    night_metrics = metrics.read_text()
    assert night["scored"] == 5000 and night["noop"] is False
    assert "batchscore_noop 0\n" in night_metrics

    again = run_cli(*cron, cwd=folder)
    assert again.returncode == 0, again.stderr
    assert "complete already" in again.stderr
    body = json.loads(report.read_text())
    assert body["noop"] is True and body["noop_at"] >= night["ended_at"]

    # Every figure is the real run's: not data_quality.rows 0, latency {} or 0 IDs/s.
    def figures(report: dict[str, object]) -> dict[str, object]:
        return {k: v for k, v in report.items() if k not in ("noop", "noop_at")}

    assert figures(body) == figures(night)
    assert body["data_quality"]["rows"] == 5000
    assert body["latency_seconds"]["features"]["requests"] > 0
    assert body["ids_per_second"] > 0
    text = metrics.read_text()
    assert "batchscore_noop 1\n" in text
    assert text.replace("batchscore_noop 1\n", "batchscore_noop 0\n") == night_metrics


def test_the_report_says_which_files_when_where_and_which_batchscore(
    tmp_path: Path, run_cli: RunCli
) -> None:
    folder = nightly_folder(tmp_path)
    result = run_cli("score", "sample_data/ids.txt", "-c", NIGHTLY, "--resume", cwd=folder)
    assert result.returncode == 0, result.stderr
    body = json.loads((folder / "out" / "report-latest.json").read_text())
    assert body["input"] == str(folder / "sample_data" / "ids.txt")
    day = dt.date.today().isoformat()
    assert body["output"] == str(folder / "out" / f"scores-{day}.csv.gz")
    assert body["errors"] == str(folder / "out" / f"scores-{day}.csv.gz.errors.jsonl")
    started = dt.datetime.fromisoformat(body["started_at"])
    ended = dt.datetime.fromisoformat(body["ended_at"])
    assert started.tzinfo is not None and ended.tzinfo is not None
    assert started <= ended <= dt.datetime.now(dt.UTC)
    assert body["host"] == socket.gethostname()
    version = run_cli("--version").stdout.decode().split()[-1]
    assert body["batchscore_version"] == version


def test_a_run_refused_at_the_start_still_says_when_and_where(
    tmp_path: Path, run_cli: RunCli
) -> None:
    folder = nightly_folder(tmp_path)
    result = run_cli("score", "missing.txt", "-c", NIGHTLY, "--report", "r.json", cwd=folder)
    assert result.returncode == 2
    body = json.loads((tmp_path / "r.json").read_text())
    assert body["exit_code"] == 2
    assert body["input"] == str(tmp_path / "missing.txt")
    assert dt.datetime.fromisoformat(body["ended_at"]).tzinfo is not None
    assert body["host"] == socket.gethostname()


STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d ")


def default_environ() -> dict[str, str]:
    """The environment of a user who set no batchscore variable."""
    return {k: v for k, v in os.environ.items() if not k.startswith("BATCHSCORE_")}


def as_a_user(*args: str) -> subprocess.CompletedProcess[bytes]:
    """The command run from the project's folder, off a terminal, with no batchscore variable
    set (so its lines are stamped as in a cron log)."""
    return subprocess.run(
        [*batchscore_command(), *args],
        capture_output=True,
        cwd=ROOT,
        env=default_environ(),
        check=False,
        timeout=60,
    )


def test_in_a_cron_log_every_line_starts_with_the_time(tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    args = ["score", "sample_data/ids.txt", "-c", str(SAMPLE_CONFIG), "-o", str(out)]
    result = as_a_user(*args, "--progress-interval", "0.01", "--batch-size", "64")
    assert result.returncode == 3  # the sample's 10 unknown IDs
    lines = result.stderr.decode().splitlines()
    assert any(" done, " in line for line in lines), lines  # progress
    assert any("read 5,010 IDs" in line for line in lines)  # summary
    assert any(line.endswith("raise the allowance if they are expected") for line in lines)
    unstamped = [line for line in lines if not STAMP.match(line)]
    assert unstamped == []
    first = dt.datetime.fromisoformat(lines[0].split(" ")[0])
    assert abs((dt.datetime.now(dt.UTC) - first).total_seconds()) < 60

    refused = as_a_user(*args)  # the output exists now: the one error line is stamped too
    assert refused.returncode == 2
    (line,) = refused.stderr.decode().splitlines()
    assert STAMP.match(line) and line[STAMP.match(line).end() :].startswith("batchscore: error:")

    plain = as_a_user(*args, "--timestamps", "never")
    assert plain.stderr.decode().startswith("batchscore: error: ")


@pytest.mark.parametrize("bad", [["--concurrency", "0"], ["-c", "BAD_CONFIG"]])
def test_timestamps_never_holds_for_an_error_in_the_settings(
    tmp_path: Path, bad: list[str]
) -> None:
    """A bad flag or config key (where journald stamps lines itself) was stamped all the same:
    the flag was only read once the settings had been, and they failed."""
    config = tmp_path / "bad.toml"
    config.write_text(SAMPLE_CONFIG.read_text() + "\n[input]\ndedup = true\n")
    args = [str(config) if a == "BAD_CONFIG" else a for a in bad]
    result = as_a_user("score", "sample_data/ids.txt", *args, "--timestamps", "never")
    assert result.returncode == 2
    (line,) = result.stderr.decode().splitlines()
    assert line.startswith("batchscore: error: "), line


def test_on_a_terminal_the_screen_is_left_as_it_was(tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    out = tmp_path / "scores.csv"
    args = ["score", "sample_data/ids.txt", "-c", str(SAMPLE_CONFIG), "-o", str(out)]
    proc = subprocess.Popen(
        [*batchscore_command(), *args, "--max-failed", "100"],
        stderr=follower,
        stdout=subprocess.DEVNULL,
        cwd=ROOT,
        env={**default_environ(), "COLUMNS": "120"},
    )
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    text = screen.decode("utf-8", "replace")
    assert "read 5,010 IDs" in text
    assert not any(STAMP.match(line) for line in text.splitlines())


def down_config(tmp_path: Path, url: str, timeout: float = 2.0) -> Path:
    config = tmp_path / "down.toml"
    config.write_text(
        f'[model]\npath = "{ROOT / "sample_data" / "model.txt"}"\n'
        f'[[sources]]\nname = "profile"\nkind = "http"\nurl = "{url}"\n'
        f'features_path = "features"\ntimeout = {timeout}\n'
        "[fetch]\ndown_after = 3\nretries = 1\n"
    )
    return config


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1:{closed}", "127.0.0.1:{closed}: connection refused"),
        ("127.0.0.1:{silent}", "127.0.0.1:{silent}: timed out after 0.3 s"),
        ("no-such-host.invalid:8080", "no-such-host.invalid:8080: name not resolved"),
    ],
)
def test_a_source_that_cannot_be_reached_says_where_and_why(
    tmp_path: Path, run_cli: RunCli, host: str, reason: str
) -> None:
    with socket.socket() as closed, socket.socket() as silent:
        closed.bind(("127.0.0.1", 0))
        ports = {"closed": closed.getsockname()[1]}
        closed.close()  # nothing listens there now
        silent.bind(("127.0.0.1", 0))
        silent.listen(100)  # connections complete in the backlog; no answer ever comes
        ports["silent"] = silent.getsockname()[1]
        where = host.format(**ports)
        url = f"http://opuser:s3cretpw@{where}/features/{{id}}"
        config = down_config(tmp_path, url, timeout=0.3)
        ids = b"".join(f"C{n:06d}\n".encode() for n in range(1, 21))
        result = run_cli("score", "-", "-c", config, "-o", tmp_path / "o.csv", stdin=ids)
        debug = run_cli("score", "-", "-c", config, "-o", tmp_path / "d.csv", "--debug", stdin=ids)
    assert result.returncode == 4, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("batchscore: error: source 'profile' failed 3 requests in a row")
    assert reason.format(**ports) in last
    assert reason.format(**ports) in debug.stderr.split("attempt 1 failed", 1)[1].splitlines()[0]
    for text in (result.stderr, debug.stderr):
        assert "s3cretpw" not in text and "opuser" not in text


def test_check_with_ids_prints_its_whole_table_when_a_source_is_down(
    tmp_path: Path, run_cli: RunCli
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    config = down_config(tmp_path, f"http://127.0.0.1:{port}/features/{{id}}")
    with config.open("a") as f:  # a second source that works: its line must still show
        f.write(
            f'[[sources]]\nname = "features"\nkind = "sqlite"\n'
            f'path = "{ROOT / "sample_data" / "features.db"}"\n'
            'table = "customer_features"\nkey = "customer_id"\n'
        )
    result = run_cli("check", "-c", config, ROOT / "sample_data" / "ids.txt", "--sample", "10")
    assert result.returncode == 4, result.stderr
    table = result.stdout.decode().splitlines()
    down = next(line for line in table if line.startswith("source   profile"))
    assert (
        f"UNREACHABLE: 3 requests in a row failed (last: connect_error: 127.0.0.1:{port}: "
        "connection refused)" in down
    )
    assert any(line.startswith("source   features (sqlite): reachable") for line in table)
    assert table[-1].startswith("FAILED   a source is unreachable")
    assert result.stderr == ""


def test_one_of_a_kind_is_said_in_the_singular(tmp_path: Path, run_cli: RunCli) -> None:
    result = run_cli(
        "score",
        "-",
        "-c",
        SAMPLE_CONFIG,
        "-o",
        tmp_path / "s.csv",
        stdin=b"C000001\nC999001\n",
        cwd=ROOT,
    )
    assert result.returncode == 3
    lines = result.stderr.splitlines()
    assert lines[0].startswith("read 2 IDs, scored 1, failed 1 in")
    assert any(line.startswith("source features: 1 request, latency") for line in lines)
    assert f"1 ID was not scored; see {tmp_path / 's.csv.errors.jsonl'}" in lines
    assert lines[-1] == (
        "exit 3: 1 failed ID is more than --max-failed 0 allows; raise the allowance if it is "
        "expected"
    )
    refused = run_cli(
        "score",
        "-",
        "-c",
        SAMPLE_CONFIG,
        "-o",
        tmp_path / "t.csv",
        "--min-ids",
        "2",
        stdin=b"C000001\n",
        cwd=ROOT,
    )
    assert "the input held 1 ID, fewer than --min-ids 2" in refused.stderr


# -- the progress display -------------------------------------------------------------------------

COLOURS = re.compile(r"\x1b\[[0-9;]*m")
MOVES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


def http_config(tmp_path: Path, url: str) -> Path:
    config = tmp_path / "http.toml"
    config.write_text(
        f'[model]\npath = "{ROOT / "sample_data" / "model.txt"}"\n'
        f'[[sources]]\nname = "profile"\nkind = "http"\nurl = "{url}/features/{{id}}"\n'
        'features_path = "features"\ntimeout = 5.0\n[fetch]\nconcurrency = 16\n'
    )
    return config


@pytest.fixture
def flaky_server() -> Iterator[FeatureServer]:
    """The sample's features, 20 ms a request, 10% of answers a 503 (retried)."""
    server = FeatureServer.from_sqlite(
        ROOT / "sample_data" / "features.db",
        "customer_features",
        "customer_id",
        faults=Faults(latency=0.02, p_503=0.10, seed=7),
    )
    with server as srv:
        yield srv


def test_log_lines_label_the_times_and_show_retries_as_they_happen(
    tmp_path: Path, run_cli: RunCli, flaky_server: FeatureServer
) -> None:
    config = http_config(tmp_path, flaky_server.url)
    ids = b"".join((ROOT / "sample_data" / "ids.txt").read_bytes().splitlines(True)[:1500])
    (tmp_path / "ids.txt").write_bytes(ids)
    result = run_cli(
        "score",
        "ids.txt",
        "-c",
        config,
        "-o",
        "s.csv",
        "--max-failed",
        "100",
        "--progress-interval",
        "0.2",
        "--batch-size",
        "100",
    )
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stderr.splitlines() if " done, " in line]
    assert progress, result.stderr
    shape = re.compile(
        r"batchscore: [\d,]+/1,500 done, [\d,]+ failed(, [\d,]+ retr(y|ies))?, [\d,]+ IDs/s, "
        r"elapsed \d+:\d\d:\d\d, remaining (\d+:\d\d:\d\d|\?)$"
    )
    assert all(shape.match(line) for line in progress), progress
    assert any(re.search(r", [\d,]+ retr(y|ies), ", line) for line in progress), progress


def test_after_a_resume_the_rate_counts_only_this_runs_work() -> None:
    stats = RunStats()
    stats.restore({"read": 40_000, "scored": 40_000, "failed": {}, "skipped": 0})
    stats.total = 80_000
    stats.started -= 10.0  # this run has run 10 s ...
    stats.read += 10_000  # ... and finished 10,000 IDs: 1,000/s, whatever came before
    stats.scored += 10_000
    out = io.StringIO()
    LogProgress(out, interval=0.0).update(stats)
    line = out.getvalue()
    assert "50,000/80,000 done" in line
    assert re.search(r" (99\d|1,00\d) IDs/s", line), line  # not 5,000/s
    assert "remaining 0:00:3" in line  # 30,000 left at 1,000/s, not 6 s


def run_on_a_terminal(
    args: list[str], stdin: bytes | None, *, interrupt_after: str | None = None
) -> tuple[int, str]:
    """Run the command with stderr on a terminal (a pty); ``interrupt_after``: send SIGINT
    once the screen shows that text.  Returns the status and the screen's text."""
    import select
    import signal

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [*batchscore_command(), *args],
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=follower,
        cwd=ROOT,
        env={**default_environ(), "COLUMNS": "150"},
    )
    os.close(follower)
    if stdin is not None:
        assert proc.stdin is not None
        proc.stdin.write(stdin)
        proc.stdin.close()
    screen = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        assert ready, "the terminal went quiet for a minute"
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        screen += chunk
        if interrupt_after is not None and interrupt_after.encode() in screen:
            proc.send_signal(signal.SIGINT)
            interrupt_after = None
    os.close(leader)
    text = COLOURS.sub("", screen.decode("utf-8", "replace"))
    return proc.wait(timeout=60), MOVES.sub("\n", text)


def test_on_stdin_with_no_total_a_spinner_counts_instead_of_a_bar(tmp_path: Path) -> None:
    ids = (ROOT / "sample_data" / "ids.txt").read_bytes()
    status, screen = run_on_a_terminal(
        [
            "score",
            "-",
            "-c",
            str(SAMPLE_CONFIG),
            "-o",
            str(tmp_path / "s.csv"),
            "--max-failed",
            "100",
        ],
        ids,
    )
    assert status == 0, screen
    shown = [line for line in screen.splitlines() if line.startswith("scoring")]
    assert shown, screen
    assert any(re.search(r"[\d,]+ done [\d,]+ IDs/s", line) for line in shown), shown
    assert any("5,010 done" in line for line in shown), shown
    assert not any("?" in line or "━" in line for line in shown), shown
    assert any("elapsed 0:00:0" in line for line in shown), shown


def test_ctrl_c_says_stopping_on_its_own_line_and_the_display_says_so(
    tmp_path: Path, flaky_server: FeatureServer
) -> None:
    flaky_server.faults.latency = 0.2  # slow enough to be caught in the middle
    config = http_config(tmp_path, flaky_server.url)
    status, screen = run_on_a_terminal(
        [
            "score",
            "sample_data/ids.txt",
            "-c",
            str(config),
            "-o",
            str(tmp_path / "s.csv"),
            "--batch-size",
            "16",
        ],
        None,
        interrupt_after="scoring",
    )
    assert status == 130, screen
    lines = screen.splitlines()
    assert "batchscore: stopping: finishing requests in flight (again to stop at once)" in lines, (
        lines
    )
    assert any(line.startswith("stopping ") and "elapsed" in line for line in lines), lines


# -- input that is almost right -------------------------------------------------------------------


def test_a_misspelt_keep_column_gets_the_nearest_name(tmp_path: Path, run_cli: RunCli) -> None:
    (tmp_path / "ids.csv").write_text("id,segment\nC000001,a\n")
    result = run_cli(
        "score", tmp_path / "ids.csv", "-c", SAMPLE_CONFIG, "--keep", "segmnt", cwd=ROOT
    )
    assert result.returncode == 2
    assert result.stderr == (
        "batchscore: error: the input CSV has no column 'segmnt' (did you mean 'segment'?) "
        "(columns: id, segment); pass --keep with one of those\n"
    )
    upper = run_cli(
        "score", tmp_path / "ids.csv", "-c", SAMPLE_CONFIG, "--id-column", "ID", cwd=ROOT
    )
    assert "no column 'ID' (did you mean 'id'?)" in upper.stderr
    assert "pass --id-column with one of those" in upper.stderr


def test_a_headerless_tsv_is_said_to_be_one_and_no_value_is_offered_as_a_column(
    tmp_path: Path, run_cli: RunCli
) -> None:
    (tmp_path / "ids.tsv").write_text("C000858\t3\nC000859\t4\n")
    result = run_cli("score", tmp_path / "ids.tsv", "-c", SAMPLE_CONFIG, cwd=ROOT)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "the input TSV's first line (C000858, 3) looks like data, not a header" in line
    assert "pass --no-header --id-column 1 (its columns are then numbered from 1" in line
    assert "--id-column C000858" not in line and "one of those" not in line

    # Following the old advice, --id-column C000858, ate the first customer as a header.
    taken = run_cli(
        "score",
        tmp_path / "ids.tsv",
        "-c",
        SAMPLE_CONFIG,
        "--id-column",
        "C000858",
        "-o",
        tmp_path / "s.csv",
        cwd=ROOT,
    )
    assert taken.returncode == 2
    assert "--id-column C000858 is one of its values, and that row would not be scored" in (
        taken.stderr
    )
    assert "pass --no-header --id-column 1 " in taken.stderr
    assert not (tmp_path / "s.csv").exists()


def headerless(tmp_path: Path, suffix: str) -> tuple[Path, Path]:
    """The sample's 20 customers as a CSV or TSV with its header line, and without it."""
    lines = (ROOT / "sample_data" / "customers.csv").read_text().splitlines()
    if suffix == ".tsv":
        lines = [line.replace(",", "\t") for line in lines]
    with_header, without = tmp_path / f"with{suffix}", tmp_path / f"without{suffix}"
    with_header.write_text("".join(f"{line}\n" for line in lines))
    without.write_text("".join(f"{line}\n" for line in lines[1:]))
    return with_header, without


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_a_file_without_a_header_line_scores_every_row_under_no_header(
    tmp_path: Path, run_cli: RunCli, suffix: str
) -> None:
    """``--no-header``: the first line is a row; columns are numbered as ``cut -f`` does, and
    a column kept by number is named by it.  The scores are those of the file with its header."""
    with_header, without = headerless(tmp_path, suffix)
    named = run_cli(
        "score",
        with_header,
        "-c",
        SAMPLE_CONFIG,
        "--id-column",
        "customer_id",
        "--keep",
        "region",
        "-o",
        tmp_path / "named.jsonl",
        cwd=ROOT,
    )
    assert named.returncode == 0, named.stderr
    numbered = run_cli(
        "score",
        without,
        "-c",
        SAMPLE_CONFIG,
        "--no-header",
        "--keep",
        "6",
        "-o",
        tmp_path / "numbered.jsonl",
        cwd=ROOT,
    )
    assert numbered.returncode == 0, numbered.stderr
    rows = read_output(tmp_path / "numbered.jsonl")
    expected = read_output(tmp_path / "named.jsonl")
    assert len(rows) == 20 and rows[0]["id"] == "C000858"  # the first line is scored
    assert [(r["id"], r["score"], r["6"]) for r in rows] == [
        (r["id"], r["score"], r["region"]) for r in expected
    ]
    assert list(rows[0]) == ["id", "score", "6"]


def test_following_the_refusal_of_a_headerless_file_scores_every_row(
    tmp_path: Path, run_cli: RunCli
) -> None:
    """The refusal (above) says what to pass; passing it loses no row, the first one neither."""
    _, without = headerless(tmp_path, ".tsv")
    refused = run_cli("score", without, "-c", SAMPLE_CONFIG, cwd=ROOT)
    assert refused.returncode == 2
    (line,) = refused.stderr.splitlines()
    assert "the input TSV's first line (C000858, 1005, 1228, 30, ...) looks like data" in line
    assert "pass --no-header --id-column 1 (its columns are then numbered from 1" in line

    followed = run_cli(
        "score",
        without,
        "-c",
        SAMPLE_CONFIG,
        "--no-header",
        "--id-column",
        "1",
        "-o",
        tmp_path / "s.csv",
        cwd=ROOT,
    )
    assert followed.returncode == 0, followed.stderr
    scored = [row["id"] for row in read_output(tmp_path / "s.csv")]
    assert scored == [line.split("\t")[0] for line in without.read_text().splitlines()]


def test_no_header_comes_from_the_config_or_the_environment_too(
    tmp_path: Path, run_cli: RunCli
) -> None:
    _, without = headerless(tmp_path, ".csv")
    config = tmp_path / "c.toml"  # the sample's paths are relative to the cwd: ROOT
    config.write_text(SAMPLE_CONFIG.read_text() + "\n[input]\nheader = false\n")
    for args, env in (
        (("-c", config), {}),
        (("-c", SAMPLE_CONFIG), {"BATCHSCORE_HEADER": "0"}),
    ):
        result = run_cli("score", without, *args, env=env, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        assert len(read_output(result.stdout)) == 20
    # A flag wins over both.
    result = run_cli("score", without, "-c", config, "--header", cwd=ROOT)
    assert result.returncode == 2 and "looks like data, not a header" in result.stderr


def test_no_header_is_part_of_what_a_resume_must_match_and_with_shard_and_dedupe(
    tmp_path: Path, run_cli: RunCli
) -> None:
    with_header, without = headerless(tmp_path, ".csv")
    out = tmp_path / "s.csv"
    first = run_cli(
        "score",
        with_header,
        "-c",
        SAMPLE_CONFIG,
        "--id-column",
        "customer_id",
        "-o",
        out,
        "--resume",
        cwd=ROOT,
    )
    assert first.returncode == 0, first.stderr
    # The same path read without its header line would score the header as an ID.
    other = run_cli(
        "score", with_header, "-c", SAMPLE_CONFIG, "--no-header", "-o", out, "--resume", cwd=ROOT
    )
    assert other.returncode == 2
    assert "used another --header (None, now False)" in other.stderr

    ids = [line.split(",")[0] for line in without.read_text().splitlines()]
    twice = tmp_path / "twice.csv"
    twice.write_text(without.read_text() * 2)
    shards = [
        run_cli(
            "score",
            twice,
            "-c",
            SAMPLE_CONFIG,
            "--no-header",
            "--dedupe",
            "--shard",
            f"{k}/2",
            cwd=ROOT,
        )
        for k in (0, 1)
    ]
    assert all(shard.returncode == 0 for shard in shards), [s.stderr for s in shards]
    scored = [row["id"] for shard in shards for row in read_output(shard.stdout)]
    assert sorted(scored) == sorted(ids)  # each once, the first line's too


def test_no_header_on_json_lines_is_what_they_are_and_header_is_refused(
    run_cli: RunCli,
) -> None:
    line = b'{"id": "C000858"}\n'
    accepted = run_cli(
        "score",
        "-",
        "--input-format",
        "jsonl",
        "-c",
        SAMPLE_CONFIG,
        "--no-header",
        stdin=line,
        cwd=ROOT,
    )
    assert accepted.returncode == 0, accepted.stderr
    assert [row["id"] for row in read_output(accepted.stdout)] == ["C000858"]
    refused = run_cli(
        "score",
        "-",
        "--input-format",
        "jsonl",
        "-c",
        SAMPLE_CONFIG,
        "--header",
        stdin=line,
        cwd=ROOT,
    )
    assert refused.returncode == 2
    assert "--header is for text, CSV or TSV input; JSON lines have no header line" in (
        refused.stderr
    )


def test_no_header_on_text_is_its_default_and_silences_the_header_warning(
    run_cli: RunCli,
) -> None:
    stdin = b"customer_id\nC000858\n"
    warned = run_cli("score", "-", "-c", SAMPLE_CONFIG, stdin=stdin, cwd=ROOT)
    assert "looks like a header" in warned.stderr
    said = run_cli("score", "-", "-c", SAMPLE_CONFIG, "--no-header", stdin=stdin, cwd=ROOT)
    assert said.returncode == 3  # customer_id is an ID no source knows, as the user said
    assert "looks like a header" not in said.stderr
    assert said.stdout == warned.stdout


def test_a_batchscore_variable_that_is_no_setting_warns_with_the_nearest(
    tmp_path: Path, run_cli: RunCli
) -> None:
    result = run_cli(
        "score",
        "-",
        "-c",
        SAMPLE_CONFIG,
        "-o",
        tmp_path / "s.csv",
        stdin=b"C000001\n",
        env={"BATCHSCORE_CONCURENCY": "8"},
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0] == (
        "batchscore: warning: BATCHSCORE_CONCURENCY is not a batchscore setting (did you mean "
        "'BATCHSCORE_CONCURRENCY'?); it is ignored"
    )


def test_an_empty_input_points_to_min_ids(tmp_path: Path, run_cli: RunCli) -> None:
    result = run_cli("score", "-", "-c", SAMPLE_CONFIG, "-o", tmp_path / "s.csv", cwd=ROOT)
    assert result.returncode == 0
    assert result.stderr.splitlines()[-1] == (
        "batchscore: warning: the input held no IDs (an empty export upstream?); pass "
        "--min-ids N to make an input with fewer than N IDs exit 2"
    )


# -- smaller things -------------------------------------------------------------------------------


def test_resume_with_other_columns_lists_the_old_and_the_new(
    tmp_path: Path, run_cli: RunCli
) -> None:
    args = ("score", "-", "-c", SAMPLE_CONFIG, "-o", tmp_path / "s.csv", "--resume")
    first = run_cli(*args, stdin=b"C000001\n", cwd=ROOT)
    assert first.returncode == 0, first.stderr
    again = run_cli(*args, "--add", "model_version", stdin=b"C000001\n", cwd=ROOT)
    assert again.returncode == 2
    assert (
        "used another set of output columns (was id, score, now id, score, model_version: "
        "this run adds model_version)" in again.stderr
    )


def test_score_help_shows_the_exit_codes_and_that_resume_is_safe(run_cli: RunCli) -> None:
    text = run_cli("score", "--help").stdout.decode()
    assert "Usage: batchscore score [OPTIONS] [IDS]\n" in text
    codes = text.split("Exit status:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line.split()[0] for line in codes] == [
        "0",
        "1",
        "2",
        "3",
        "4",
        "5",
        "74",
        "75",
        "130",
        "141",
    ]
    assert "143 terminated (SIGTERM)" in text
    resume = " ".join(text.split("--resume ", 2)[2].split("--date", 1)[0].split())
    assert resume.startswith("Continue a stopped run. Safe on every run")
    explain = " ".join(text.split("--explain K", 1)[1].split("--output", 1)[0].split())
    assert "times slower" in explain


def test_help_has_no_odd_placeholders_and_model_info_never_suggests_m(run_cli: RunCli) -> None:
    helps = {cmd: run_cli(cmd, "--help").stdout.decode() for cmd in ("score", "check")}
    helps["model-info"] = run_cli("model-info", "--help").stdout.decode()
    for text in helps.values():
        assert "[[" not in text and "{" not in text.split("\n", 1)[0]
        assert "<str>" not in text and "<list[str]>" not in text
    assert helps["model-info"].startswith("Usage: batchscore model-info [OPTIONS] MODEL...\n")
    assert helps["check"].startswith("Usage: batchscore check [OPTIONS] [IDS]\n")
    missing = run_cli("model-info", "nosuch.txt")
    assert missing.returncode == 2
    assert missing.stderr == (
        "batchscore: error: model file nosuch.txt does not exist; check the MODEL argument\n"
    )


def test_check_estimates_a_run_with_explain_at_its_real_cost(
    tmp_path: Path, run_cli: RunCli
) -> None:
    config = tmp_path / "explain.toml"
    config.write_text(SAMPLE_CONFIG.read_text().replace("[score]\n", "[score]\nexplain = 3\n"))
    result = run_cli("check", "-c", config, "sample_data/ids.txt", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    eta = next(line for line in result.stdout.decode().splitlines() if line.startswith("eta"))
    assert "bound by scoring with --explain" in eta


def test_from_errors_retries_only_the_reasons_asked_for(tmp_path: Path, run_cli: RunCli) -> None:
    night = run_cli(
        "score", "sample_data/ids.txt", "-c", SAMPLE_CONFIG, "-o", tmp_path / "s.csv", cwd=ROOT
    )
    assert night.returncode == 3  # the sample's 10 unknown IDs
    errors = tmp_path / "s.csv.errors.jsonl"
    records = [json.loads(line) for line in errors.read_text().splitlines()]
    for n, record in enumerate(records[:3]):  # three IDs the service failed to answer
        record.update(id=f"C{n + 1:06d}", reason="http_503", status=503, attempts=5)
    errors.write_text("".join(json.dumps(r) + "\n" for r in records))

    retry = run_cli(
        "score",
        "--from-errors",
        errors,
        "--reason",
        "http_503",
        "-c",
        SAMPLE_CONFIG,
        "-o",
        tmp_path / "retry.csv",
        "--report",
        tmp_path / "r.json",
        cwd=ROOT,
    )
    assert retry.returncode == 0, retry.stderr
    rows = (tmp_path / "retry.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["id", "C000001", "C000002", "C000003"]
    assert (
        "left out 7 records of the errors file, of reasons --reason did not ask for: "
        "not_found 7" in retry.stderr.splitlines()
    )
    assert json.loads((tmp_path / "r.json").read_text())["left_out_by_reason"] == {"not_found": 7}
    alone = run_cli("score", "-", "--reason", "http_503", "-c", SAMPLE_CONFIG, cwd=ROOT)
    assert alone.returncode == 2 and "add --from-errors PATH" in alone.stderr


def test_the_readme_tour_can_be_followed_exactly_as_written(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    tour = readme.split("## A tour", 1)[1].split("## Running it from cron", 1)[0]
    commands = [
        line.removeprefix("$ ")
        for line in tour.splitlines()
        if line.startswith(("$ batchscore", "cut ", "batchscore "))
    ]
    assert len(commands) >= 4, commands
    for name in ("sample_data", "configs"):  # a clone's top folder, as the tour assumes
        (tmp_path / name).symlink_to(ROOT / name)
    path = f"{Path(batchscore_command()[0]).parent}:{os.environ['PATH']}"
    statuses = []
    for command in commands:
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            capture_output=True,
            cwd=tmp_path,
            env={**default_environ(), "PATH": path},
            check=False,
            timeout=120,
        )
        statuses.append(done.returncode)
        assert "already exists" not in done.stderr.decode(), command
        assert "No such file" not in done.stderr.decode(), command
    # The first scores the sample (its 10 unknown IDs: exit 3, as the tour shows); the rest
    # succeed (the pipeline ends in head, which may close the pipe: 141 is the tour's own).
    assert statuses[0] == 3 and all(s in (0, 141) for s in statuses[1:]), (commands, statuses)
    written = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    for name in written:
        assert any(
            rule.startswith("/") and Path(name).match(rule.lstrip("/")) for rule in ignored
        ), name


def test_timestamps_always_on_a_terminal_gives_stamped_log_lines(tmp_path: Path) -> None:
    status, screen = run_on_a_terminal(
        [
            "score",
            "sample_data/ids.txt",
            "-c",
            str(SAMPLE_CONFIG),
            "-o",
            str(tmp_path / "s.csv"),
            "--max-failed",
            "100",
            "--timestamps",
            "always",
        ],
        None,
    )
    assert status == 0, screen
    lines = [line for line in screen.splitlines() if line.strip()]
    assert lines and all(STAMP.match(line) for line in lines), lines
    assert not any("━" in line for line in lines)


def test_a_certificate_not_accepted_is_said_once_with_where_and_why(
    tmp_path: Path,
    run_cli: RunCli,
    tls_server: tuple[str, Path],  # noqa: F811 - the fixture imported above
) -> None:
    url, _ = tls_server
    config = down_config(tmp_path, f"{url}/features/{{id}}")
    ids = b"".join(f"C{n:06d}\n".encode() for n in range(1, 21))
    result = run_cli("score", "-", "-c", config, "-o", tmp_path / "o.csv", stdin=ids)
    assert result.returncode == 3  # every ID failed, none retried: the run finished
    port = url.rsplit(":", 1)[1]
    said = [line for line in result.stderr.splitlines() if "TLS certificate" in line]
    assert said == [
        f"batchscore: WARNING batchscore.sources: source 'profile': tls_error: 127.0.0.1:{port}: "
        "TLS certificate not accepted (self-signed certificate)"
    ]


def test_an_id_column_for_a_plain_text_input_is_refused_instead_of_ignored(
    run_cli: RunCli,
) -> None:
    """Found by the hostile pass: ``printf 'C1,a' | batchscore score - --id-column 1`` scored
    the whole line "C1,a" as the ID (every one not found, exit 3); ``--keep`` there was
    already exit 2.  A CSV given as plain text is now said to be one, with the fix."""
    result = run_cli(
        "score", "-", "-c", SAMPLE_CONFIG, "--no-header", "--id-column", "1",
        stdin=b"C000858,basic\n", cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert "--id-column" in line and "plain text" in line and "--input-format csv" in line
    assert result.stdout == b""
    fixed = run_cli(
        "score", "-", "-c", SAMPLE_CONFIG, "--input-format", "csv", "--no-header",
        "--id-column", "1", stdin=b"C000858,basic\n", cwd=ROOT,
    )  # fmt: skip
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout.decode().splitlines()[1].startswith("C000858,")
