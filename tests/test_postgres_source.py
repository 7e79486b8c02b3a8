"""The postgres source against a real PostgreSQL server (``postgres`` fixture, tests/pgserver.py).

Scores are compared bit for bit with ``Booster.predict`` on the rows the tables hold; key types
are checked with the IDs a user might really send; failures (a server stopped mid-run, a wrong
password, a missing table) run the real command, since exit codes and what reaches the terminal
are the point there.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest

from batchscore.errors import ConfigError
from conftest import (
    ROOT,
    SAMPLE_CONFIG,
    SAMPLE_DIR,
    RunCli,
    ScoreInProcess,
    TrainedModel,
    batchscore_command,
    clean_environ,
    output_scores,
    read_errors,
    read_output,
    skip_without_postgres,
    write_config,
)
from pgserver import DATABASE, PASSWORD, PostgresServer
from servers import server_process
from test_resume_http import committed_ids
from test_scoring_exact import predict_like_a_pandas_user, sample_rows

skip_without_postgres()

FEATURES = [f"f{j}" for j in range(28)]  # the binary example's features


def missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def features_of(model: TrainedModel, rows: int) -> list[list[float | None]]:
    """The model's first feature rows, NaN as None (NULL)."""
    return [[None if math.isnan(v) else v for v in row] for row in model.features[:rows].tolist()]


def pg_source(server: PostgresServer, **keys: Any) -> dict[str, Any]:
    """A ``[[sources]]`` table reading the password from ``${PGPASSWORD}``, as a user would."""
    dsn = f"postgresql://scorer:${{PGPASSWORD}}@127.0.0.1:{server.port}/{DATABASE}"
    return {"name": "pg", "kind": "postgres", "dsn": dsn, **keys}


ENV = {"PGPASSWORD": PASSWORD}


