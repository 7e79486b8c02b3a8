"""An operator's night (issue 22): what cron, a dashboard and an on-call reader see.

Each test runs the real command as the README shows it and checks what its reader would.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
from pathlib import Path

from conftest import ROOT, RunCli

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
