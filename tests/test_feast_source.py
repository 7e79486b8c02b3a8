"""The feast source against the feature server's Feast endpoint (``POST /get-online-features``)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from batchscore.errors import ConfigError
from batchscore.settings import FetchSettings
from batchscore.sources import NOT_FOUND, Failure
from conftest import ScoreInProcess, TrainedModel, output_scores, read_errors
from featureserver import Faults, FeatureServer
from servers import fetch_all, no_backoff_waits, rows_as_data, run_scoring, server_process

__all__ = ["no_backoff_waits"]  # a fixture, used by name

pytestmark = pytest.mark.usefixtures("no_backoff_waits")


def feast_source(url: str, features: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """A ``[[sources]]`` table for the server's Feast endpoint."""
    named = {"features": [f"customer:{f}" for f in features]} if features else {}
    return {"name": "feast", "kind": "feast", "url": url, "entity_key": "id", **named, **extra}


@pytest.mark.parametrize(("kind", "service"), [("binary", False), ("multiclass", True)])
def test_scores_are_bit_identical_and_statuses_are_counted(
    trained_models: dict[str, TrainedModel],
    score_in_process: ScoreInProcess,
    tmp_path: Path,
    kind: str,
    service: bool,
) -> None:
    model = trained_models[kind]
    names = [f"f{j}" for j in range(model.features.shape[1])]
    data = rows_as_data(model.ids, model.features)
    with server_process(tmp_path, data, "--latency", "0.002") as srv:
        source = (
            feast_source(srv.url, feature_service="scoring_v1", batch_size=32)
            if service
            else feast_source(srv.url, names, batch_size=32)
        )
        report = tmp_path / "report.json"
        run, rows, _ = run_scoring(score_in_process, tmp_path, model, [source], report=str(report))
        stats = srv.stats()
    assert run.status == 0, run.stderr
    assert [row["id"] for row in rows] == list(model.ids)
    assert np.array_equal(output_scores(rows, model.score_columns), model.expected())
    assert stats["requests_by_endpoint"]["feast"] == stats["requests_total"] <= len(rows) / 16
    # The server sends a stored null with status PRESENT, as a real Feast server does for NaN;
    # the entity key's own column is not a feature and is not counted.
    statuses = json.loads(report.read_text())["source_statuses"]
    assert statuses == {"feast": {"PRESENT": model.features.size}}


def test_missing_statuses_not_found_ids_and_nulls(
    trained_models: dict[str, TrainedModel], score_in_process: ScoreInProcess, tmp_path: Path
) -> None:
    model = trained_models["binary"]
    ids = list(model.ids[:40])
    data = rows_as_data(ids, model.features[:40])
    stale = ids[:3]
    flags = ["--feast-null-status", "NULL_VALUE"]
    for ident in stale:
        flags += ["--outside-max-age-id", ident]
    with server_process(tmp_path, data, *flags) as srv:
        names = [f"f{j}" for j in range(model.features.shape[1])]
        report = tmp_path / "report.json"
        run, rows, errors = run_scoring(
            score_in_process,
            tmp_path,
            model,
            [feast_source(srv.url, names)],
            ids=[*ids, "unknown-1", "unknown-2"],
            report=str(report),
            max_failed=5,
        )
    assert run.status == 0, run.stderr
    records = read_errors(errors)
    # OUTSIDE_MAX_AGE values are missing: the stale rows have no features left at all.
    assert [(r["id"], r["reason"]) for r in records] == [
        *((ident, "no_features") for ident in stale),
        ("unknown-1", NOT_FOUND),
        ("unknown-2", NOT_FOUND),
    ]
    fresh = model.features[3:40]
    nulls = int(np.isnan(fresh).sum())
    statuses = json.loads(report.read_text())["source_statuses"]["feast"]
    assert statuses == {
        "PRESENT": fresh.size - nulls,
        "NULL_VALUE": nulls,
        "OUTSIDE_MAX_AGE": 3 * len(names),
        "NOT_FOUND": 2 * len(names),
    }
    expected = model.booster.predict(fresh).reshape(-1, 1)
    assert np.array_equal(output_scores(rows, ("score",)), expected)


