"""``--concurrency auto`` end to end: the real command against the real test server.

The server counts the requests it has in flight itself (``max_inflight``), so the bounds are
checked from the service's side, not from batchscore's own bookkeeping.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from conftest import RunCli, TrainedModel, output_scores, read_errors, read_output, write_config
from servers import rows_as_data, server_process


def per_id_source(url: str) -> dict[str, Any]:
    """The server's per-ID endpoint as a ``[[sources]]`` table."""
    return {
        "name": "svc",
        "kind": "http",
        "url": f"{url}/features/{{id}}",
        "features_path": "features",
    }


def score(
    run_cli: RunCli, tmp_path: Path, model: TrainedModel, url: str, *flags: str, name: str = "run"
) -> tuple[int, str, dict[str, Any], Path]:
    """The real command over every ID of ``model``; its exit code, stderr, report, output."""
    config = write_config(
        tmp_path / f"{name}.toml", model=model.model_path, sources=[per_id_source(url)]
    )
    ids = model.ids_file(tmp_path / "ids.txt")
    out = tmp_path / f"{name}.jsonl"
    report = tmp_path / f"{name}.report.json"
    result = run_cli("score", ids, "-c", config, "-o", out, "--report", report, *flags, timeout=120)
    body = json.loads(report.read_text()) if report.exists() else {}
    return result.returncode, result.stderr, body, out


def test_the_default_completes_against_a_load_shedding_service_with_no_failed_id(
    trained_models: dict[str, TrainedModel], run_cli: RunCli, tmp_path: Path
) -> None:
    model = trained_models["binary"]
    data = rows_as_data(model.ids, model.features)
    shedding = ("--latency", "0.01", "--shed-over", "4", "--retry-after", "0.2")
    with server_process(tmp_path, data, *shedding) as srv:
        code, stderr, report, out = score(run_cli, tmp_path, model, srv.url)
        stats = srv.stats()
        # The old default, a fixed 64, against the same service, for comparison.
        score(run_cli, tmp_path, model, srv.url, "--concurrency", "64", name="fixed")
        refused_by_fixed = srv.stats()["responses_by_status"]["503"] - stats[
            "responses_by_status"
        ].get("503", 0)
    assert code == 0, stderr
    assert report["failed"] == 0 and report["scored"] == len(model.ids)
    rows = read_output(out)
    assert [row["id"] for row in rows] == list(model.ids)
    assert np.array_equal(output_scores(rows, ("score",)), model.expected())
    errors = Path(f"{out}.errors.jsonl")
    assert not errors.exists() or read_errors(errors) == []
    assert stats["responses_by_status"].get("503", 0) > 0  # it did shed: auto backed off
    limit = report["concurrency"]["svc"]
    assert limit["low"] <= 4 < limit["high"]  # started above the capacity, backed off below it
    assert "source svc: concurrency auto" in stderr  # the summary shows the final limit
    # A fixed 64 had many times the refusals (and, on a busy machine, failed IDs: exit 3).
    assert refused_by_fixed > 2 * stats["responses_by_status"]["503"]


def test_a_fixed_number_is_never_exceeded(
    trained_models: dict[str, TrainedModel], run_cli: RunCli, tmp_path: Path
) -> None:
    model = trained_models["binary"]
    data = rows_as_data(model.ids, model.features)
    with server_process(tmp_path, data, "--latency", "0.01") as srv:
        code, stderr, report, _ = score(run_cli, tmp_path, model, srv.url, "--concurrency", "5")
        stats = srv.stats()
    assert code == 0, stderr
    assert stats["max_inflight"] == 5  # reached, never exceeded
    assert report["concurrency"] == {}  # a number: nothing adapts
    assert "concurrency auto" not in stderr


def test_under_auto_the_ceiling_is_never_exceeded(
    trained_models: dict[str, TrainedModel], run_cli: RunCli, tmp_path: Path
) -> None:
    model = trained_models["binary"]
    data = rows_as_data(model.ids, model.features)
    with server_process(tmp_path, data, "--latency", "0.02") as srv:
        code, stderr, report, _ = score(
            run_cli,
            tmp_path,
            model,
            srv.url,
            "--max-concurrency",
            "40",
            "--metrics",
            str(tmp_path / "metrics.prom"),
            "--debug",
        )
        stats = srv.stats()
    assert code == 0, stderr
    assert stats["max_inflight"] <= 40
    assert report["concurrency"]["svc"]["high"] == 40  # a roomy service: grown to the ceiling
    assert "source 'svc': concurrency" in stderr  # --debug logs each change with its reason
    metrics = (tmp_path / "metrics.prom").read_text()
    assert 'batchscore_source_concurrency{source="svc",value="high"} 40' in metrics
