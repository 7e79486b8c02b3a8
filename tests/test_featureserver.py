"""Fast tests of the fault-injecting feature server itself (tests/featureserver.py)."""

from __future__ import annotations

import selectors
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

try:
    from featureserver import Faults, FeatureServer, gzip_padded
except ImportError:  # tests/ became a package
    from tests.featureserver import Faults, FeatureServer, gzip_padded

SERVER_SCRIPT = Path(__file__).resolve().parent / "featureserver.py"
AWKWARD_IDS = ["a/b", "with space", "q?x=1", "hash#frag", "../etc/passwd", "%41", "ünï"]
DATA: dict[str, dict[str, float | int | str | None]] = {
    "C1": {"amount": 1.5, "count": 3, "plan": "basic", "missing": None},
    "C2": {"amount": 2.5, "count": 4, "plan": "plus", "missing": None},
    **{i: {"amount": 0.0, "count": 0, "plan": i, "missing": None} for i in AWKWARD_IDS},
}


@pytest.fixture
def srv() -> Iterator[FeatureServer]:
    with FeatureServer(DATA) as server:
        yield server


@pytest.fixture
def client(srv: FeatureServer) -> Iterator[httpx.Client]:
    # trust_env=False: a proxy from the environment must not intercept 127.0.0.1.
    with httpx.Client(base_url=srv.url, trust_env=False, timeout=5) as c:
        yield c


def test_get_found_and_not_found(srv: FeatureServer, client: httpx.Client) -> None:
    r = client.get("/features/C1")
    assert r.status_code == 200
    assert r.json() == {"id": "C1", "features": DATA["C1"]}
    r = client.get("/features/NOPE")
    assert r.status_code == 404
    assert r.json() == {"error": "not found"}
    stats = srv.stats()
    assert stats["requests_by_endpoint"]["features"] == 2
    assert stats["responses_by_status"] == {"200": 1, "404": 1}
    assert stats["id_requests"] == {"C1": 1, "NOPE": 1}


def test_percent_encoded_ids_round_trip_as_one_segment(
    srv: FeatureServer, client: httpx.Client
) -> None:
    for id_ in AWKWARD_IDS:
        r = client.get(f"/features/{quote(id_, safe='')}")
        assert r.status_code == 200, id_
        assert r.json()["id"] == id_
    stats = srv.stats()
    assert stats["decoded_ids"] == AWKWARD_IDS
    assert stats["paths"] == [f"/features/{quote(i, safe='')}" for i in AWKWARD_IDS]
    # An unencoded "/" makes two segments: not the id "a/b".
    assert client.get("/features/a/b").status_code == 404


def test_batch_list_and_object_shapes(srv: FeatureServer, client: httpx.Client) -> None:
    body = {"ids": ["C2", "NOPE", "C1"]}
    r = client.post("/batch", json=body)
    assert r.status_code == 200
    assert r.json() == {
        "results": [
            {"id": "C2", "features": DATA["C2"]},
            {"id": "C1", "features": DATA["C1"]},
        ]
    }
    r = client.post("/batch", params={"shape": "object"}, json=body)
    assert r.json() == {"results": {"C2": DATA["C2"], "C1": DATA["C1"]}}
    assert client.post("/batch", content=b"{not json").status_code == 400
    assert srv.stats()["id_requests"] == {"C1": 2, "C2": 2, "NOPE": 2}


def test_feast_column_major_with_not_found(srv: FeatureServer, client: httpx.Client) -> None:
    srv.faults.outside_max_age_ids = {"C2"}
    request = {
        "features": ["customer:amount", "customer:missing"],
        "entities": {"customer_id": ["C1", "NOPE", "C2"]},
        "full_feature_names": False,
    }
    r = client.post("/get-online-features", json=request)
    assert r.status_code == 200
    out = r.json()
    assert out["metadata"]["feature_names"] == ["customer_id", "amount", "missing"]
    entity, amount, missing = out["results"]
    assert entity["values"] == ["C1", "NOPE", "C2"]
    assert entity["statuses"] == ["PRESENT"] * 3
    assert amount["values"] == [1.5, None, 2.5]
    assert amount["statuses"] == ["PRESENT", "NOT_FOUND", "OUTSIDE_MAX_AGE"]
    assert missing["values"] == [None, None, None]
    assert missing["statuses"] == ["PRESENT", "NOT_FOUND", "OUTSIDE_MAX_AGE"]
    assert all(len(col["event_timestamps"]) == 3 for col in out["results"])

    srv.feast_null_status = "NULL_VALUE"
    request["full_feature_names"] = True
    out = client.post("/get-online-features", json=request).json()
    assert out["metadata"]["feature_names"] == [
        "customer_id",
        "customer__amount",
        "customer__missing",
    ]
    assert out["results"][2]["statuses"][0] == "NULL_VALUE"

    service = {"feature_service": "svc", "entities": {"customer_id": ["C1"]}}
    out = client.post("/get-online-features", json=service).json()
    assert out["metadata"]["feature_names"] == ["customer_id", "amount", "count", "plan", "missing"]