def score(
    score_in_process: ScoreInProcess,
    tmp_path: Path,
    model_path: Path,
    sources: list[dict[str, Any]],
    ids: list[str],
    **sections: Any,
) -> tuple[int, dict[str, np.ndarray], dict[str, str], list[str]]:
    """Score ``ids`` in this process: status, scores by ID, error reasons by ID, output order."""
    config = write_config(tmp_path / "config.toml", model=model_path, sources=sources, **sections)
    (tmp_path / "ids.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    out = tmp_path / "scores.jsonl"
    run = score_in_process(
        config=config, environ=ENV, ids=str(tmp_path / "ids.txt"), output=str(out), max_failed=100
    )
    rows = read_output(out)
    scores = dict(zip([r["id"] for r in rows], output_scores(rows, ["score"])[:, 0], strict=True))
    errors_path = Path(f"{out}.errors.jsonl")
    errors = (
        {e["id"]: e["reason"] for e in read_errors(errors_path)} if errors_path.exists() else {}
    )
    return run.status, scores, errors, [r["id"] for r in rows]


# -- the tables ------------------------------------------------------------------------------------

CHURN_TYPES = {
    "tenure_days": "integer",
    "account_age_days": "bigint",
    "customer_age_years": "smallint",
    "plan": "text",
    "region": "text",
    "is_auto_renew": "boolean",
    "has_mobile_app": "boolean",
    "is_email_subscribed": "boolean",
    "avg_session_minutes": "real",
    "feature_adoption_ratio": "double precision",
    "discount_ratio": "double precision",
    "late_payment_ratio": "double precision",
    "avg_order_value": "numeric",
    "total_refunds_12m": "numeric",
    "monthly_spend": "numeric",
    "lifetime_value": "numeric",
}
CHURN_IDS = [f"C{n:06d}" for n in range(1, 301)]


def _pg_value(value: Any, sql_type: str) -> Any:
    if missing(value):
        return None
    if sql_type == "numeric":
        return Decimal(repr(float(value)))  # the float's shortest text: read back, it is the float
    if sql_type == "boolean":
        return bool(value)
    if sql_type in ("integer", "bigint", "smallint"):
        return int(value)
    if sql_type == "text":
        return str(value)
    return float(value)


@pytest.fixture(scope="module")
def churn(postgres: PostgresServer) -> pd.DataFrame:
    """The sample store's first 300 customers in a typed table (every kind of column, NULLs,
    an unseen and a missing category); returns the rows as ``Booster.predict`` must see them."""
    frame = sample_rows(CHURN_IDS).astype(object)
    edits = {
        (0, "plan"): "enterprise",  # not a training category: missing
        (1, "region"): None,
        (2, "plan"): None,
        (3, "region"): "mars",
        (4, "is_auto_renew"): None,  # a NULL boolean
        (5, "monthly_spend"): None,  # a NULL numeric
        (6, "nps_score"): None,
        (7, "customer_age_years"): None,
    }
    for (row, column), value in edits.items():
        frame.iloc[row, frame.columns.get_loc(column)] = value
    types = {c: CHURN_TYPES.get(c, "integer") for c in frame.columns}
    rows = [
        (ident, *(_pg_value(frame.at[ident, c], types[c]) for c in frame.columns))
        for ident in CHURN_IDS
    ]
    postgres.load("customer_features", [("customer_id", "text"), *types.items()], rows)
    # real is float4: the value PostgreSQL holds (and returns) is the float32 nearest the sample's
    expected = frame.copy()
    expected["avg_session_minutes"] = [
        None if missing(v) else float(np.float32(v)) for v in frame["avg_session_minutes"]
    ]
    return expected


@pytest.fixture(scope="module")
def binary_tables(postgres: PostgresServer, trained_models: dict[str, TrainedModel]) -> None:
    """The binary model's rows under keys of every type, split tables for queries, a slow
    function (``slow_ids(ids, seconds)``: sleeps, logs the IDs asked, returns them)."""
    model = trained_models["binary"]
    columns = [(f, "double precision") for f in FEATURES]
    for name, (sql_type, keys, _, _) in KEY_CASES.items():
        rows = [(k, *r) for k, r in zip(keys, features_of(model, len(keys)), strict=True)]
        postgres.load(f"keyed_{name}", [("id", sql_type), *columns], rows)
    rows = features_of(model, 60)
    postgres.load(
        "features",
        [("id", "text"), *columns],
        [(ident, *r) for ident, r in zip(model.ids, rows, strict=False)],
    )
    postgres.load(
        "first_half",
        [("id", "bigint"), *columns[:14]],
        [(1000 + i, *r[:14]) for i, r in enumerate(rows)],
    )
    postgres.load(
        "second_half",
        [("id", "bigint"), *columns[14:]],
        [(1000 + i, *r[14:]) for i, r in enumerate(rows)],
    )
    postgres.execute(SLOW_IDS)


SLOW_IDS = """
CREATE FUNCTION slow_ids(ids text[], seconds float8) RETURNS text[] LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(seconds);
    RAISE LOG 'batchscore asked: %', array_to_string(ids, ' ');
    RETURN ids;
END $$
"""

UUID = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
# name -> (SQL type, keys of the first rows, asked ID -> row it must find, IDs never found)
KEY_CASES: dict[str, tuple[str, list[Any], dict[str, int], list[str]]] = {
    "smallint": (
        "smallint",
        [10, 32767],
        {"10": 0, "0010": 0, "+10": 0, "32767": 1},
        ["32768", "-32769", "1_0", "٣", "abc", "-", "1e1", "0x0a", "10.0"],
    ),
    "integer": (
        "integer",
        [7, 2147483647, -5],
        {"7": 0, "007": 0, "2147483647": 1, "-5": 2, "-0005": 2},
        ["2147483648", "99999999999999999999", "+-7", "7x", "\u0667"],  # an Arabic-Indic 7
    ),
    "bigint": (
        "bigint",
        [9223372036854775807, -9223372036854775808, 42],
        {"9223372036854775807": 0, "-9223372036854775808": 1, "42": 2},
        ["9223372036854775808", "-9223372036854775809", "4 2", "42abc", "1" * 400],
    ),
    "text": (
        "text",
        ["007", "7", "a,b", "ünïcödé", "日本", 'say "hi"'],
        {"007": 0, "7": 1, "a,b": 2, "ünïcödé": 3, "日本": 4, 'say "hi"': 5},
        ["0007", "A,B", "a\x00b", "日"],
    ),
    "varchar": (
        "varchar(8)",
        ["C1", "C2"],
        {"C1": 0, "C2": 1},
        ["c1", "C1C1C1C1C1", "C"],
    ),
    "uuid": (
        "uuid",
        [uuid.UUID(UUID), uuid.UUID(int=0)],
        {
            UUID: 0,
            UUID.upper(): 0,
            "{" + UUID + "}": 0,
            UUID.replace("-", ""): 0,
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11": 0,  # a hyphen after any four digits
            "00000000-0000-0000-0000-000000000000": 1,
        },
        [
            UUID[:-1],
            "{" + UUID,
            "urn:uuid:" + UUID,  # Python's uuid takes it, PostgreSQL does not
            "g" + UUID[1:],
            UUID + "-",
            UUID.replace("-", "--", 1),
            "1",
        ],
    ),
}


# -- scores --------------------------------------------------------------------------------------


def test_scores_equal_booster_predict_with_nulls_booleans_numeric_and_categorical_text(
    churn: pd.DataFrame, postgres: PostgresServer, score_in_process: ScoreInProcess, tmp_path: Path
) -> None:
    sources = [pg_source(postgres, table="customer_features", key="customer_id", batch_size=64)]
    status, scores, errors, order = score(
        score_in_process,
        tmp_path,
        SAMPLE_DIR / "model.txt",
        sources,
        [*CHURN_IDS, "C999999"],
        fetch={"concurrency": 4},
        score={"batch_size": 50},
    )
    assert status == 0
    assert order == CHURN_IDS  # input order, every ID once
    assert errors == {"C999999": "not_found"}
    import lightgbm as lgb

    booster = lgb.Booster(model_file=str(SAMPLE_DIR / "model.txt"))
    expected = predict_like_a_pandas_user(booster, churn)
    assert np.array_equal(np.array([scores[i] for i in CHURN_IDS]), expected)
    # The edits are there: the unseen category and the NULLs changed those rows' scores.
    untouched = predict_like_a_pandas_user(booster, sample_rows(CHURN_IDS))
    assert not np.array_equal(expected[:8], untouched[:8])


@pytest.mark.parametrize("name", list(KEY_CASES))
def test_every_key_type_finds_what_postgresql_matches_and_nothing_else(
    binary_tables: None,
    postgres: PostgresServer,
    trained_models: dict[str, TrainedModel],
    score_in_process: ScoreInProcess,
    tmp_path: Path,
    name: str,
) -> None:
    model = trained_models["binary"]
    _, keys, finds, never = KEY_CASES[name]
    asked = [*finds, *never]
    # one query for all of them: odd IDs never break the batch they are in
    source = pg_source(postgres, table=f"keyed_{name}", key="id", batch_size=1000)
    status, scores, errors, _ = score(score_in_process, tmp_path, model.model_path, [source], asked)
    assert status == 0
    expected = model.booster.predict(model.features[: len(keys)])
    assert scores == {ident: expected[row] for ident, row in finds.items()}
    assert errors == dict.fromkeys(never, "not_found")


def test_an_id_the_database_encoding_cannot_hold_is_not_found_and_its_batch_is_scored(
    postgres: PostgresServer,
    trained_models: dict[str, TrainedModel],
    score_in_process: ScoreInProcess,
    tmp_path: Path,
) -> None:
    model = trained_models["binary"]
    postgres.execute(
        "CREATE DATABASE latin ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
        database="postgres",
    )
    keys = [f"K{i}" for i in range(10)] + ["é"]
    rows = [(k, *r) for k, r in zip(keys, features_of(model, len(keys)), strict=True)]
    columns = [("id", "text"), *((f, "double precision") for f in FEATURES)]
    postgres.load("features", columns, rows, database="latin")
    source = pg_source(postgres, table="features", key="id", batch_size=1000)
    source["dsn"] = source["dsn"].replace(f"/{DATABASE}", "/latin")
    asked = ["K0", "K1", "日本", *keys[2:]]  # LATIN1 has no 日: PostgreSQL refuses the batch
    status, scores, errors, _ = score(score_in_process, tmp_path, model.model_path, [source], asked)
    assert status == 0
    expected = model.booster.predict(model.features[: len(keys)])
    assert scores == dict(zip(keys, expected, strict=True))
    assert errors == {"日本": "not_found"}


def test_a_query_source_joins_two_tables_and_casts_the_id_array(
    binary_tables: None,
    postgres: PostgresServer,
    trained_models: dict[str, TrainedModel],
    score_in_process: ScoreInProcess,
    tmp_path: Path,
) -> None:
    model = trained_models["binary"]
    columns = ", ".join(f"{'a' if j < 14 else 'b'}.f{j}" for j in range(28))
    query = (
        f"SELECT a.id AS account, {columns} FROM first_half a JOIN second_half b USING (id) "
        "WHERE a.id = ANY($1::bigint[]) -- a comment to the end of the query"
    )
    source = pg_source(postgres, query=query, key="account", batch_size=16)
    asked = [str(1000 + i) for i in range(60)] + ["01000", "abc", "5", "1e3"]
    status, scores, errors, _ = score(score_in_process, tmp_path, model.model_path, [source], asked)
    assert status == 0
    expected = model.booster.predict(model.features[:60])
    assert scores == {**{str(1000 + i): expected[i] for i in range(60)}, "01000": expected[0]}
    assert errors == dict.fromkeys(["abc", "5", "1e3"], "not_found")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("SELECT id, f0 FROM first_half WHERE id = ANY($1)", r"cast it .* ANY\(\$1::bigint\[\]\)"),
        ("SELECT id, f0 FROM first_half", r"must use \$1"),
        ("SELECT id, f0 FROM first_half WHERE id = ANY($1::bigint[]) AND f0 > $2", "exactly one"),
        ("SELECT id, f0 FROM first_hlaf WHERE id = ANY($1::bigint[])", "does not prepare"),
        ("SELECT f0, f0 FROM first_half WHERE id = ANY($1::bigint[])", "two columns named 'f0'"),
        ("SELECT f0::text, id FROM first_half WHERE id = ANY($1::bigint[])", "no key column"),
    ],
)
def test_a_query_that_breaks_the_contract_is_a_config_error_before_any_output(
    binary_tables: None,
    postgres: PostgresServer,
    trained_models: dict[str, TrainedModel],
    score_in_process: ScoreInProcess,
    tmp_path: Path,
    query: str,
    message: str,
) -> None:
    key = {"key": "account"} if "f0::text" in query else {}
    source = pg_source(postgres, query=query, **key)
    with pytest.raises(ConfigError, match=message):
        score(score_in_process, tmp_path, trained_models["binary"].model_path, [source], ["1000"])
    assert not (tmp_path / "scores.jsonl").exists()


