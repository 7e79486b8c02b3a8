"""The Prometheus textfile: every value exact, as the textfile collector will read it; the
summary's list of the first failed IDs."""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from pathlib import Path

import pytest

from batchscore.chunk import ErrorRecord
from batchscore.report import RunStats, summary_lines, write_metrics
from conftest import ROOT, SAMPLE_CONFIG, ScoreInProcess

# name{labels} value: the text exposition format's sample line (no timestamps are written).
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?P<labels>\{.*\})? (?P<value>\S+)$")
WORDS = {"NaN": math.nan, "+Inf": math.inf, "-Inf": -math.inf}


def parse_textfile(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, parsed as Prometheus does (Go's ParseFloat: exact)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, line
        raw = match["value"]
        value = WORDS[raw] if raw in WORDS else float(raw)
        samples[match["name"] + (match["labels"] or "")] = value
    return samples


def test_counters_and_the_timestamp_survive_exactly(tmp_path: Path) -> None:
    # "{:g}" kept six digits: 1,234,567 came back as 1,234,570, and the run's timestamp
    # (1.79612e+09) was off by over an hour, so no alert could use it.
    stats = RunStats(read=1_234_567, scored=1_234_560, retries=12_345_678_901)
    stats.failed = Counter({"not_found": 7})
    stats.seconds["fetch"] = 1234.5678901234567
    path = tmp_path / "batchscore.prom"
    before = time.time()
    write_metrics(str(path), stats, 3, {"model_version": "f43e807ca2550579"})
    after = time.time()
    text = path.read_text()
    samples = parse_textfile(text)
    assert samples["batchscore_ids_read"] == 1_234_567
    assert "batchscore_ids_read 1234567\n" in text  # integers as integers
    assert samples["batchscore_ids_scored"] == 1_234_560
    assert samples['batchscore_ids_failed{reason="not_found"}'] == 7
    assert samples["batchscore_retries"] == 12_345_678_901
    assert samples['batchscore_stage_busy_seconds{stage="fetch"}'] == 1234.5678901234567
    assert samples['batchscore_exit_code{model_version="f43e807ca2550579"}'] == 3
    assert before <= samples["batchscore_last_run_timestamp_seconds"] <= after


def test_values_that_are_not_finite_use_the_formats_own_words(tmp_path: Path) -> None:
    stats = RunStats()
    stats.seconds["score"] = math.inf
    stats.seconds["write"] = math.nan
    path = tmp_path / "batchscore.prom"
    write_metrics(str(path), stats, 0, {})
    text = path.read_text()
    assert 'batchscore_stage_busy_seconds{stage="score"} +Inf\n' in text
    assert 'batchscore_stage_busy_seconds{stage="write"} NaN\n' in text


def test_the_summary_names_the_first_five_failed_ids_with_line_and_reason() -> None:
    stats = RunStats(read=9, scored=2)
    stats.add_failures(
        [
            ErrorRecord("C999001", 17, "fetch", "profile", "not_found"),
            ErrorRecord(None, 18, "input", None, "invalid_utf8"),
            ErrorRecord("x" * 1025, 1203, "input", None, "id_too_long"),
            ErrorRecord("a\nb", 1204, "fetch", "profile", "http_500", 500, 5),
        ]
    )
    stats.add_failures(
        [ErrorRecord(f"C{n}", 1300 + n, "score", None, "no_features") for n in range(3)]
    )
    lines = summary_lines(stats)
    start = lines.index("first 5 failed IDs:")
    shown = ["C999001", "(no ID)", "x" * 37 + "...", "'a\\nb'", "C0"]  # 40 wide at most
    assert lines[start : start + 6] == [
        "first 5 failed IDs:",
        f"  line    17  {shown[0]:<40}  not_found (profile)",
        f"  line    18  {shown[1]:<40}  invalid_utf8",
        f"  line 1,203  {shown[2]:<40}  id_too_long",
        f"  line 1,204  {shown[3]:<40}  http_500 (profile)",
        f"  line 1,300  {shown[4]:<40}  no_features",
    ]
    assert stats.failed == Counter(
        {"no_features": 3, "not_found": 1, "invalid_utf8": 1, "id_too_long": 1, "http_500": 1}
    )


def test_when_every_failure_is_listed_the_title_does_not_say_first() -> None:
    stats = RunStats(read=1)
    stats.add_failures([ErrorRecord("C1", 1, "fetch", "features", "not_found")])
    assert summary_lines(stats)[2:4] == ["failed IDs:", "  line 1  C1  not_found (features)"]


def test_the_rate_counts_the_lines_a_dedupe_run_went_through_not_the_ids_it_scored(
    tmp_path: Path, score_in_process: ScoreInProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18: 1M lines of one ID with --dedupe said "(1 IDs/s)"."""
    monkeypatch.chdir(ROOT)  # the sample config's paths are relative to the repository
    lines = 20_000
    ids = tmp_path / "ids.txt"
    ids.write_text("C000858\n" * lines)
    report = tmp_path / "report.json"
    run = score_in_process(
        config=SAMPLE_CONFIG, ids=str(ids), dedupe=True, report=str(report), output="-"
    )
    assert run.status == 0, run.stderr
    body = json.loads(report.read_text())
    assert (body["scored"], body["ids_skipped"]) == (1, lines - 1)
    went_through = body["ids_per_second"] * body["elapsed_seconds"]
    assert went_through == pytest.approx(lines, rel=0.05)
    shown = re.search(r"\(([\d,]+) IDs/s\)", run.stderr)
    assert shown is not None and int(shown.group(1).replace(",", "")) > 1
