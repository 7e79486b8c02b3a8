"""Secrets never leak: the real command at --debug, with tokens in headers, queries and URLs.

Each run is the installed command as a subprocess, and afterwards no byte of its stdout, its
stderr or any file it left behind (output, errors file, report, metrics, resume state) holds a
secret.  The runs are built so that the secrets had every chance to leak: each request's URL
is logged at --debug, retries log their reasons, a rejected token ends the run with a
traceback, and each test checks that the masked text was really written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import RunCli, TrainedModel, write_config
from servers import ServerProcess, rows_as_data, server_process

BEARER = "bearer-7f3c9e1a5b2d4680"
WRONG = "wrong-b00c1e55a7f09e"
QUERY = "qtok-91ab37cd55ef"
USER = "svc-4c2e8b"
PASSWORD = "pw-c0ffee5eed1234"
SECRETS = (BEARER, WRONG, QUERY, USER, PASSWORD)


def assert_no_secret_anywhere(root: Path, *streams: bytes | str) -> None:
    """No secret in the streams or in any file under ``root`` (every byte of every file)."""
    blobs = [s.encode() if isinstance(s, str) else s for s in streams]
    blobs += [p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()]
    for secret in SECRETS:
        for blob in blobs:
            assert secret.encode() not in blob


def score(
    run_cli: RunCli,
    tmp_path: Path,
    model: TrainedModel,
    sources: list[dict[str, Any]],
    env: dict[str, str],
    ids: list[str],
    **fetch: Any,
) -> tuple[int, bytes, str]:
    """Run ``batchscore score --debug`` with a report, metrics and an errors file."""
    config = write_config(
        tmp_path / "config.toml",
        model=model.model_path,
        sources=sources,
        fetch={"backoff_base": 0.001, "retries": 6, **fetch},
    )
    (tmp_path / "ids.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    result = run_cli(
        "score",
        "ids.txt",
        "-c",
        config,
        "-o",
        "scores.csv",
        "--debug",
        "--report",
        "report.json",
        "--metrics",
        "run.prom",
        "--max-failed",
        "5",
        env=env,
    )
    return result.returncode, result.stdout, result.stderr


@pytest.fixture
def model(trained_models: dict[str, TrainedModel]) -> TrainedModel:
    return trained_models["binary"]


def served(tmp_path: Path, model: TrainedModel, *flags: str) -> Any:
    return server_process(
        tmp_path / "server", rows_as_data(model.ids[:40], model.features[:40]), *flags
    )


def per_id(srv: ServerProcess, **extra: Any) -> dict[str, Any]:
    return {
        "name": "profile",
        "kind": "http",
        "url": f"{srv.url}/features/{{id}}?token=${{QTOKEN}}",
        "features_path": "features",
        **extra,
    }


def test_bearer_and_query_tokens_never_appear(
    run_cli: RunCli, tmp_path: Path, model: TrainedModel
) -> None:
    (tmp_path / "server").mkdir()
    with served(tmp_path, model, "--required-token", BEARER, "--p-500", "0.2") as srv:
        source = per_id(srv, headers={"Authorization": "Bearer ${BEARER}"})
        ids = [*model.ids[:40], "unknown-1"]
        status, stdout, stderr = score(
            run_cli, tmp_path, model, [source], {"BEARER": BEARER, "QTOKEN": QUERY}, ids
        )
        stats = srv.stats()
    assert status == 0, stderr
    assert stats["requests_without_auth"] == 0 and stats["distinct_auth_values"] == 1
    assert all(f"token={QUERY}" in path for path in stats["paths"])  # the token was sent
    # The URLs were logged (at --debug), with the token masked; retries were logged too.
    assert "HTTP Request: GET" in stderr and "?token=***" in stderr
    assert "retrying" in stderr
    assert_no_secret_anywhere(tmp_path, stdout, stderr)


def test_a_rejected_token_stops_the_run_and_never_appears(
    run_cli: RunCli, tmp_path: Path, model: TrainedModel
) -> None:
    (tmp_path / "server").mkdir()
    with served(tmp_path, model, "--required-token", BEARER) as srv:
        source = per_id(srv, headers={"Authorization": "Bearer ${BEARER}"})
        status, stdout, stderr = score(
            run_cli,
            tmp_path,
            model,
            [source],
            {"BEARER": WRONG, "QTOKEN": QUERY},
            list(model.ids[:40]),
        )
    assert status == 4, stderr
    assert "rejected our credentials (HTTP 401)" in stderr
    assert "Traceback" in stderr  # --debug shows the traceback, masked
    assert_no_secret_anywhere(tmp_path, stdout, stderr)


def test_url_credentials_and_query_tokens_never_appear(
    run_cli: RunCli, tmp_path: Path, model: TrainedModel
) -> None:
    (tmp_path / "server").mkdir()
    with served(tmp_path, model, "--p-500", "0.2", "--p-malformed", "0.1") as srv:
        base = srv.url.replace("http://", "http://${USERNAME}:${PASSWORD}@")
        sources = [
            {
                "name": "batch",
                "kind": "http",
                "mode": "batch",
                "url": f"{base}/batch?token=${{QTOKEN}}",
                "batch_size": 8,
            },
        ]
        env = {"USERNAME": USER, "PASSWORD": PASSWORD, "QTOKEN": QUERY}
        status, stdout, stderr = score(
            run_cli, tmp_path, model, sources, env, [*model.ids[:40], "unknown-1"]
        )
        stats = srv.stats()
    assert status == 0, stderr
    assert stats["distinct_auth_values"] == 1  # the credentials went as Basic auth
    # the request is logged at --debug: credentials left the URL for a header, the token masked
    assert "HTTP Request: POST http://127.0.0.1" in stderr and "batch?token=***" in stderr
    assert_no_secret_anywhere(tmp_path, stdout, stderr)


def test_an_unreachable_source_with_secrets_in_its_url(
    run_cli: RunCli, tmp_path: Path, model: TrainedModel
) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://${{USERNAME}}:${{PASSWORD}}@127.0.0.1:{port}/features/{{id}}?token=${{QTOKEN}}"
    source = {
        "name": "down",
        "kind": "http",
        "url": url,
        "headers": {"Authorization": "Bearer ${BEARER}"},
    }
    env = {"USERNAME": USER, "PASSWORD": PASSWORD, "QTOKEN": QUERY, "BEARER": BEARER}
    status, stdout, stderr = score(
        run_cli, tmp_path, model, [source], env, list(model.ids[:20]), retries=1, down_after=5
    )
    assert status == 4, stderr
    assert "looks down" in stderr and "connect_error" in stderr
    assert "Traceback" in stderr
    assert_no_secret_anywhere(tmp_path, stdout, stderr)


@pytest.mark.parametrize(
    ("placement", "shown"),
    [
        (
            "headers-as-a-list",
            "headers must be a table of strings, not ['Authorization: Bearer ***']",
        ),
        ("timeout-as-text", "timeout must be a number, not '***'"),
        ("retries-as-text", "retries must be a whole number, not '***'"),
    ],
)
def test_a_token_under_a_key_of_the_wrong_type_is_masked_in_score_and_check(
    run_cli: RunCli, tmp_path: Path, model: TrainedModel, placement: str, shown: str
) -> None:
    """Whatever key a ${VAR} value sits under, and whatever its type, a message about it
    shows *** (issue 18: a headers list printed the token in its type error)."""
    source: dict[str, Any] = {
        "name": "profile",
        "kind": "http",
        "url": "http://127.0.0.1:9/features/{id}",
    }
    fetch: dict[str, Any] = {}
    if placement == "headers-as-a-list":
        source["headers"] = ["Authorization: Bearer ${BEARER}"]
    elif placement == "timeout-as-text":
        source["timeout"] = "${BEARER}"
    else:
        fetch["retries"] = "${BEARER}"
    env = {"BEARER": BEARER}
    status, stdout, stderr = score(run_cli, tmp_path, model, [source], env, ["a"], **fetch)
    assert status == 2, stderr
    assert shown in stderr
    checked = run_cli("check", "ids.txt", "-c", "config.toml", "--debug", env=env)
    assert checked.returncode == 2, checked.stderr
    assert shown in checked.stderr
    assert_no_secret_anywhere(tmp_path, stdout, stderr, checked.stdout, checked.stderr)


@pytest.mark.parametrize("kind", ["http", "feast"])
def test_a_token_with_the_newline_of_its_file_is_a_config_error_naming_the_header(
    run_cli: RunCli, tmp_path: Path, model: TrainedModel, kind: str
) -> None:
    """A ``${BEARER}`` read from a secret file keeps its newline: aiohttp refused the header
    at the first request, an internal error (exit 1) after a summary of 0 IDs read."""
    source: dict[str, Any] = {
        "name": "profile",
        "kind": kind,
        "url": "http://127.0.0.1:9" + ("/features/{id}" if kind == "http" else ""),
        "headers": {"Authorization": "Bearer ${BEARER}"},
        **({"entity_key": "id", "features": ["v:f0"]} if kind == "feast" else {}),
    }
    env = {"BEARER": BEARER + "\n"}
    status, stdout, stderr = score(run_cli, tmp_path, model, [source], env, ["a"])
    shown = "sources[0].headers.Authorization holds a line break or NUL"
    assert status == 2, stderr
    assert shown in stderr  # (--debug: with its traceback, masked)
    checked = run_cli("check", "ids.txt", "-c", "config.toml", env=env)
    assert checked.returncode == 2, checked.stderr
    assert checked.stderr.count("\n") == 1 and shown in checked.stderr
    assert_no_secret_anywhere(tmp_path, stdout, stderr, checked.stdout, checked.stderr)