def test_statement_timeout_fails_the_slow_queries_ids_after_retries(
    binary_tables: None,
    postgres: PostgresServer,
    trained_models: dict[str, TrainedModel],
    score_in_process: ScoreInProcess,
    tmp_path: Path,
) -> None:
    query = "SELECT t.* FROM unnest(slow_ids($1, 0.5)) AS a(id) JOIN features t ON t.id = a.id;\n"
    model = trained_models["binary"]
    # 0.25 s: the slow query (0.5 s) always passes it, and the source's own check of the query
    # at open (no IDs) stays under it on a loaded machine (0.05 s did not, at load 14).
    source = pg_source(postgres, query=query, statement_timeout=0.25)
    status, scores, errors, _ = score(
        score_in_process,
        tmp_path,
        model.model_path,
        [source],
        list(model.ids[:3]),
        fetch={"retries": 1, "backoff_base": 0.001},
    )
    assert (status, scores) == (0, {})  # within --max-failed 100
    assert errors == dict.fromkeys(model.ids[:3], "statement_timeout")


# -- with other sources, and `check` ---------------------------------------------------------------


def test_a_postgres_source_joined_with_an_http_source_scores_exactly(
    binary_tables: None,
    postgres: PostgresServer,
    trained_models: dict[str, TrainedModel],
    score_in_process: ScoreInProcess,
    tmp_path: Path,
) -> None:
    model = trained_models["binary"]
    ids = list(model.ids[:60])
    served = {  # the HTTP service has f14..f27, PostgreSQL f0..f13
        ident: {f: None if math.isnan(v) else float(v) for f, v in zip(FEATURES, row, strict=True)}
        for ident, row in zip(ids, model.features[:60].tolist(), strict=True)
    }
    served = {i: {f: v for f, v in row.items() if int(f[1:]) >= 14} for i, row in served.items()}
    with server_process(tmp_path, served) as srv:
        http = {
            "name": "profile",
            "kind": "http",
            "mode": "batch",
            "url": f"{srv.url}/batch",
            "batch_size": 25,
        }
        pg = pg_source(postgres, table="features", key="id", columns=FEATURES[:14])
        status, scores, errors, order = score(
            score_in_process, tmp_path, model.model_path, [pg, http], [*ids, "b-missing"]
        )
    assert status == 0
    assert order == ids
    assert np.array_equal([scores[i] for i in ids], model.booster.predict(model.features[:60]))
    assert errors == {"b-missing": "not_found"}


