"""CSV output reads back to the same IDs, kept values and doubles, whatever the IDs hold."""

from __future__ import annotations

import csv
import io

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from batchscore.sinks import Columns, ScoredBatch
from batchscore.sinks.encoders import CsvEncoder

texts = st.text(min_size=1, max_size=8)
scores = st.floats(allow_nan=False, allow_infinity=False, width=64)
rows = st.lists(
    st.tuples(texts, st.lists(scores, min_size=2, max_size=2), texts), min_size=1, max_size=20
)


@settings(max_examples=300, deadline=None)
@given(rows, st.integers(1, 2), st.booleans())
def test_csv_reads_back_exactly(
    data: list[tuple[str, list[float], str]], width: int, keep: bool
) -> None:
    names = ("score",) if width == 1 else ("score_0", "score_1")
    columns = Columns(names, ("segment",) if keep else ())
    batch = ScoredBatch(
        [i for i, _, _ in data],
        np.array([s[:width] for _, s, _ in data]),
        [(k,) for _, _, k in data] if keep else [()] * len(data),
    )
    encoder = CsvEncoder(columns)
    text = (encoder.header() + encoder.encode(batch)).decode()
    back = list(csv.reader(io.StringIO(text, newline="")))
    assert back[0] == list(columns.names)
    assert [r[0] for r in back[1:]] == [i for i, _, _ in data]
    assert [[float(x) for x in r[1 : 1 + width]] for r in back[1:]] == [
        s[:width] for _, s, _ in data
    ]
    if keep:
        assert [r[-1] for r in back[1:]] == [k for _, _, k in data]


values = st.floats(allow_infinity=False, width=64)  # NaN included: a missing feature value


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(texts, st.lists(values, min_size=3, max_size=3)), min_size=1, max_size=20)
)
def test_feature_values_read_back_exactly_and_missing_ones_are_empty(
    data: list[tuple[str, list[float]]],
) -> None:
    columns = Columns(("score",), features=("a", "b", "c"), audit=("model_version",))
    matrix = np.array([v for _, v in data], dtype=np.float64).reshape(len(data), 3)
    batch = ScoredBatch(
        [i for i, _ in data], np.zeros((len(data), 1)), features=matrix, audit=("f43e807c",)
    )
    encoder = CsvEncoder(columns)
    back = list(csv.reader(io.StringIO((encoder.header() + encoder.encode(batch)).decode())))
    assert back[0] == ["id", "score", "feature_a", "feature_b", "feature_c", "model_version"]
    cells = np.array([r[2:5] for r in back[1:]], dtype=object).reshape(len(data), 3)
    missing = cells == ""
    assert np.array_equal(missing, np.isnan(matrix))  # NaN is an empty field, never "nan"
    written = np.array([float(x) for x in cells[~missing]], dtype=np.float64)
    assert np.array_equal(written.view(np.uint64), matrix[~missing].view(np.uint64))
    assert {r[5] for r in back[1:]} == {"f43e807c"}
