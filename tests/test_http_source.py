"""The http source, per ID and batch, against the real fault-injecting feature server.

Scoring runs go through the real settings layer and job (``score_in_process``) against the
server as a process (see ``servers.py``); behaviours of the source alone (statuses, timeouts,
ID encoding, Retry-After) use the in-thread server and the source directly.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import random
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from batchscore.errors import ConfigError, SourceDownError
from batchscore.settings import FetchSettings
from batchscore.sources import NOT_FOUND, Failure
from batchscore.sources.http import encode_id
from batchscore.sources.retry import RetryPolicy, parse_retry_after
from conftest import ScoreInProcess, TrainedModel, output_scores, read_errors
from featureserver import Faults, FeatureServer
from servers import fetch_all, no_backoff_waits, rows_as_data, run_scoring, server_process

__all__ = ["no_backoff_waits"]  # a fixture, used by name

pytestmark = pytest.mark.usefixtures("no_backoff_waits")

AWKWARD_IDS = [
    *("a/b", "a/b c", "with space", "q?x=1", "hash#frag", "../etc/passwd", "..", ".", "..."),
    *("%41", "%2E", "%2E%2E", "%2F", "ü"),
]


def http_source(url: str, mode: str = "per_id", **extra: Any) -> dict[str, Any]:
    """A ``[[sources]]`` table for the feature server's per-ID or batch endpoint."""
    if mode == "per_id":
        return {
            "name": "svc",
            "kind": "http",
            "url": f"{url}/features/{{id}}",
            "features_path": "features",
            **extra,
        }
    shape = "?shape=object" if mode == "batch_object" else ""
    return {"name": "svc", "kind": "http", "mode": "batch", "url": f"{url}/batch{shape}", **extra}


# -- scores ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "mode"),
    [
        ("binary", "per_id"),
        ("binary", "batch"),
        ("binary", "batch_object"),
        ("multiclass", "per_id"),
        ("multiclass", "batch"),
    ],
)
def test_scores_are_bit_identical_to_booster_predict(
    trained_models: dict[str, TrainedModel],
    score_in_process: ScoreInProcess,
    tmp_path: Path,
    kind: str,
    mode: str,
) -> None:
    model = trained_models[kind]
    data = rows_as_data(model.ids, model.features)
    with server_process(tmp_path, data, "--latency", "0.002") as srv:
        extra = {"batch_size": 37} if mode != "per_id" else {}
        run, rows, _ = run_scoring(
            score_in_process, tmp_path, model, [http_source(srv.url, mode, **extra)]
        )
        stats = srv.stats()
    assert run.status == 0, run.stderr
    assert [row["id"] for row in rows] == list(model.ids)
    scores = output_scores(rows, model.score_columns)
    assert np.array_equal(scores, model.expected())  # bit for bit, not approximately
    assert stats["id_requests"] == dict.fromkeys(model.ids, 1)  # each ID asked for once
    endpoint = "features" if mode == "per_id" else "batch"
    assert stats["requests_by_endpoint"][endpoint] == stats["requests_total"]
    if mode != "per_id":
        assert stats["requests_total"] <= 2 * len(model.ids) / 37  # batched, not one per ID


