"""Fuzz: hostile CSV and JSON-lines inputs, and SQLite keys of random types and collations.

The property, for every generated case: the run never ends in an internal error (exit 1), and
every input record is accounted for exactly once, either as an output row or as an error
record with its line.  Found IDs score exactly as ``Booster.predict`` on the row *SQLite itself*
returns for that ID.

Fixed seeds in CI (``derandomize``); for a longer run, e.g. nightly::

    FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest tests/test_fuzz.py -p no:cacheprovider

(The text-format round trip is tests/test_roundtrip_property.py; random server bodies for the
HTTP and Feast sources are in their own test files.)
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sqlite3
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchscore.errors import BatchscoreError
from conftest import (
    ID_STORE_EMPTY,
    ID_STORE_KNOWN,
    IdStore,
    ScoreInProcess,
    TrainedModel,
    read_errors,
    read_output,
    sqlite_source,
    write_config,
)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

unicode_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
an_id = st.one_of(st.sampled_from([*ID_STORE_KNOWN, ID_STORE_EMPTY]), unicode_text)


def _run(
    score_in_process: ScoreInProcess, config: Path, data: bytes, name: str, **flags: object
) -> tuple[int, list[dict[str, object]], list[dict[str, object]]]:
    with tempfile.TemporaryDirectory() as folder:
        ids = Path(folder) / name
        ids.write_bytes(data)
        out = Path(folder) / "out.jsonl"
        try:
            run = score_in_process(config=config, ids=str(ids), output=str(out), **flags)
        except BatchscoreError as exc:  # a refusal of the whole input: exit 2, never 1
            assert int(exc.exit_status) == 2, exc
            return 2, [], []
        assert run.status in (0, 3), run.stderr
        return run.status, read_output(out), read_errors(Path(f"{out}.errors.jsonl"))


# -- CSV ------------------------------------------------------------------------------------------

csv_record = st.one_of(
    st.tuples(an_id, unicode_text).map(lambda r: ("row", r)),  # a proper record, maybe quoted
    st.sampled_from([b"\xff\xfe,x", b"a\rb,c", b"ok\xc3,1"]).map(lambda r: ("raw", r)),
    st.just(("short", b"")),  # a record with the ID column missing
)


@FUZZ
@given(records=st.lists(csv_record, max_size=25))
def test_any_csv_input_accounts_for_every_record_once(
    id_store: IdStore, score_in_process: ScoreInProcess, records: list[tuple[str, object]]
) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["x", "id", "note"])
    body = buffer.getvalue().encode()
    expected = 0
    for kind, value in records:
        if kind == "row":
            ident, note = value  # type: ignore[misc]
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerow(["1", ident, note])
            body += buffer.getvalue().encode()
            expected += 1
        elif kind == "raw":
            body += value + b"\n"  # type: ignore[operator]
            expected += 1
        else:
            body += b"1\n"
            expected += 1
    _, rows, errors = _run(score_in_process, id_store.config_path, body, "ids.csv", keep=("note",))
    lines = [e["line"] for e in errors]
    assert len(lines) == len(set(lines)), "no record is reported twice"
    assert len(rows) + len(errors) == expected
    for row in rows:
        assert row["id"] in ID_STORE_KNOWN
        assert float(row["score"]) == id_store.score(str(row["id"]))  # type: ignore[arg-type]


# -- JSON lines -----------------------------------------------------------------------------------

json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | unicode_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(unicode_text, inner, max_size=3),
    max_leaves=6,
)
json_line = st.one_of(
    st.fixed_dictionaries({"id": an_id}, optional={"keep": json_value}).map(
        lambda d: json.dumps(d).encode()
    ),
    st.fixed_dictionaries({"id": json_value}).map(lambda d: json.dumps(d).encode()),
    json_value.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=12).filter(lambda b: b"\n" not in b),
)


@FUZZ
@given(lines=st.lists(json_line, min_size=1, max_size=25))
def test_any_json_lines_input_accounts_for_every_line_once(
    id_store: IdStore, score_in_process: ScoreInProcess, lines: list[bytes]
) -> None:
    data = b"\n".join(lines) + b"\n"
    status, rows, errors = _run(score_in_process, id_store.config_path, data, "ids.jsonl")
    if status == 2:  # no line has an ID field at all: refused up front, nothing written
        return
    first = lines[0].removeprefix(b"\xef\xbb\xbf")  # a BOM opening the file is not content
    non_blank = sum(1 for line in [first, *lines[1:]] if line.strip())
    lines_failed = [e["line"] for e in errors]
    assert len(lines_failed) == len(set(lines_failed))
    assert len(rows) + len(errors) == non_blank
    for row in rows:
        assert float(row["score"]) == id_store.score(str(row["id"]))  # type: ignore[arg-type]


# -- SQLite keys of random types and collations ---------------------------------------------------

KEY_TYPES = [
    "INTEGER",
    "INTEGER PRIMARY KEY",
    "BIGINT",
    "TEXT",
    "TEXT COLLATE NOCASE",
    "TEXT COLLATE RTRIM",
    "NUMERIC",
    "REAL",
    "DECIMAL(10,2)",
    "BLOB",
    "",
]
key_value = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-1000, 1000),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=6),
)
query_id = st.one_of(
    key_value.map(str),
    st.sampled_from(["1_0", "٣", "99999999999999999999", " 7", "7 ", "0x10", "1e3", "-0", "abc"]),
)


@FUZZ
@given(
    declared=st.sampled_from(KEY_TYPES),
    keys=st.lists(key_value, min_size=1, max_size=8),
    asked=st.lists(query_id, min_size=1, max_size=12),
)
def test_an_id_finds_exactly_the_row_sqlite_finds(
    trained_models: dict[str, TrainedModel],
    score_in_process: ScoreInProcess,
    declared: str,
    keys: list[object],
    asked: list[str],
) -> None:
    model = trained_models["binary"]
    asked = [a for a in (x.strip() for x in asked) if a and "\n" not in a and "\r" not in a]
    if not asked:
        return
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "f.db"
        names = [f"f{j}" for j in range(model.features.shape[1])]
        with sqlite3.connect(db) as con:
            con.execute(
                f'CREATE TABLE features ("id" {declared}, '
                + ", ".join(f'"{n}" REAL' for n in names)
                + ")"
            )
            for i, key in enumerate(keys):
                with contextlib.suppress(sqlite3.Error):  # a duplicate/non-integer primary key
                    con.execute(
                        f"INSERT INTO features VALUES ({','.join('?' * (1 + len(names)))})",
                        (key, *map(float, model.features[i])),
                    )
            # What SQLite itself finds for each ID, asked as text (the first row it returns).
            truth = {}
            for ident in asked:
                row = con.execute(
                    "SELECT rowid, " + ", ".join(f'"{n}"' for n in names) + " FROM features "
                    'WHERE "id" = ? ORDER BY rowid LIMIT 1',
                    (ident,),
                ).fetchone()
                truth[ident] = row
        config = write_config(
            Path(folder) / "c.toml", model=model.model_path, sources=[sqlite_source(db)]
        )
        _, rows, errors = _run(
            score_in_process, config, "".join(f"{a}\n" for a in asked).encode(), "ids.txt"
        )
    assert len(rows) + len(errors) == len(asked)
    got = {str(row["id"]): float(row["score"]) for row in rows}  # type: ignore[arg-type]
    for ident in asked:
        row = truth[ident]
        if row is None or all(v is None for v in row[1:]):  # not found, or no_features
            assert ident not in got, f"{ident!r} found a row SQLite does not return"
        else:
            features = np.array([np.nan if v is None else v for v in row[1:]], dtype=np.float64)
            assert got[ident] == model.booster.predict(features.reshape(1, -1))[0]
