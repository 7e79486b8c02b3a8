"""Scale-out: --shard K/N splits the IDs between N runs, each ID in exactly one of them."""

from __future__ import annotations

from pathlib import Path

from conftest import ROOT, SAMPLE_CONFIG, SAMPLE_DIR, RunCli, read_output


def test_shards_partition_the_ids(run_cli: RunCli, tmp_path: Path) -> None:
    ids = SAMPLE_DIR / "ids_small.txt"
    whole = run_cli(
        "score", ids, "-c", SAMPLE_CONFIG, "-o", tmp_path / "all.csv", "--max-failed", "9", cwd=ROOT
    )
    assert whole.returncode == 0, whole.stderr
    expected = {row["id"]: row["score"] for row in read_output(tmp_path / "all.csv")}
    seen: dict[str, float] = {}
    for k in range(3):
        out = tmp_path / f"shard-{k}.csv"
        part = run_cli(
            "score",
            ids,
            "-c",
            SAMPLE_CONFIG,
            "-o",
            out,
            "--shard",
            f"{k}/3",
            "--max-failed",
            "9",
            cwd=ROOT,
        )
        assert part.returncode == 0, part.stderr
        rows = read_output(out)
        assert 0 < len(rows) < len(expected)  # a real split, not everything or nothing
        for row in rows:
            assert row["id"] not in seen, "an ID landed in two shards"
            seen[row["id"]] = row["score"]
    assert seen == expected


def test_a_bad_shard_or_an_unavailable_engine_is_a_usage_error(run_cli: RunCli) -> None:
    ids = SAMPLE_DIR / "ids_small.txt"
    for flags in (["--shard", "3/3"], ["--shard", "x"], ["--engine", "spark"]):
        result = run_cli("score", ids, "-c", SAMPLE_CONFIG, *flags, cwd=ROOT)
        assert result.returncode == 2
        assert result.stdout == b""
        assert len(result.stderr.strip().splitlines()) == 1
