"""Issue 21: every run keeps its score and feature distributions; ``--baseline`` says what moved.

A real LightGBM model trained on six independent standard-normal features, populations of
10,000 rows drawn from the same distribution (other IDs, another seed) or with one feature
shifted, scored by the real command from the input file's own columns (``kind = "input"``).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, SAMPLE_CONFIG, RunCli, batchscore_command, clean_environ, read_output
from featureserver import Faults, FeatureServer

FEATURES = [f"f{i}" for i in range(6)]
ROWS = 10_000
WEIGHTS = np.array([1.0, 0.6, -0.8, 0.3, 0.5, 0.0])  # f5 carries nothing


def draw(seed: int, rows: int = ROWS, shift: dict[str, float] | None = None) -> np.ndarray:
    """``rows`` x 6 standard normal features; ``shift`` adds to columns by name (in sd)."""
    x = np.random.default_rng(seed).standard_normal((rows, len(FEATURES)))
    for name, by in (shift or {}).items():
        x[:, FEATURES.index(name)] += by
    return x


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-tree binary model on the six features (label: a noisy linear score)."""
    root = tmp_path_factory.mktemp("drift-model")
    x = draw(7, 8000)
    rng = np.random.default_rng(8)
    y = (x @ WEIGHTS + rng.logistic(size=len(x)) > 0).astype(float)
    params = {"objective": "binary", "num_leaves": 15, "verbose": -1, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(x, y, feature_name=FEATURES), 40)
    path = root / "model.txt"
    booster.save_model(str(path))
    return path