@pytest.mark.parametrize("mode", ["per_id", "batch"])
def test_mixed_faults_every_id_scored_once_within_the_retry_budget(
    trained_models: dict[str, TrainedModel],
    score_in_process: ScoreInProcess,
    tmp_path: Path,
    mode: str,
) -> None:
    model = trained_models["binary"]
    data = rows_as_data(model.ids, model.features)
    faults = [
        "--p-500",
        "0.08",
        "--p-429",
        "0.05",
        "--retry-after",
        "1",
        "--p-reset",
        "0.04",
        "--p-truncate",
        "0.03",
        "--p-malformed",
        "0.03",
        "--seed",
        "7",
    ]
    retries = 8
    with server_process(tmp_path, data, *faults) as srv:
        extra = {"batch_size": 16} if mode == "batch" else {}
        run, rows, errors = run_scoring(
            score_in_process,
            tmp_path,
            model,
            [http_source(srv.url, mode, **extra)],
            fetch={"retries": retries},
            concurrency=16,
        )
        stats = srv.stats()
    assert run.status == 0, run.stderr
    assert not errors.exists() or read_errors(errors) == []
    assert [row["id"] for row in rows] == list(model.ids)  # each exactly once, in order
    assert np.array_equal(output_scores(rows, ("score",)), model.expected())
    faults_seen = stats["faults"]
    assert {"http_500", "http_429", "reset", "truncate", "malformed"} <= set(faults_seen)
    # Each injected fault cost exactly one counted retry, and nothing else did; no ID went
    # beyond the budget.
    retried = run.outcome.stats.retries
    assert retried == sum(faults_seen.values())
    assert max(stats["id_requests"].values()) <= 1 + retries
    if mode == "per_id":
        assert stats["requests_total"] == len(model.ids) + retried
    else:  # batches of at most 16 IDs, each sent once plus its retries
        assert stats["requests_total"] - retried >= -(-len(model.ids) // 16)


@pytest.mark.parametrize("retry_after", [True, False], ids=["retry_after", "plain"])
def test_a_burst_of_503s_to_the_requests_in_flight_does_not_stop_the_run(
    trained_models: dict[str, TrainedModel],
    score_in_process: ScoreInProcess,
    tmp_path: Path,
    retry_after: bool,
) -> None:
    # The defaults: 64 requests in flight, down after 50 failed attempts in a row.  The first
    # 64 requests (all of them in flight together) get 503; their retries succeed.  Before,
    # the 50th of those answers stopped the run (exit 4) before any retry.
    model = trained_models["binary"]
    flags = ["--fail-first", "64", "--latency", "0.05"]
    if retry_after:
        flags += ["--retry-after-on", "503", "--retry-after", "1"]
    with server_process(tmp_path, rows_as_data(model.ids, model.features), *flags) as srv:
        run, rows, _ = run_scoring(
            score_in_process, tmp_path, model, [http_source(srv.url)], concurrency=64
        )
        stats = srv.stats()
    assert run.status == 0, run.stderr
    assert [row["id"] for row in rows] == list(model.ids)
    assert stats["faults"] == {"fail_first": 64}
    assert run.outcome.stats.retries == 64


def test_503s_with_retry_after_are_pacing_not_a_source_down(
    trained_models: dict[str, TrainedModel], score_in_process: ScoreInProcess, tmp_path: Path
) -> None:
    # One request at a time: 100 answers in a row are 503 with Retry-After, twice the default
    # down_after.  The server is alive and saying when to come back: the IDs whose retries
    # all fell in that stretch fail, the run goes on (without Retry-After it would stop).
    model = trained_models["binary"]
    flags = ["--fail-first", "100", "--retry-after-on", "503", "--retry-after", "0"]
    with server_process(tmp_path, rows_as_data(model.ids, model.features), *flags) as srv:
        run, rows, errors = run_scoring(
            score_in_process, tmp_path, model, [http_source(srv.url)], concurrency=1
        )
    assert run.status == 3, run.stderr  # failed IDs beyond the allowance, not exit 4
    failed = read_errors(errors)
    assert [(e["id"], e["reason"], e["attempts"]) for e in failed] == [
        (i, "http_503", 5) for i in model.ids[:20]
    ]
    assert [row["id"] for row in rows] == list(model.ids[20:])


@pytest.mark.parametrize("concurrency", [1, 64])
def test_a_source_that_fails_every_request_still_stops_the_run_early(
    trained_models: dict[str, TrainedModel],
    score_in_process: ScoreInProcess,
    tmp_path: Path,
    concurrency: int,
) -> None:
    model = trained_models["binary"]
    ids = [f"i{n}" for n in range(3000)]
    with server_process(tmp_path, {}, "--fail-all") as srv:
        with pytest.raises(SourceDownError, match=r"failed 50 requests in a row \(last: http_503"):
            run_scoring(
                score_in_process,
                tmp_path,
                model,
                [http_source(srv.url)],
                ids=ids,
                concurrency=concurrency,
            )
        stats = srv.stats()
    # What was in flight when the first failure came back, 49 more sent after it, and what
    # was in flight when the 50th came back; nothing after that, and not 3,000 IDs.
    assert stats["requests_total"] <= 50 + 2 * (concurrency - 1)


# -- bounds ------------------------------------------------------------------------------------


def test_requests_in_flight_never_exceed_concurrency(
    trained_models: dict[str, TrainedModel], score_in_process: ScoreInProcess, tmp_path: Path
) -> None:
    model = trained_models["binary"]
    ids = [f"id{i}" for i in range(1000)]
    matrix = np.resize(model.features, (len(ids), model.features.shape[1]))
    with server_process(tmp_path, rows_as_data(ids, matrix), "--latency", "0.004") as srv:
        feast = {
            "name": "fs",
            "kind": "feast",
            "url": srv.url,
            "entity_key": "id",
            "features": ["v:f0"],
            "batch_size": 16,
            "rename": {"f0": "unused"},
        }
        run, rows, _ = run_scoring(
            score_in_process,
            tmp_path,
            model,
            [http_source(srv.url), feast],
            ids=ids,
            concurrency=8,
        )
        stats = srv.stats()
    assert run.status == 0, run.stderr
    assert len(rows) == len(ids)
    assert stats["requests_by_endpoint"]["features"] == 1000
    assert stats["requests_by_endpoint"]["feast"] >= 63  # batches of at most 16 IDs
    assert set(stats["id_requests"].values()) == {2}  # once per source
    assert stats["max_inflight"] == 8  # reached, never exceeded, over both sources together


def test_rate_limit_holds_over_every_window(
    trained_models: dict[str, TrainedModel], score_in_process: ScoreInProcess, tmp_path: Path
) -> None:
    model = trained_models["binary"]
    ids = list(model.ids[:120])
    rate = 100.0
    # (time before asking, requests counted, time after asking): the count is exact somewhere
    # between the two times.
    samples: list[tuple[float, int, float]] = []
    with server_process(tmp_path, rows_as_data(model.ids, model.features)) as srv:
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                before = time.monotonic()
                count = srv.stats()["requests_total"]
                samples.append((before, count, time.monotonic()))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.monotonic()
        try:
            run, rows, _ = run_scoring(
                score_in_process,
                tmp_path,
                model,
                [http_source(srv.url)],
                ids=ids,
                rate_limit=rate,
                concurrency=32,
            )
        finally:
            done.set()
            sampler.join()
        elapsed = time.monotonic() - started
    assert run.status == 0, run.stderr
    assert len(rows) == len(ids)
    # Evenly spaced starts: 120 requests cannot take less than 119 intervals of 1/rate.
    assert elapsed >= (len(ids) - 1) / rate
    # And no window of half a second or more saw more than the rate allows: the requests counted
    # between two samples arrived within (first sample's "before", second's "after"); +3 for
    # the bucket's depth of one and requests the client's loop sent late, back to back.
    windows = [(a, b) for a in samples for b in samples if b[0] - a[2] >= 0.5]
    assert windows
    for (t0, n0, _), (_, n1, t1) in windows:
        assert n1 - n0 <= rate * (t1 - t0) + 3


# -- statuses ----------------------------------------------------------------------------------


def test_401_stops_the_run_at_once_with_exit_4(
    trained_models: dict[str, TrainedModel], score_in_process: ScoreInProcess, tmp_path: Path
) -> None:
    model = trained_models["binary"]
    data = rows_as_data(model.ids, model.features)
    with server_process(tmp_path, data, "--required-token", "right") as srv:
        source = http_source(srv.url, headers={"Authorization": "Bearer wrong"})
        with pytest.raises(SourceDownError) as caught:
            run_scoring(score_in_process, tmp_path, model, [source], concurrency=4)
        stats = srv.stats()
    assert caught.value.exit_status == 4
    assert "rejected our credentials" in caught.value.message
    assert "wrong" not in caught.value.message
    assert stats["requests_total"] <= 4  # what was in flight; nothing after, no retries


def test_nothing_is_sent_after_a_401_is_seen_but_what_was_in_flight(
    trained_models: dict[str, TrainedModel], score_in_process: ScoreInProcess, tmp_path: Path
) -> None:
    # One ID's 401 arrives while the other workers keep getting answers; its body comes 0.5 s
    # after its head.  The status is what counts: from the moment the head is read, no
    # request may be sent, however long the body takes (before: ~2,400 more at concurrency
    # 64, every ID of the input).
    model = trained_models["binary"]
    ids = [f"i{n}" for n in range(3000)]
    data = rows_as_data(ids, np.resize(model.features, (len(ids), model.features.shape[1])))
    flags = ("--fail-id", "i0=401", "--error-body-delay", "0.5", "--latency", "0.01")
    concurrency = 64
    with server_process(tmp_path, data, *flags) as srv:
        with pytest.raises(SourceDownError, match="rejected our credentials"):
            run_scoring(
                score_in_process,
                tmp_path,
                model,
                [http_source(srv.url)],
                ids=ids,
                concurrency=concurrency,
            )
        stats = srv.stats()
    # Received after the 401's head was sent: only requests the client had sent before it
    # read that head (at most the others in flight).
    assert stats["requests_after_rejection"] <= concurrency - 1
    assert stats["requests_total"] <= 2 * concurrency


def test_404_is_not_found_and_other_4xx_are_not_retried() -> None:
    data = {"ok": {"f0": 1.0}, "bad": {"f0": 2.0}, "gone": {"f0": 3.0}}
    faults = Faults(fail_ids={"bad": 400, "gone": 410})
    with FeatureServer(data, faults=faults) as srv:
        [results], _ = fetch_all([http_source(srv.url)], ["ok", "nope", "bad", "gone"])
        stats = srv.stats()
    ok, nope, bad, gone = results
    assert ok == {"f0": 1.0}
    assert nope == Failure(NOT_FOUND, 404, 1, False)
    assert bad == Failure("http_400", 400, 1, False)
    assert gone == Failure("http_410", 410, 1, False)
    assert stats["id_requests"] == {"ok": 1, "nope": 1, "bad": 1, "gone": 1}


def test_ids_absent_from_a_batch_answer_are_not_found() -> None:
    data = {"a": {"f0": 1.0}, "b": {"f0": 2.0}}
    with FeatureServer(data) as srv:
        results, _ = fetch_all(
            [http_source(srv.url, "batch"), http_source(srv.url, "batch_object", name="obj")],
            ["b", "x", "a", "b"],
        )
    for per_source in results:
        assert per_source == [{"f0": 2.0}, Failure(NOT_FOUND), {"f0": 1.0}, {"f0": 2.0}]


def test_redirects_are_not_followed() -> None:
    with FeatureServer({"a": {"f0": 1.0}}, faults=Faults(redirect_to="/features/a")) as srv:
        [[result]], _ = fetch_all([http_source(srv.url)], ["a"])
        stats = srv.stats()
    assert result == Failure("http_302", 302, 1, False)
    assert stats["requests_total"] == 1


def test_401_and_403_raise_source_down() -> None:
    with FeatureServer({"a": {"f0": 1.0}}, faults=Faults(fail_ids={"a": 403})) as srv:
        with pytest.raises(SourceDownError, match="rejected our credentials"):
            fetch_all([http_source(srv.url)], ["a"])
        srv.faults = Faults(required_token="t0ken")
        with pytest.raises(SourceDownError, match=r"HTTP 401"):
            fetch_all([http_source(srv.url, "batch", headers={"Authorization": "Bearer x"})], ["a"])
        stats = srv.stats()
    assert stats["requests_total"] == 2


@pytest.mark.parametrize("fault", ["stall", "drip"])
def test_a_stalling_or_dripping_server_is_cut_off_by_the_timeout(fault: str) -> None:
    faults = (
        Faults(p_stall=1.0, stall_seconds=float("inf"))
        if fault == "stall"
        else Faults(p_drip=1.0, drip_interval=0.05)  # ~5 s for the whole answer
    )
    with FeatureServer({"a": {"f0": 1.0}, "b": {"f0": 2.0}}, faults=faults) as srv:
        started = time.monotonic()
        [results], stats = fetch_all(
            [http_source(srv.url, timeout=0.3)], ["a", "b"], fetch=FetchSettings(retries=1)
        )
        elapsed = time.monotonic() - started
    assert results == [Failure("timeout", None, 2, True)] * 2
    assert stats.retries == 2
    assert elapsed < 2.0  # two attempts of 0.3 s each, not the server's 5 s or forever


def test_awkward_ids_reach_the_server_intact_as_one_segment() -> None:
    data = {i: {"f0": float(n)} for n, i in enumerate(AWKWARD_IDS)}
    with FeatureServer(data) as srv:
        [results], _ = fetch_all([http_source(srv.url)], AWKWARD_IDS, concurrency=1)
        stats = srv.stats()
    assert results == [{"f0": float(n)} for n in range(len(AWKWARD_IDS))]
    assert stats["decoded_ids"] == AWKWARD_IDS
    assert all(path.count("/") == 2 for path in stats["paths"])  # /features/<one segment>


def test_a_dropped_connection_is_one_counted_attempt_never_a_hidden_one() -> None:
    # aiohttp would resend a GET once on a reset connection by itself; every attempt must be
    # the retry policy's (counted, rate-limited, backed off).
    with FeatureServer({"a": {"f0": 1.0}}, faults=Faults(p_reset=1.0)) as srv:
        [[result]], stats = fetch_all([http_source(srv.url)], ["a"], fetch=FetchSettings(retries=2))
        served = srv.stats()
    assert result == Failure("connection_error", None, 3, True)
    assert stats.retries == 2
    assert served["requests_total"] == 3


def test_url_credentials_become_basic_auth_and_leave_the_url(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = {"a": {"f0": 1.0}, "b": {"f0": 2.0}}
    basic = "Basic " + base64.b64encode(b"us@er:p:ss w").decode()
    with FeatureServer(data) as srv:
        base = srv.url
        url = base.replace("http://", "http://us%40er:p%3Ass%20w@")
        with caplog.at_level(logging.DEBUG, logger="batchscore"):
            results, _ = fetch_all(
                [http_source(url), http_source(url, "batch", name="batch")], ["a", "b"]
            )
        stats = srv.stats()
        assert srv.auth_seen(basic)
    assert results == [[{"f0": 1.0}, {"f0": 2.0}]] * 2
    assert stats["requests_without_auth"] == 0 and stats["distinct_auth_values"] == 1
    assert not any("us" in path for path in stats["paths"])
    logged = [r.getMessage() for r in caplog.records if "HTTP Request" in r.getMessage()]
    assert len(logged) == 3  # two GETs, one POST: the URLs as sent, credentials not in them
    assert all(f"{base}/" in line and "p%3Ass" not in line for line in logged)


def test_encode_id_keeps_every_id_one_opaque_segment() -> None:
    assert encode_id("a/b c") == "a%2Fb%20c"
    assert encode_id("..") == "%2E%2E"
    assert encode_id(".") == "%2E"
    assert encode_id("a.b") == "a.b"
    assert encode_id("../x") == "..%2Fx"


def test_sources_for_one_id_are_fetched_concurrently_and_united(
    trained_models: dict[str, TrainedModel], score_in_process: ScoreInProcess, tmp_path: Path
) -> None:
    model = trained_models["binary"]
    data = rows_as_data(model.ids[:1], model.features[:1])
    first, second = range(14), range(14, 28)
    with server_process(tmp_path, data, "--latency", "0.3") as srv:
        # Each source gives half of the model's features; the other half is renamed away.
        run, rows, _ = run_scoring(
            score_in_process,
            tmp_path,
            model,
            [
                http_source(srv.url, name="low", rename={f"f{j}": f"other{j}" for j in second}),
                http_source(
                    srv.url, "batch", name="high", rename={f"f{j}": f"other{j}" for j in first}
                ),
            ],
            ids=list(model.ids[:1]),
        )
        stats = srv.stats()
    assert run.status == 0, run.stderr
    assert stats["max_inflight"] == 2  # both sources' requests were out at the same time
    assert np.array_equal(output_scores(rows, ("score",)), model.expected()[:1])


@pytest.mark.parametrize("winner", ["http", "store"])
def test_wins_decides_between_an_http_source_and_a_store(
    trained_models: dict[str, TrainedModel],
    score_in_process: ScoreInProcess,
    tmp_path: Path,
    winner: str,
) -> None:
    model = trained_models["binary"]
    served = model.features.copy()
    served[:, :4] = 0.0  # the service disagrees with the store on f0..f3
    wins = [f"f{j}" for j in range(28)]
    http = http_source("", name="http")
    store = model.source(name="store")
    (http if winner == "http" else store)["wins"] = wins
    with server_process(tmp_path, rows_as_data(model.ids, served)) as srv:
        http["url"] = f"{srv.url}/features/{{id}}"
        run, rows, _ = run_scoring(score_in_process, tmp_path, model, [http, store])
    assert run.status == 0, run.stderr
    expected = model.booster.predict(served if winner == "http" else model.features)
    assert np.array_equal(output_scores(rows, ("score",)), expected.reshape(-1, 1))


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTPS server with a self-signed certificate for 127.0.0.1: (base URL, its cert)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"features": {"f0": 1.0}}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        def handle_error(self, *args: Any) -> None:
            pass  # the refused handshakes are the point

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = Server(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert
    finally:
        server.shutdown()
        server.server_close()


def test_tls_is_verified_with_ca_bundle_and_insecure_as_the_only_ways_around(
    tls_server: tuple[str, Path],
) -> None:
    url, cert = tls_server
    results, stats = fetch_all(
        [
            http_source(url, name="default"),
            http_source(url, name="ca", ca_bundle=str(cert)),
            http_source(url, name="insecure", insecure=True),
        ],
        ["a"],
    )
    assert results == [
        [Failure("tls_error", None, 1, False)],  # an unknown CA is not retried
        [{"f0": 1.0}],
        [{"f0": 1.0}],
    ]
    assert stats.retries == 0


def test_an_explicit_proxy_gets_the_request(tmp_path: Path) -> None:
    with FeatureServer({"a": {"f0": 1.0}}) as proxy:  # records the request line it is sent
        [[result]], _ = fetch_all(
            [http_source("http://features.invalid", proxy=proxy.url)],
            ["a/b"],
            fetch=FetchSettings(retries=0),
        )
        stats = proxy.stats()
    assert result == Failure(NOT_FOUND, 404, 1, False)  # the "proxy" knows no such feature
    assert stats["paths"] == ["http://features.invalid/features/a%2Fb"]


@pytest.mark.parametrize("credentials", ["", "pu:pp-secret@"])
def test_proxy_credentials_are_the_proxys_and_the_services_stay_the_services(
    credentials: str,
) -> None:
    seen: list[dict[str, str]] = []

    class Proxy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(dict(self.headers))
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        proxy = f"http://{credentials}127.0.0.1:{server.server_address[1]}"
        source = http_source(
            "http://features.invalid", proxy=proxy, headers={"Authorization": "Bearer svc-tok"}
        )
        [[result]], _ = fetch_all([source], ["a"], fetch=FetchSettings(retries=0))
    finally:
        server.shutdown()
        server.server_close()
    assert result == Failure(NOT_FOUND, 404, 1, False)
    [headers] = seen
    assert headers["Authorization"] == "Bearer svc-tok"
    if credentials:
        assert (
            headers["Proxy-Authorization"] == "Basic " + base64.b64encode(b"pu:pp-secret").decode()
        )
    else:
        assert "Proxy-Authorization" not in headers  # never the service's token


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"url": "http://h/features"}, r"url needs \{id\}"),
        ({"url": "http://{id}.example/x"}, "not its host"),
        ({"url": "ftp://h/{id}"}, "http:// or https://"),
        ({"url": "http://h/features/{id}?q=a b"}, "must be percent-encoded"),
        ({"url": "http://h/café/{id}"}, "must be percent-encoded"),
        ({"url": "http://h:port/{id}"}, "not a valid URL"),
        ({"mode": "batch", "url": "http://h/batch/{id}"}, "POSTs the IDs in the body"),
        ({"batch_size": 10}, 'applies to mode = "batch" only'),
        ({"ca_bundle": "/nonexistent/ca.pem"}, "no file /nonexistent/ca.pem"),
        ({"ca_bundle": "/etc/hosts", "insecure": True}, "not both"),
        ({"timeout": 0}, "timeout must be more than 0"),
        ({"max_response_bytes": 0}, "max_response_bytes must be at least 1"),
        ({"max_response_bytes": "64MB"}, "max_response_bytes"),
        ({"features_pth": "x"}, "did you mean 'features_path'"),
    ],
)
def test_config_errors_name_the_problem(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        fetch_all([{**http_source("http://h"), **extra}], ["a"])


# -- retry policy ------------------------------------------------------------------------------


def test_retry_after_is_parsed_from_seconds_and_http_dates() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0 ") == 0.0
    now = 1_800_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_a_retry_after_date_without_a_zone_is_gmt(monkeypatch: pytest.MonkeyPatch) -> None:
    # HTTP dates are GMT (RFC 9110); "-0000" and no zone at all parse as naive datetimes,
    # which Python would read as local time: hours off anywhere but in UTC.
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        now = 1_800_000_000.0
        stamp = email.utils.formatdate(now + 30, usegmt=True)  # "..., 15 Jan 2027 08:00:30 GMT"
        for text in (stamp, stamp.replace("GMT", "-0000"), stamp.removesuffix(" GMT")):
            assert parse_retry_after(text, now=now) == 30.0, text
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_retry_after_zero_still_waits_the_backoff() -> None:
    # "Retry-After: 0" (or a date in the past) must not turn retries into a tight loop: the
    # wait is the larger of the server's (capped) and our own jittered backoff.
    policy = RetryPolicy(retries=6, backoff_base=0.1, backoff_max=1.0, retry_after_cap=5.0)
    rng = random.Random(2)
    for attempt, ceiling in [(1, 0.1), (3, 0.4), (6, 1.0)]:
        delays = [policy.delay(attempt, 0.0, rng) for _ in range(500)]
        assert max(delays) <= ceiling
        assert sum(delays) / len(delays) > 0.4 * ceiling  # the jittered backoff, not 0
    assert 0.0 < policy.delay(1, 0.05, rng) <= 0.1
    assert policy.delay(1, 3.0, rng) == 3.0  # a longer Retry-After wins over the backoff


def test_backoff_is_full_jitter_under_an_exponential_ceiling_and_retry_after_is_capped() -> None:
    policy = RetryPolicy(retries=6, backoff_base=0.1, backoff_max=1.0, retry_after_cap=5.0)
    rng = random.Random(1)
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (6, 1.0)]:
        delays = [policy.delay(attempt, None, rng) for _ in range(500)]
        assert min(delays) >= 0.0 and max(delays) <= ceiling
        assert max(delays) > 0.8 * ceiling and min(delays) < 0.2 * ceiling  # spread: jitter
    assert policy.delay(1, 3.0, rng) == 3.0
    assert policy.delay(1, 600.0, rng) == 5.0


def test_retry_after_is_honoured_up_to_the_cap(no_backoff_waits: None) -> None:
    from batchscore.sources import retry

    retry.set_testing(False)  # timing is the point here
    with FeatureServer({"a": {"f0": 1.0}}, faults=Faults(p_429=1.0, retry_after="0.4")) as srv:
        started = time.monotonic()
        [[result]], stats = fetch_all(
            [http_source(srv.url)], ["a"], fetch=FetchSettings(retries=1, backoff_base=0.001)
        )
        honoured = time.monotonic() - started
        srv.faults = Faults(p_429=1.0, retry_after="30", retry_after_date=True)
        started = time.monotonic()
        [[capped]], _ = fetch_all(
            [http_source(srv.url)],
            ["a"],
            fetch=FetchSettings(retries=1, backoff_base=0.001, retry_after_cap=0.2),
        )
        capped_time = time.monotonic() - started
    assert result == Failure("http_429", 429, 2, True)
    assert capped == Failure("http_429", 429, 2, True)
    assert honoured >= 0.4
    assert 0.2 <= capped_time < 5.0
    assert stats.retries == 1