def test_a_null_value_is_missing_whatever_its_status_says() -> None:
    data = {"a": {"x": 1.5, "y": None}, "b": {"x": None, "y": 2}}
    with FeatureServer(data) as srv:  # nulls come back with status PRESENT
        [results], stats = fetch_all([feast_source(srv.url, ["x", "y"])], ["a", "b", "zz"])
    assert results == [{"x": 1.5, "y": None}, {"x": None, "y": 2}, Failure(NOT_FOUND)]
    assert stats.statuses["feast"] == Counter({"PRESENT": 4, "NOT_FOUND": 2})


def test_malformed_wrong_shape_and_truncated_answers_are_retried() -> None:
    data = {f"e{i}": {"x": float(i)} for i in range(200)}
    faults = Faults(p_malformed=0.15, p_wrong_shape=0.15, p_truncate=0.1, p_reset=0.05, seed=3)
    with FeatureServer(data, faults=faults) as srv:
        [results], stats = fetch_all(
            [feast_source(srv.url, ["x"], batch_size=10)],
            list(data),
            fetch=FetchSettings(retries=10),
        )
        server = srv.stats()
    assert results == [{"x": float(i)} for i in range(200)]
    assert {"malformed", "wrong_shape", "truncate"} <= set(server["faults"])
    assert stats.retries == sum(server["faults"].values()) == server["requests_total"] - 20
    # Statuses are counted once per answer that was used, not for the answers thrown away.
    assert stats.statuses["feast"] == Counter({"PRESENT": 200})


def test_a_persistently_malformed_answer_fails_its_ids_without_a_crash() -> None:
    data = {"a": {"x": 1.0}, "b": {"x": 2.0}}
    with FeatureServer(data, faults=Faults(p_wrong_shape=1.0)) as srv:
        [results], stats = fetch_all(
            [feast_source(srv.url, ["x"])], ["a", "b"], fetch=FetchSettings(retries=2)
        )
    assert results == [Failure("malformed_response", 200, 3, True)] * 2
    assert stats.retries == 2


def test_integer_entity_keys() -> None:
    data = {"1001": {"x": 1.0}, "1002": {"x": 2.0}}
    with FeatureServer(data) as srv:
        [results], _ = fetch_all(
            [feast_source(srv.url, ["x"], entity_type="int")], ["1002", "abc", "1001"]
        )
        stats = srv.stats()
    assert results == [{"x": 2.0}, Failure(NOT_FOUND), {"x": 1.0}]
    assert stats["id_requests"] == {"1002": 1, "1001": 1}  # "abc" is no int64 key: not sent


def test_integer_entity_keys_accept_only_plain_ascii_int64() -> None:
    # int() takes "1_0" as 10 and "٣" as 3: those IDs would get another entity's features.
    # An integer beyond int64 made orjson.dumps raise: a crash of the whole run.
    data = {"10": {"x": 1.0}, "3": {"x": 2.0}, "12": {"x": 3.0}, "-7": {"x": 4.0}}
    data[str(2**63 - 1)] = {"x": 5.0}
    odd = ["1_0", "٣", " 12", "12 ", "+-3", "1e1", "", "0x10", "99999999999999999999", str(2**63)]
    odd.append(str(-(2**63) - 1))
    good = ["10", "-7", str(2**63 - 1)]
    with FeatureServer(data) as srv:
        [results], _ = fetch_all([feast_source(srv.url, ["x"], entity_type="int")], odd + good)
        stats = srv.stats()
    assert results == [Failure(NOT_FOUND)] * len(odd) + [{"x": 1.0}, {"x": 4.0}, {"x": 5.0}]
    assert stats["id_requests"] == dict.fromkeys(good, 1)  # nothing else was sent


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"features": ["v:x"], "feature_service": "svc"}, "exactly one of them"),
        ({}, "exactly one of them"),
        ({"features": ["x"]}, "view:feature"),
        ({"features": ["v:x"], "entity_type": "integer"}, "did you mean 'int'"),
        ({"features": ["v:x"], "batch_size": 0}, "batch_size"),
        ({"features": ["v:x"], "entity_kye": "id"}, "did you mean 'entity_key'"),
    ],
)
def test_config_errors_name_the_problem(extra: dict[str, Any], message: str) -> None:
    source = {"name": "feast", "kind": "feast", "url": "http://127.0.0.1:9", "entity_key": "id"}
    with pytest.raises(ConfigError, match=message):
        fetch_all([{**source, **extra}], ["a"])