def write_population(path: Path, x: np.ndarray, first_id: int) -> Path:
    """A CSV of ``id`` and the features (IDs from ``first_id``: each population its own)."""
    lines = ["id," + ",".join(FEATURES)]
    lines += [
        f"P{first_id + i}," + ",".join(repr(float(v)) for v in row) for i, row in enumerate(x)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_config(folder: Path, model: Path) -> Path:
    config = folder / "drift.toml"
    config.write_text(f'[model]\npath = "{model}"\n\n[[sources]]\nname = "input"\nkind = "input"\n')
    return config


def score(
    run_cli: RunCli, folder: Path, model: Path, name: str, x: np.ndarray, *extra: Any
) -> tuple[int, str, dict[str, Any]]:
    """Score a population with the real command; its status, stderr and report."""
    first_id = zlib.crc32(name.encode()) % 10**4 * 10**5  # each population its own IDs
    ids = write_population(folder / f"{name}.csv", x, first_id)
    report = folder / f"{name}.json"
    args = [str(a) for a in extra]
    if "--report" not in args:
        args += ["--report", str(report)]
    else:
        report = Path(args[args.index("--report") + 1])
    code, _, err = run_cli(
        "score", ids, "-c", write_config(folder, model), "-o", folder / f"{name}.out.csv", *args
    )
    return code, err, json.loads(report.read_text()) if report.exists() else {}


def drifted_features(report: dict[str, Any]) -> list[str]:
    return [n for n in report["drift"]["drifted"] if n in FEATURES]


# -- the histograms -------------------------------------------------------------------------------


def test_every_histogram_counts_every_row_scored_and_the_summary_draws_the_scores(
    run_cli: RunCli, tmp_path: Path, model: Path
) -> None:
    x = draw(1, 3000)
    x[::10, 2] = np.nan  # some missing values: counted apart
    code, err, report = score(run_cli, tmp_path, model, "run", x)
    assert code == 0, err
    (dist,) = report["distribution"]["models"]
    assert dist["rows"] == report["scored"] == 3000
    columns = {**dist["scores"], **dist["features"]}
    assert list(columns) == ["score", *FEATURES]
    for name, hist in columns.items():
        assert len(hist["counts"]) == len(hist["edges"]) + 1
        assert sum(hist["counts"]) + hist["missing"] == 3000, name
    assert dist["features"]["f2"]["missing"] == 300
    low, high = dist["scores"]["score"]["range"]  # what the trees can produce
    assert 0 < low < high < 1
    assert "score distribution (3,000 scored):" in err
    bars = err.split("score distribution (3,000 scored):\n", 1)[1].splitlines()[:8]
    assert all("█" in line and line.endswith("%") for line in bars), bars
    shares = [float(line.rsplit(" ", 1)[1].rstrip("%")) for line in bars]
    assert sum(shares) == pytest.approx(100, abs=0.5)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_value_lands_in_the_bin_a_binary_search_gives(model: Path, data: Any) -> None:
    """The lookup grid (:attr:`Layout.lookup`) against ``searchsorted`` on each column's edges,
    with values on, a hair around and far beyond the edges, infinities and NaN."""
    from batchscore.edges import layout_of
    from batchscore.histograms import Distribution

    layout = layout_of("", "v", str(model), ("score",), FEATURES, raw=False)
    rows = data.draw(st.integers(1, 300))
    block = np.empty((rows, len(layout.names)))
    for j, edges in enumerate(layout.edges):
        special = [*edges, *np.nextafter(edges, np.inf), *np.nextafter(edges, -np.inf)]
        special += [np.nan, np.inf, -np.inf, 0.0, -1e300, 1e300]
        values = st.one_of(st.sampled_from(special), st.floats(allow_nan=True))
        block[:, j] = data.draw(st.lists(values, min_size=rows, max_size=rows))
    counted = Distribution.observe(layout, block[:, :1], block[:, 1:])
    for j, edges in enumerate(layout.edges):
        column = block[:, j]
        present = column[~np.isnan(column)]
        expected = np.bincount(np.searchsorted(edges, present), minlength=len(edges) + 1)
        assert counted.histogram(j).counts.tolist() == expected.tolist()
        assert counted.histogram(j).missing == int(np.isnan(column).sum())


def test_the_histograms_memory_does_not_grow_with_the_rows(model: Path) -> None:
    from batchscore.edges import layout_of
    from batchscore.histograms import Distribution

    layout = layout_of("", "v", str(model), ("score",), FEATURES, raw=False)
    booster = lgb.Booster(model_file=str(model))
    total = Distribution(layout)
    size = total.counts.nbytes + total.missing.nbytes
    for seed in range(20):  # 20 chunks of 5,000 rows
        x = draw(seed, 5000)
        total.add(Distribution.observe(layout, booster.predict(x).reshape(-1, 1), x))
    assert total.rows == 100_000
    after = total.counts.nbytes + total.missing.nbytes
    assert after == size  # O(bins): the same arrays, only the counts changed
    assert size < 16 * 1024  # 7 columns of at most 256 bins of 8 bytes, and the missing counts


# -- no false alarm -------------------------------------------------------------------------------


def test_a_replay_of_the_same_population_flags_nothing(
    run_cli: RunCli, tmp_path: Path, model: Path
) -> None:
    code, err, _ = score(run_cli, tmp_path, model, "night1", draw(101))
    assert code == 0, err
    code, err, report = score(
        run_cli,
        tmp_path,
        model,
        "night2",
        draw(202),
        "--baseline",
        tmp_path / "night1.json",
        "--max-drift",
        "0.1",
    )
    assert code == 0, err
    drift = report["drift"]
    assert drift["drifted"] == []
    assert drift["not_compared"] == [] and drift["notes"] == []
    assert drift["score_psi"] < 0.01
    columns = drift["models"][0]["columns"]
    assert set(columns) == {"score", *FEATURES}
    assert all(c["rows"] == c["baseline_rows"] == ROWS for c in columns.values())
    assert "nothing moved beyond the thresholds" in err
    assert "baseline 10,000, right)" in err  # this run drawn beside the baseline


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seeds=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)))
def test_no_replay_of_the_same_population_flags_anything(
    model: Path, seeds: tuple[int, int]
) -> None:
    """The scorer's own histograms (real model, chunks of 1,024 rows) of two draws of one
    population, compared as a run compares them: nothing is flagged, whatever the seeds."""
    from batchscore.drift import Baseline, compare
    from batchscore.edges import layout_of
    from batchscore.histograms import Distribution

    layout = layout_of("", "v", str(model), ("score",), FEATURES, raw=False)
    booster = lgb.Booster(model_file=str(model))
    runs = []
    for seed in seeds:
        x = draw(seed)
        total = Distribution(layout)
        for start in range(0, ROWS, 1024):
            chunk = x[start : start + 1024]
            total.add(Distribution.observe(layout, booster.predict(chunk).reshape(-1, 1), chunk))
        runs.append(total)
    result = compare([runs[1]], Baseline("baseline.json", (runs[0],)))
    assert len(result.columns) == 1 + len(FEATURES)
    assert result.drifted_names == [], [c for c in result.columns if c.drifted]


# -- sensitivity ----------------------------------------------------------------------------------


def test_a_quarter_sd_shift_of_one_feature_names_that_feature_and_only_it(
    run_cli: RunCli, tmp_path: Path, model: Path
) -> None:
    code, err, _ = score(run_cli, tmp_path, model, "baseline", draw(301))
    assert code == 0, err
    code, err, report = score(
        run_cli,
        tmp_path,
        model,
        "shifted",
        draw(302, shift={"f3": 0.25}),
        "--baseline",
        tmp_path / "baseline.json",
    )
    assert code == 0, err  # no --max-drift: drift is reported, not an error
    assert drifted_features(report) == ["f3"]
    f3 = report["drift"]["models"][0]["columns"]["f3"]
    assert f3["drifted"] and f3["ks"] > f3["ks_threshold"]
    moved_most = report["drift"]["drifted"][0]
    assert f"{moved_most} moved most: PSI " in err


