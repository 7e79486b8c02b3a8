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
