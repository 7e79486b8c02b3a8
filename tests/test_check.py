"""``batchscore check``: the real command against the real feature server."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, SAMPLE_CONFIG, RunCli, TrainedModel, write_config
from servers import rows_as_data, server_process


@pytest.fixture
def model(trained_models: dict[str, TrainedModel]) -> TrainedModel:
    return trained_models["binary"]


def per_id(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "profile",
        "kind": "http",
        "url": f"{url}/features/{{id}}",
        "features_path": "features",
        **extra,
    }


def check(
    run_cli: RunCli,
    tmp_path: Path,
    model: TrainedModel,
    sources: list[dict[str, Any]],
    *args: str,
    env: dict[str, str] | None = None,
) -> tuple[int, str, str]:
    config = write_config(
        tmp_path / "config.toml",
        model=model.model_path,
        sources=sources,
        fetch={"backoff_base": 0.001, "retries": 1},
    )
    result = run_cli("check", "-c", config, *args, env=env)
    return result.returncode, result.stdout.decode(), result.stderr


def served(tmp_path: Path, model: TrainedModel, *flags: str, rows: int = 100) -> Any:
    data = rows_as_data(model.ids[:rows], model.features[:rows])
    return server_process(tmp_path, data, *flags)


def test_a_sample_of_the_id_list_coverage_latency_and_eta(
    run_cli: RunCli, tmp_path: Path, model: TrainedModel
) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"{i}\n" for i in [*model.ids[:100]] * 50), encoding="utf-8")
    with served(tmp_path, model, "--latency", "0.01") as srv:
        status, out, err = check(
            run_cli, tmp_path, model, [per_id(srv.url)], str(ids), "--sample", "12"
        )
        stats: dict[str, Any] = srv.stats()
    assert status == 0, out + err
    assert stats["id_requests"] == dict.fromkeys(model.ids[:12], 1)  # the sample, once each
    assert "sample   12 IDs from" in out and "(5,000 lines)" in out
    assert "profile (http, per_id): reachable; 12 requests, latency p50" in out
    assert "12 found, 0 not found of 12" in out
    assert "every one of the 28 model features came from a source" in out
    assert "eta      5,000 IDs in about" in out
    assert out.rstrip().endswith("a real run should work")


def test_without_ids_one_probe_request_per_source(
    run_cli: RunCli, tmp_path: Path, model: TrainedModel
) -> None:
    with served(tmp_path, model) as srv:
        feast = {
            "name": "feast",
            "kind": "feast",
            "url": srv.url,
            "entity_key": "id",
            "features": ["v:f0"],
            "rename": {"f0": "f0_from_feast"},
        }
        status, out, err = check(run_cli, tmp_path, model, [per_id(srv.url), feast])
        stats = srv.stats()
    assert status == 0, out + err
    assert stats["requests_by_endpoint"] == {"features": 1, "batch": 0, "feast": 1, "other": 0}
    assert "0 found, 1 not found of 1" in out
    assert "pass an ID list to check coverage" in out


def test_an_unreachable_source_exits_4(
    run_cli: RunCli, tmp_path: Path, model: TrainedModel
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    status, out, err = check(run_cli, tmp_path, model, [per_id(f"http://127.0.0.1:{port}")])
    assert status == 4, out + err
    assert "profile (http, per_id): UNREACHABLE: every request failed (connect_error 1)" in out
    assert "FAILED   a source is unreachable" in out


def test_rejected_credentials_exit_4_without_showing_the_token(
    run_cli: RunCli, tmp_path: Path, model: TrainedModel
) -> None:
    with served(tmp_path, model, "--required-token", "right-token-123") as srv:
        source = per_id(srv.url, headers={"Authorization": "Bearer ${TOKEN}"})
        status, out, err = check(
            run_cli, tmp_path, model, [source], env={"TOKEN": "wrong-token-456"}
        )
    assert status == 4, out + err
    assert "REJECTED our credentials (HTTP 401)" in out
    assert "wrong-token-456" not in out + err


def test_features_no_source_gave_and_features_mostly_missing(
    run_cli: RunCli, tmp_path: Path, model: TrainedModel
) -> None:
    data = rows_as_data(model.ids[:20], model.features[:20])
    for n, row in enumerate(data.values()):
        del row["f3"]
        row["f5"] = None if n % 4 else 1.0
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"{i}\n" for i in model.ids[:20]), encoding="utf-8")
    with server_process(tmp_path, data) as srv:
        status, out, err = check(run_cli, tmp_path, model, [per_id(srv.url)], str(ids))
    assert status == 0, out + err
    assert "no source gave 1 model feature(s) in the 20 sample IDs found: f3" in out
    assert "mostly missing (>50%) in the 20 sample IDs found: f5 (75%)" in out


def test_two_sources_giving_one_feature_without_wins_exit_2(
    run_cli: RunCli, tmp_path: Path, model: TrainedModel
) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"{i}\n" for i in model.ids[:5]), encoding="utf-8")
    with served(tmp_path, model) as srv:
        sources = [per_id(srv.url), model.source(name="store")]
        status, out, err = check(run_cli, tmp_path, model, sources, str(ids))
        assert status == 2, out + err
        assert "features from two sources: 'f0' comes from profile, store;" in out
        sources[0]["wins"] = [f"f{j}" for j in range(28)]
        status, out, err = check(run_cli, tmp_path, model, sources, str(ids))
    assert status == 0, out + err


def test_a_config_problem_exits_2_before_any_request(
    run_cli: RunCli, tmp_path: Path, model: TrainedModel
) -> None:
    with served(tmp_path, model) as srv:
        status, out, err = check(run_cli, tmp_path, model, [per_id(srv.url, mode="perid")])
        stats = srv.stats()
    assert status == 2
    assert "sources[0].mode must be per_id or batch, not 'perid' (did you mean" in err
    assert out == ""
    assert stats["requests_total"] == 0


def test_help_has_an_example(run_cli: RunCli) -> None:
    result = run_cli("check", "--help")
    assert result.returncode == 0
    assert b"Example: batchscore check -c configs/http.toml" in result.stdout


def test_check_samples_a_csv_list_with_the_input_flags_of_score(
    run_cli: RunCli, tmp_path: Path
) -> None:
    ids = tmp_path / "accounts.dat"  # the extension says nothing: --input-format does
    ids.write_text("account,region\nC000858,n\nC004769,s\nC999999,e\n")
    result = run_cli(
        "check",
        "-c",
        SAMPLE_CONFIG,
        ids,
        "--input-format",
        "csv",
        "--id-column",
        "account",
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert "3 IDs from" in text and "2 found, 1 not found of 3" in text


def test_check_samples_a_headerless_csv_under_no_header_counting_its_first_line(
    run_cli: RunCli, tmp_path: Path
) -> None:
    ids = tmp_path / "accounts.csv"
    ids.write_text("C000858,n\nC004769,s\nC999999,e\n")
    result = run_cli("check", "-c", SAMPLE_CONFIG, ids, "--no-header", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert "3 IDs from" in text and "(3 lines)" in text and "2 found, 1 not found of 3" in text