def test_faults_status_auth_and_admin_exemption(srv: FeatureServer, client: httpx.Client) -> None:
    srv.faults.p_500 = 1.0
    r = client.get("/features/C1")
    assert r.status_code == 500
    srv.faults = Faults(required_token="s3cret")
    assert client.get("/features/C1").status_code == 401
    ok = client.get("/features/C1", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert srv.auth_seen("Bearer s3cret")
    srv.faults = Faults(p_429=1.0, retry_after="7")
    r = client.post("/batch", json={"ids": ["C1"]})
    assert (r.status_code, r.headers["retry-after"]) == (429, "7")
    srv.faults = Faults(fail_all=True)
    assert client.get("/features/C1").status_code == 503
    stats = client.get("/_stats").json()  # never faulted, never counted
    assert stats["faults"] == {"fail_all": 1, "http_429": 1, "http_500": 1, "unauthorized": 1}
    assert stats["distinct_auth_values"] == 1
    assert "s3cret" not in str(stats)
    assert client.post("/_reset").status_code == 200
    assert srv.stats()["requests_total"] == 0


def test_byte_level_faults(srv: FeatureServer, client: httpx.Client) -> None:
    srv.faults = Faults(p_reset=1.0)
    with pytest.raises(httpx.TransportError):
        client.get("/features/C1")
    srv.faults = Faults(p_truncate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/features/C1")
    srv.faults = Faults(p_malformed=1.0)
    r = client.get("/features/C1")
    assert r.status_code == 200
    with pytest.raises(ValueError):
        r.json()


def test_raw_bodies_gzip_encoded_or_padded_to_any_size(
    srv: FeatureServer, client: httpx.Client
) -> None:
    body = b'{"features": {"amount": 1}}'
    srv.faults.raw_bodies = {"features": gzip_padded(body, 3_000_000)}
    srv.faults.raw_encodings = {"features": "gzip"}
    answer = client.get("/features/C1")  # httpx decodes it
    assert answer.headers["content-encoding"] == "gzip"
    assert answer.content == body + b" " * 3_000_000
    assert len(answer.headers["content-length"]) < 5  # a few KB on the wire
    srv.faults.raw_bodies = {"batch": body}
    srv.faults.raw_padding = {"batch": 5_000_000}  # written as the client reads
    with client.stream("POST", "/batch", content=b'{"ids": ["C1"]}') as streamed:
        assert int(streamed.headers["content-length"]) == len(body) + 5_000_000
        first, *rest = streamed.iter_raw()
        assert first.startswith(body) and not first[len(body) :].strip()
        assert len(first) + sum(map(len, rest)) == len(body) + 5_000_000


def test_fault_draws_are_deterministic_with_a_seed(client: httpx.Client) -> None:
    def statuses(seed: int) -> list[int]:
        with FeatureServer(DATA, Faults(p_503=0.5, seed=seed)) as s:
            return [client.get(f"{s.url}/features/C1").status_code for _ in range(20)]

    first = statuses(1)
    assert first == statuses(1)
    assert set(first) == {200, 503}


def test_max_inflight_counts_concurrent_requests(srv: FeatureServer) -> None:
    srv.faults.latency = 1.0
    start = threading.Barrier(5)  # every client made before any request goes (a loaded machine)

    def fetch(_: int) -> int:
        with httpx.Client(trust_env=False, timeout=10) as c:
            start.wait()
            return c.get(f"{srv.url}/features/C1").status_code

    with ThreadPoolExecutor(5) as pool:
        assert list(pool.map(fetch, range(5))) == [200] * 5
    stats = srv.stats()
    assert stats["max_inflight"] == 5
    assert stats["inflight"] == 0


def test_subprocess_prints_ready_and_serves(tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE feats (cid TEXT PRIMARY KEY, x REAL, y INTEGER)")
        con.execute("INSERT INTO feats VALUES ('K1', 0.5, NULL)")
    con.close()
    cmd = [sys.executable, str(SERVER_SCRIPT), "--db", str(db), "--table", "feats",
           "--key", "cid", "--latency", "0.001", "--seed", "3"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(timeout=10), "no READY line within 10 s"
        line = proc.stdout.readline()
        assert line.startswith("READY http://127.0.0.1:")
        url = line.split()[1]
        r = httpx.get(f"{url}/features/K1", trust_env=False, timeout=5)
        assert r.json() == {"id": "K1", "features": {"x": 0.5, "y": None}}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout.read() == ""  # exactly one line
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