def test_check_covers_a_postgres_source(
    binary_tables: None,
    postgres: PostgresServer,
    trained_models: dict[str, TrainedModel],
    run_cli: RunCli,
    tmp_path: Path,
) -> None:
    model = trained_models["binary"]
    config = write_config(
        tmp_path / "c.toml",
        model=model.model_path,
        sources=[pg_source(postgres, table="features", key="id")],
    )
    ids = model.ids_file(tmp_path / "ids.txt")
    code, out, err = run_cli("check", "-c", config, ids, env=ENV)
    text = out.decode()
    assert code == 0, text + err
    assert "pg (postgres, table): reachable" in text
    assert "20 found, 0 not found of 20" in text
    assert "every one of the 28 model features came from a source" in text
    assert "eta" in text


def test_the_example_config_on_the_loaded_sample_scores_like_the_sqlite_sample(
    postgres: PostgresServer, run_cli: RunCli, tmp_path: Path
) -> None:
    postgres.execute("CREATE DATABASE sample", database="postgres")  # its own customer_features
    owner = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{postgres.port}/sample"
    loaded = subprocess.run(
        [sys.executable, str(ROOT / "sample_data" / "load_postgres.py"), owner],
        capture_output=True,
        text=True,
        check=False,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert "copied 6,000 rows into customer_features" in loaded.stdout
    example = (ROOT / "configs" / "postgres.toml").read_text()
    config = tmp_path / "postgres.toml"
    server = f"127.0.0.1:{postgres.port}/sample"
    config.write_text(example.replace("127.0.0.1:5432/features", server))
    ids = ROOT / "sample_data" / "ids_small.txt"
    code, out, err = run_cli("check", "-c", config, ids, env=ENV, cwd=ROOT)
    assert code == 0, out.decode() + err
    pg = run_cli("score", ids, "-c", config, "-o", tmp_path / "pg.csv", env=ENV, cwd=ROOT)
    lite = run_cli("score", ids, "-c", SAMPLE_CONFIG, "-o", tmp_path / "lite.csv", cwd=ROOT)
    assert pg.returncode == lite.returncode == 3, pg.stderr  # one ID is in neither store
    assert (tmp_path / "pg.csv").read_bytes() == (tmp_path / "lite.csv").read_bytes()


# -- failures, through the real command ------------------------------------------------------------

WRONG = "wr0ng/pa55@e4c1b7"  # in a dsn it must be percent-encoded: both forms must stay hidden


def test_a_wrong_password_stops_at_once_with_exit_4_and_appears_nowhere(
    binary_tables: None,
    postgres: PostgresServer,
    trained_models: dict[str, TrainedModel],
    run_cli: RunCli,
    tmp_path: Path,
) -> None:
    model = trained_models["binary"]
    config = write_config(
        tmp_path / "c.toml",
        model=model.model_path,
        sources=[pg_source(postgres, table="features", key="id")],
    )
    ids = model.ids_file(tmp_path / "ids.txt")
    started = time.monotonic()
    code, out, err = run_cli(
        "score",
        ids,
        "-c",
        config,
        "-o",
        "scores.csv",
        "--debug",
        "--report",
        "report.json",
        "--metrics",
        "run.prom",
        env={"PGPASSWORD": quote(WRONG, safe="")},
    )
    assert code == 4, err
    assert time.monotonic() - started < 20  # no retries, no backoff
    assert 'rejected our credentials (password authentication failed for user "scorer")' in err
    assert "Traceback" in err  # --debug: the traceback is shown, and it is masked too
    assert json.loads((tmp_path / "report.json").read_text())["exit_code"] == 4
    checked = run_cli("check", "-c", config, env={"PGPASSWORD": quote(WRONG, safe="")})
    assert checked.returncode == 4
    assert "pg (postgres, table): PostgreSQL at 127.0.0.1" in checked.stdout.decode()
    assert "rejected our credentials" in checked.stdout.decode()
    for secret in (WRONG, quote(WRONG, safe=""), PASSWORD):
        for blob in [out, err.encode(), checked.stdout, checked.stderr.encode()] + [
            p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()
        ]:
            assert secret.encode() not in blob


def test_a_missing_table_or_column_is_exit_2_with_a_suggestion_and_no_grant_is_exit_4(
    binary_tables: None,
    postgres: PostgresServer,
    trained_models: dict[str, TrainedModel],
    run_cli: RunCli,
    tmp_path: Path,
) -> None:
    model = trained_models["binary"]
    ids = model.ids_file(tmp_path / "ids.txt")
    postgres.load("private", [("id", "text"), *((f, "real") for f in FEATURES)], [])
    postgres.execute("REVOKE SELECT ON private FROM scorer")
    for keys, code, message in [
        ({"table": "featuers", "key": "id"}, 2, "no table 'featuers' in the search_path"),
        ({"table": "features", "key": "ID"}, 2, "no key column 'ID' (did you mean 'id'?)"),
        ({"table": "features", "key": "id", "columns": ["f0", "f_1"]}, 2, "no column 'f_1'"),
        ({"table": "features", "key": "id", "schema": "pubic"}, 2, "no schema 'pubic'"),
        ({"table": "features", "key": "f0"}, 2, "the key column 'f0' is float8; keys must be"),
        ({"table": "private", "key": "id"}, 4, "refused access (permission denied for table"),
    ]:
        config = write_config(
            tmp_path / "c.toml", model=model.model_path, sources=[pg_source(postgres, **keys)]
        )
        code_seen, _, err = run_cli("score", ids, "-c", config, "-o", "out.csv", env=ENV)
        assert code_seen == code, err
        assert message in err
        assert code == 4 or "did you mean" in err or "keys must be" in err
        assert "Traceback" not in err
        assert not (tmp_path / "out.csv").exists()
    source = pg_source(postgres, table="features", key="id")
    source["dsn"] = source["dsn"].replace(f"/{DATABASE}", "/featurs")
    config = write_config(tmp_path / "c.toml", model=model.model_path, sources=[source])
    code_seen, _, err = run_cli("score", ids, "-c", config, "-o", "out.csv", env=ENV)
    assert code_seen == 2, err
    assert 'database "featurs" does not exist' in err


def test_the_server_stopped_mid_run_exit_4_then_resume_scores_each_id_exactly_once(
    trained_models: dict[str, TrainedModel], tmp_path: Path
) -> None:
    model = trained_models["binary"]
    server = PostgresServer()  # its own: this test stops it
    try:
        server.start()
        server.setup()
        rows = features_of(model, 300)
        columns = [("id", "text"), *((f, "double precision") for f in FEATURES)]
        server.load("features", columns, [(i, *r) for i, r in zip(model.ids, rows, strict=True)])
        server.execute(SLOW_IDS)
        query = (  # 0.1 s a query: 30 queries of 10 IDs, 2 at a time, take 1.5 s
            "SELECT t.* FROM unnest(slow_ids($1, 0.1)) AS a(id) JOIN features t ON t.id = a.id"
        )
        config = write_config(
            tmp_path / "c.toml",
            model=model.model_path,
            sources=[pg_source(server, query=query, batch_size=10)],
            fetch={"concurrency": 2, "retries": 3, "backoff_base": 0.01},
            score={"batch_size": 10},
        )
        ids = model.ids_file(tmp_path / "ids.txt")
        out = tmp_path / "scores.csv"
        command = [*batchscore_command(), "score", str(ids), "-c", str(config), "-o", str(out)]
        env = clean_environ(ENV)
        proc = subprocess.Popen(
            [*command, "--report", "stopped.json"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while not committed_ids(out):  # some rows committed, many still to fetch
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        server.stop("immediate")  # as if it crashed: connections cut, new ones refused
        _, stderr = proc.communicate(timeout=60)
        err = stderr.decode()
        assert proc.returncode == 4, err
        assert "lost PostgreSQL at 127.0.0.1" in err and "rerun with --resume" in err
        assert "Traceback" not in err and PASSWORD not in err
        assert json.loads((tmp_path / "stopped.json").read_text())["retries"] >= 3
        committed = committed_ids(out)
        assert 0 < len(committed) < 300 and not out.exists()

        server.start()
        log_start = server.log.stat().st_size
        resumed = subprocess.run(
            [*command, "--resume"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert resumed.returncode == 0, resumed.stderr.decode()
        log = server.log.read_text(errors="replace")[log_start:]
    finally:
        server.close()
    output = read_output(out)
    assert [row["id"] for row in output] == list(model.ids)  # each once, in input order
    assert np.array_equal(
        output_scores(output, ["score"])[:, 0], model.booster.predict(model.features)
    )
    asked = {
        ident
        for line in log.splitlines()
        if "batchscore asked: " in line
        for ident in line.split("batchscore asked: ", 1)[1].split()
    }
    assert asked and not asked & committed  # the resumed run never fetched committed IDs


def test_under_auto_the_pool_size_is_the_ceiling_of_the_sources_limit(
    churn: pd.DataFrame, postgres: PostgresServer, score_in_process: ScoreInProcess, tmp_path: Path
) -> None:
    source = pg_source(
        postgres, table="customer_features", key="customer_id", batch_size=8, pool_size=2
    )
    config = write_config(
        tmp_path / "config.toml", model=SAMPLE_DIR / "model.txt", sources=[source]
    )
    (tmp_path / "ids.txt").write_text("".join(f"{i}\n" for i in CHURN_IDS), encoding="utf-8")
    report = tmp_path / "report.json"
    run = score_in_process(
        config=config,
        environ=ENV,
        ids=str(tmp_path / "ids.txt"),
        output=str(tmp_path / "scores.jsonl"),
        report=str(report),
    )
    assert run.status == 0, run.stderr
    body = json.loads(report.read_text())
    assert body["scored"] == len(CHURN_IDS)
    assert body["concurrency"]["pg"]["high"] == 2  # started at its pool size, never above
