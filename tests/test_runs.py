"""Runs that fail, stop or are stopped: the real process, its files and its exit status.

A run whose stdin we hold open waits for more IDs, so these tests can stop it at a known point
without racing a timer: feed some IDs, wait until the run has committed them (its state file
says so), then signal it, kill it, or start a second run beside it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLE_CONFIG, batchscore_command, clean_environ

IDS = (ROOT / "sample_data" / "ids.txt").read_bytes()
ID_LINES = IDS.splitlines(keepends=True)
ALLOW = ("--max-failed", "100")  # ids.txt holds 10 IDs the store does not have


def score_args(output: Path, *extra: str) -> list[str]:
    return [
        *batchscore_command(),
        "score",
        "-",
        "-c",
        str(SAMPLE_CONFIG),
        "-o",
        str(output),
        *ALLOW,
        *extra,
    ]


def run(
    args: list[str], stdin: bytes = IDS, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        args,
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        env=clean_environ(),
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """The output and errors file of an uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "scores.csv"
    result = run(score_args(out))
    assert result.returncode == 0, result.stderr
    return out.read_bytes(), Path(f"{out}.errors.jsonl").read_bytes()


class HeldRun:
    """A ``batchscore score -`` process whose stdin we feed by hand."""

    def __init__(self, output: Path, *extra: str) -> None:
        self.output = output
        self.proc = subprocess.Popen(
            score_args(output, *extra),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=clean_environ(),
            start_new_session=True,  # its own process group: our signals reach only it
        )
        self.fed = 0

    def feed(self, count: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"".join(ID_LINES[self.fed : self.fed + count]))
        self.proc.stdin.flush()
        self.fed += count

    def committed_mark(self) -> int:
        state = self.output.with_name(f".{self.output.name}.state")
        if not state.exists():
            return 0
        try:
            with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
                row = db.execute("SELECT lines FROM run").fetchone()
        except sqlite3.Error:
            return 0
        # Committed input lines are stored as [first, last] ranges; in input order the first
        # range starts at line 1 and ends at the mark.
        ranges = json.loads(row[0]) if row else []
        return int(ranges[0][1]) if ranges and ranges[0][0] <= 1 else 0

    def wait_committed(self, line: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.committed_mark() < line:
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            assert time.monotonic() < deadline, f"no commit up to line {line}"
            time.sleep(0.05)

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err.decode("utf-8", "replace")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.communicate(timeout=30)


@pytest.fixture
def held_runs() -> Iterator[list[HeldRun]]:
    runs: list[HeldRun] = []
    yield runs
    for held in runs:
        if held.proc.poll() is None:
            held.kill()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_commits_what_is_done_and_resume_finishes_identically(
    tmp_path: Path, held_runs: list[HeldRun], reference: tuple[bytes, bytes], sig: int, status: int
) -> None:
    out = tmp_path / "scores.csv"
    held = HeldRun(out)
    held_runs.append(held)
    held.feed(1500)
    held.wait_committed(1)
    held.proc.send_signal(sig)
    code, err = held.finish()
    assert code == status
    assert "Traceback" not in err
    assert "--resume" in err
    assert "scored" in err  # the summary is printed
    assert not out.exists(), "a stopped run must not leave a file at the final path"

    resumed = run(score_args(out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert b"resumed" in resumed.stderr
    assert out.read_bytes() == reference[0]
    assert Path(f"{out}.errors.jsonl").read_bytes() == reference[1]
    assert leftovers(tmp_path) == [".scores.csv.done", "scores.csv", "scores.csv.errors.jsonl"]


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_run_stopped_while_its_input_is_still_open_exits_with_the_signal_status(
    tmp_path: Path, held_runs: list[HeldRun], sig: int, status: int
) -> None:
    """``producer | batchscore score - ...`` where only batchscore is signalled (``kill PID``, a
    supervisor): the producer still holds the pipe open, and the run must stop all the same."""
    out = tmp_path / "scores.csv"
    held = HeldRun(out)
    held_runs.append(held)
    held.feed(300)
    held.wait_committed(1)
    held.proc.send_signal(sig)
    code = held.proc.wait(timeout=30)  # its stdin is still open
    _, err = held.finish()
    assert code == status, err
    assert "Fatal Python error" not in err and "Traceback" not in err
    assert "--resume" in err
    assert not out.exists()


def test_kill_9_at_random_points_then_resume_gives_each_id_exactly_once(
    tmp_path: Path, held_runs: list[HeldRun], reference: tuple[bytes, bytes]
) -> None:
    out = tmp_path / "scores.csv"
    rng = random.Random(7)
    mark = 0
    for _ in range(3):
        held = HeldRun(out, "--resume")
        held_runs.append(held)
        # Feed from the start (a resumed run skips what is committed) up to a random line, so
        # the run cannot finish; kill it once it has committed up to a random line of its own
        # (a state of the run, not a time).
        stop_at = rng.randrange(mark + 300, len(ID_LINES) - 1)
        held.feed(stop_at)
        held.wait_committed(rng.randint(mark + 1, stop_at))
        held.kill()
        assert not out.exists(), "no file at the final path before the run succeeds"
        mark = held.committed_mark()
    final = run(score_args(out, "--resume"))
    assert final.returncode == 0, final.stderr
    assert out.read_bytes() == reference[0]
    assert Path(f"{out}.errors.jsonl").read_bytes() == reference[1]


def test_leftover_state_needs_resume_or_overwrite(
    tmp_path: Path, held_runs: list[HeldRun], reference: tuple[bytes, bytes]
) -> None:
    out = tmp_path / "scores.csv"
    held = HeldRun(out)
    held_runs.append(held)
    held.feed(600)
    held.wait_committed(1)
    held.kill()

    again = run(score_args(out))
    assert again.returncode == 2
    message = again.stderr.decode()
    assert "--resume" in message and "--overwrite" in message
    assert len(message.strip().splitlines()) == 1

    fresh = run(score_args(out, "--overwrite"))
    assert fresh.returncode == 0, fresh.stderr
    assert out.read_bytes() == reference[0]


def test_resume_with_nothing_to_resume_just_runs(
    tmp_path: Path, reference: tuple[bytes, bytes]
) -> None:
    out = tmp_path / "scores.csv"
    result = run(score_args(out, "--resume"))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == reference[0]


def test_second_run_on_the_same_output_exits_75_naming_the_first(
    tmp_path: Path, held_runs: list[HeldRun], reference: tuple[bytes, bytes]
) -> None:
    out = tmp_path / "scores.csv"
    first = HeldRun(out)
    held_runs.append(first)
    first.feed(100)
    first.wait_committed(1)

    second = run(score_args(out, "--resume"), timeout=20)
    assert second.returncode == 75
    assert f"pid {first.proc.pid}" in second.stderr.decode()

    first.kill()  # the lock dies with its holder: the next run is not blocked
    third = run(score_args(out, "--resume"))
    assert third.returncode == 0, third.stderr
    assert out.read_bytes() == reference[0]


def test_closed_pipe_exits_141_without_a_message(tmp_path: Path) -> None:
    big = tmp_path / "ids.txt"
    big.write_bytes(IDS * 8)
    command = " ".join([*batchscore_command(), "score", str(big), "-c", str(SAMPLE_CONFIG), *ALLOW])
    result = subprocess.run(
        ["bash", "-c", f'{command} | head -3; echo "status ${{PIPESTATUS[0]}}" >&2'],
        capture_output=True,
        cwd=ROOT,
        env=clean_environ(),
        timeout=60,
        check=False,
    )
    assert result.stdout.decode().splitlines()[0] == "id,score"
    assert len(result.stdout.splitlines()) == 3
    assert result.stderr.decode().strip() == "status 141"


def test_full_disk_is_exit_74_in_one_line(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    result = run(score_args(Path("/dev/full"), "--quiet"))
    assert result.returncode == 74
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "disk is full" in lines[0]


def test_read_only_folder_is_exit_74() -> None:
    base = Path(tempfile.mkdtemp(prefix="batchscore-ro-"))  # world-traversable, unlike tmp_path
    try:
        base.chmod(0o755)
        folder = base / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        command = score_args(folder / "scores.csv", "--quiet")
        if os.geteuid() == 0:
            # root writes anywhere: run the command as nobody, if nobody can run it from here
            setpriv = shutil.which("setpriv")
            as_nobody = [
                setpriv or "setpriv",
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
            ]
            if setpriv is None or run([*as_nobody, command[0], "--version"]).returncode != 0:
                pytest.skip("running as root and cannot drop to nobody here")
            command = [*as_nobody, *command]
        result = run(command)
        assert result.returncode == 74, result.stderr
        message = result.stderr.decode().strip()
        assert len(message.splitlines()) == 1 and "Permission denied" in message
        assert leftovers(folder) == []
    finally:
        shutil.rmtree(base)


def test_corrupt_model_creates_nothing(tmp_path: Path) -> None:
    model = tmp_path / "model.txt"
    model.write_bytes(
        (ROOT / "sample_data" / "model.txt").read_bytes()[:2000] + b"\nend of trees\n"
    )
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = run(score_args(out_dir / "scores.csv", "-m", str(model)))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr.decode()
    assert leftovers(out_dir) == []


def test_quiet_success_prints_nothing(tmp_path: Path) -> None:
    result = run(score_args(tmp_path / "scores.csv", "--quiet"))
    assert result.returncode == 0
    assert result.stdout == b"" and result.stderr == b""


def test_report_and_metrics_tell_how_the_run_went(tmp_path: Path) -> None:
    import json

    report, metrics = tmp_path / "report.json", tmp_path / "batchscore.prom"
    out = tmp_path / "scores-{date}.csv"
    args = [*batchscore_command(), "score", "-", "-c", str(SAMPLE_CONFIG), "-o", str(out)]
    result = run([*args, "--report", str(report), "--metrics", str(metrics), "--quiet"])
    assert result.returncode == 3  # 10 unknown IDs and no allowance
    dated = tmp_path / f"scores-{time.strftime('%Y-%m-%d')}.csv"
    assert dated.exists()

    body = json.loads(report.read_text())
    assert body["exit_code"] == 3
    assert body["scored"] == 5000 and body["failed"] == 10
    assert body["failed_by_reason"] == {"not_found": 10}
    assert len(body["model_version"]) == 16 and body["config_fingerprint"]
    assert body["latency_seconds"]["features"]["p50"] > 0
    quality = body["data_quality"]["features"]
    assert set(quality) >= {"plan", "region", "nps_score"}
    assert 0.10 < quality["nps_score"]["missing_share"] < 0.17  # 13.7% NULL in the store
    assert quality["tenure_days"]["missing_share"] == 0
    assert all(0 <= q["out_of_range_share"] <= 1 for q in quality.values())

    text = metrics.read_text()
    assert "batchscore_ids_scored 5000\n" in text
    assert 'batchscore_ids_failed{reason="not_found"} 10\n' in text
    assert "# TYPE batchscore_exit_code gauge" in text
    assert not list(tmp_path.glob(".*.tmp*")), "metrics and report are written atomically"