# -- exit 5 ---------------------------------------------------------------------------------------


def test_scores_that_moved_beyond_max_drift_exit_5_after_complete_outputs(
    run_cli: RunCli, tmp_path: Path, model: Path
) -> None:
    score(run_cli, tmp_path, model, "before", draw(401, 4000))
    metrics = tmp_path / "m.prom"
    code, err, report = score(
        run_cli,
        tmp_path,
        model,
        "after",
        draw(402, 4000, shift={"f0": 1.0}),  # the strongest feature, by a whole sd
        "--baseline",
        tmp_path / "before.json",
        "--max-drift",
        "0.2",
        "--metrics",
        metrics,
    )
    assert code == 5, err
    assert len(read_output(tmp_path / "after.out.csv")) == 4000  # the outputs are complete
    assert report["exit_code"] == 5
    assert report["drift"]["score_psi"] > 0.2
    assert report["drift"]["drifted"][:1] == ["f0"] or "f0" in report["drift"]["drifted"]
    assert err.splitlines()[-1].startswith("exit 5: score moved from the baseline by PSI ")
    prom = metrics.read_text()
    assert 'batchscore_score_psi{model="",column="score"} ' in prom
    assert "batchscore_exit_code" in prom and "batchscore_drifted_columns " in prom
    drifted_line = next(line for line in prom.splitlines() if line.startswith("batchscore_drifted"))
    assert int(drifted_line.split()[-1]) == len(report["drift"]["drifted"]) >= 2


def test_max_drift_without_a_baseline_is_a_usage_error(
    run_cli: RunCli, tmp_path: Path, model: Path
) -> None:
    code, err, _ = score(run_cli, tmp_path, model, "x", draw(1, 10), "--max-drift", "0.2")
    assert code == 2
    assert err == (
        "batchscore: error: --max-drift 0.2 compares the scores with a baseline: add --baseline "
        "REPORT.json (the --report of an earlier run)\n"
    )


# -- the report as a baseline ----------------------------------------------------------------------


def test_the_same_path_for_baseline_and_report_compares_with_the_last_run(
    run_cli: RunCli, tmp_path: Path, model: Path
) -> None:
    report = tmp_path / "nightly.json"
    common = ("--baseline", report, "--report", report, "--overwrite")
    # The first night: no baseline yet; a warning, and the report becomes the baseline.
    code, err, first = score(run_cli, tmp_path, model, "night", draw(501, 3000), *common)
    assert code == 0, err
    assert f"no baseline at {report} yet" in err
    assert "drift" not in first and first["distribution"]["models"][0]["rows"] == 3000
    code, err, second = score(run_cli, tmp_path, model, "night", draw(502, 2000), *common)
    assert code == 0, err
    assert second["distribution"]["models"][0]["rows"] == 2000
    assert second["drift"]["baseline"] == str(report)
    score_column = second["drift"]["models"][0]["columns"]["score"]
    assert (score_column["rows"], score_column["baseline_rows"]) == (2000, 3000)


def test_a_baseline_of_another_model_compares_what_it_can_and_says_what_not(
    run_cli: RunCli, tmp_path: Path, model: Path
) -> None:
    # The other model: f0..f4 and a feature "g" this one does not have (f5 dropped).
    names = [*FEATURES[:5], "g"]
    x = draw(601, 3000)
    y = (x @ WEIGHTS > 0).astype(float)
    other = tmp_path / "other.txt"
    params = {"objective": "binary", "num_leaves": 7, "verbose": -1, "num_threads": 1}
    lgb.train(params, lgb.Dataset(x, y, feature_name=names), 10).save_model(str(other))
    old = tmp_path / "old"
    old.mkdir()
    ids = old / "ids.csv"
    ids.write_text(
        "id,"
        + ",".join(names)
        + "\n"
        + "".join(f"Q{i}," + ",".join(map(repr, row.tolist())) + "\n" for i, row in enumerate(x))
    )
    code, _, err = run_cli(
        "score", ids, "-c", write_config(old, other), "-o", old / "o.csv",
        "--report", old / "old.json",
    )  # fmt: skip
    assert code == 0, err
    code, err, report = score(
        run_cli, tmp_path, model, "new", draw(602, 3000), "--baseline", old / "old.json"
    )
    assert code == 0, err
    drift = report["drift"]
    assert set(drift["models"][0]["columns"]) == {"score", *FEATURES[:5]}
    assert drift["not_compared"] == [
        "feature f5: not in the baseline",
        "feature g: only in the baseline",
    ]
    assert len(drift["notes"]) == 1 and "compared column by column" in drift["notes"][0]
    assert "not compared with the baseline: feature f5: not in the baseline" in err


