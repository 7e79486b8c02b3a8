"""Property: any ID list round-trips.  Every non-blank input line gives exactly one output row or
exactly one error record, in input order, with the ID as written (surrounding whitespace aside)
and, when scored, exactly the score ``Booster.predict`` gives for that ID's stored row.

Runs through the real settings layer and job in this process (process behaviour is not the
point here, and a subprocess per example would be too slow).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchscore.errors import UsageError
from batchscore.idrows import UNIFORM_MIN
from conftest import (
    ID_STORE_EMPTY,
    ID_STORE_KNOWN,
    IdStore,
    ScoreInProcess,
    read_errors,
    read_output,
)

INVALID_UTF8 = (b"\xff", b"\xfe\xfeab", b"ok\xc3", b"\xed\xa0\x80")  # the last: a UTF-8 surrogate

# Any text but a line break: commas, quotes, tabs, unicode spaces, NUL, a BOM, emoji...
free_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"))
line = st.one_of(
    st.sampled_from([*ID_STORE_KNOWN, ID_STORE_EMPTY]).map(str.encode),  # in the store
    st.sampled_from(ID_STORE_KNOWN).map(lambda i: f" \t{i}\u3000\r".encode()),  # padded
    free_text.map(str.encode),  # almost never in the store
    st.sampled_from(["", " ", "\t\r", "\u00a0"]).map(str.encode),  # blank lines
    st.integers(1020, 1030).map(lambda n: b"k" * n),  # around the length limit
    st.sampled_from(INVALID_UTF8),
)


def expected_outcome(raw: bytes, number: int) -> tuple[str, str | None]:
    """("blank" | "scored" | reason, the ID) for one input line, as SPEC.md describes it."""
    if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return "invalid_utf8", None
    if not text:
        return "blank", None
    if len(text) > 1024:
        return "id_too_long", text
    if text == ID_STORE_EMPTY:
        return "no_features", text
    if text in ID_STORE_KNOWN:
        return "scored", text
    return "not_found", text


@settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(lines=st.lists(line, max_size=30), fmt=st.sampled_from(["csv", "jsonl"]))
def test_every_input_line_gives_one_row_or_one_error_in_order(
    id_store: IdStore, score_in_process: ScoreInProcess, lines: list[bytes], fmt: str
) -> None:
    expected = [(n, *expected_outcome(raw, n)) for n, raw in enumerate(lines, start=1)]
    expected = [e for e in expected if e[1] != "blank"]
    # 20 or more lines, every one an input problem of one kind: the file is refused (exit 2).
    refused = len(expected) >= UNIFORM_MIN and len({e[1] for e in expected}) == 1
    refused = refused and expected[0][1] in ("invalid_utf8", "id_too_long")
    with tempfile.TemporaryDirectory() as folder:
        ids = Path(folder) / "ids.txt"
        ids.write_bytes(b"\n".join(lines))
        out = Path(folder) / f"scores.{fmt}"
        if refused:
            with pytest.raises(UsageError, match="every one of"):
                score_in_process(config=id_store.config_path, ids=str(ids), output=str(out))
            return
        run = score_in_process(config=id_store.config_path, ids=str(ids), output=str(out))
        rows = read_output(out)
        errors = read_errors(Path(f"{out}.errors.jsonl"))

    scored = [(n, ident) for n, outcome, ident in expected if outcome == "scored"]
    failed = [(n, outcome) for n, outcome, _ in expected if outcome != "scored"]

    assert [row["id"] for row in rows] == [ident for _, ident in scored]
    assert [float(row["score"]) for row in rows] == [id_store.score(i) for _, i in scored]
    assert [(e["line"], e["reason"]) for e in errors] == failed
    for record, (_, outcome, ident) in zip(
        errors, [e for e in expected if e[1] != "scored"], strict=True
    ):
        assert (
            record["stage"]
            == {
                "invalid_utf8": "input",
                "id_too_long": "input",
                "not_found": "fetch",
                "no_features": "score",
            }[outcome]
        )
        if outcome in ("not_found", "no_features"):
            assert record["id"] == ident
    assert run.status == (3 if failed else 0)
    assert run.outcome.stats.scored == len(scored)