def test_a_file_that_is_not_a_report_is_refused_in_one_line(
    run_cli: RunCli, tmp_path: Path, model: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"scored": 3}')
    code, err, _ = score(run_cli, tmp_path, model, "x", draw(1, 10), "--baseline", bad)
    assert code == 2
    assert err.startswith(f"batchscore: error: --baseline {bad} holds no score distribution")
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "x.out.csv").exists()


# -- resume --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_server() -> Iterator[FeatureServer]:
    server = FeatureServer.from_sqlite(
        ROOT / "sample_data" / "features.db",
        "customer_features",
        "customer_id",
        faults=Faults(latency=0.02),
    )
    with server as srv:
        yield srv


def committed(output: Path) -> int:
    """Rows a running job has committed (its state's counters), 0 before the first commit."""
    state = output.with_name(f".{output.name}.state")
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
            row = db.execute("SELECT counters FROM run").fetchone()
    except sqlite3.Error:  # not there yet, or being created
        return 0
    return int(json.loads(row[0]).get("scored", 0)) if row else 0


def test_the_report_of_a_resumed_run_equals_an_uninterrupted_runs(
    tmp_path: Path, slow_server: FeatureServer
) -> None:
    ids = tmp_path / "ids.txt"
    lines = (ROOT / "sample_data" / "ids.txt").read_bytes().splitlines(keepends=True)[:2000]
    ids.write_bytes(b"".join(lines))
    env = clean_environ()
    base = [*batchscore_command(), "score", str(ids), "--max-failed", "100", "--quiet"]
    whole = tmp_path / "whole.json"
    done = subprocess.run(
        [*base, "-c", str(SAMPLE_CONFIG), "-o", str(tmp_path / "w.csv"), "--report", str(whole)],
        cwd=ROOT, env=env, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    config = tmp_path / "http.toml"
    config.write_text(
        f'[model]\npath = "{ROOT / "sample_data" / "model.txt"}"\n\n[[sources]]\n'
        f'name = "profile"\nkind = "http"\nurl = "{slow_server.url}/features/{{id}}"\n'
        'features_path = "features"\n\n[fetch]\nconcurrency = 16\n'
    )
    out, resumed = tmp_path / "r.csv", tmp_path / "resumed.json"
    command = [*base, "-c", str(config), "-o", str(out), "--resume", "--report", str(resumed)]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while committed(out) < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    stopped = json.loads(resumed.read_text())
    assert 0 < stopped["scored"] < 1995  # stopped in the middle
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=60, check=False)
    assert again.returncode == 0, again.stderr
    report = json.loads(resumed.read_text())
    assert report["resumed_from"] > 0
    assert report["distribution"] == json.loads(whole.read_text())["distribution"]


# -- Dask -----------------------------------------------------------------------------------------


def test_a_dask_runs_histograms_merged_over_partitions_equal_a_local_runs(
    run_cli: RunCli, tmp_path: Path
) -> None:
    """Two models, six partitions on the command's own local cluster: the driver adds the
    partitions' histograms up to exactly the local run's, model by model."""
    pytest.importorskip("distributed")
    sample = ROOT / "sample_data"
    models = ["-m", f"a={sample / 'model.txt'}", "-m", f"b={sample / 'model.txt'}"]
    common = ["score", sample / "ids.txt", "-c", SAMPLE_CONFIG, *models, "--max-failed", "100"]
    local = run_cli(*common, "-o", tmp_path / "l.csv", "--report", tmp_path / "l.json", cwd=ROOT)
    assert local.returncode == 0, local.stderr
    dask = run_cli(
        *common, "-o", tmp_path / "d.csv", "--report", tmp_path / "d.json",
        "--engine", "dask", "--partition-size", "1000", "--baseline", tmp_path / "l.json",
        "--max-drift", "0.001", cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert dask.returncode == 0, dask.stderr
    by_dask = json.loads((tmp_path / "d.json").read_text())["distribution"]
    by_local = json.loads((tmp_path / "l.json").read_text())["distribution"]
    assert [m["name"] for m in by_local["models"]] == ["a", "b"]
    assert by_dask == by_local
    assert by_local["models"][0]["rows"] == 5000
    assert "score_a distribution (5,000 scored; baseline 5,000, right):" in dask.stderr
    drift = json.loads((tmp_path / "d.json").read_text())["drift"]  # the same rows: no move
    assert drift["score_psi"] == 0 and drift["drifted"] == [] and drift["not_compared"] == []
    success = json.loads((tmp_path / "d.csv" / "_SUCCESS").read_text())
    assert all("distributions" not in part for part in success["partitions"])
