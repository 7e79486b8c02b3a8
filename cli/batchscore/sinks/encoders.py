"""Row encoders for the byte-stream formats: CSV and JSON lines.

Floats are written with Python's shortest round-trip representation (``repr``; orjson uses the
same algorithm), so every score reads back to the identical double.
"""

from __future__ import annotations

import csv
import io
from typing import Any, Protocol

import orjson

from batchscore.sinks import Columns, ScoredBatch


class RowEncoder(Protocol):
    """Turns batches into bytes of one format."""

    def header(self) -> bytes:
        """Bytes written once at the start of the output."""

    def encode(self, batch: ScoredBatch) -> bytes:
        """The bytes for a batch of rows."""


def rows(columns: Columns, batch: ScoredBatch) -> list[list[Any]]:
    """The output rows of a batch as lists of Python values, in column order."""
    scores: list[list[float]] = batch.scores.tolist()
    out: list[list[Any]] = []
    for i, ident in enumerate(batch.ids):
        row: list[Any] = [ident, *scores[i]]
        if columns.keep:
            row.extend(batch.keep[i])
        if columns.explain and batch.explanations is not None:
            for name, value in batch.explanations[i]:
                row.extend((name, value))
            row.extend([None, None] * (columns.explain - len(batch.explanations[i])))
        out.append(row)
    return out


class CsvEncoder:
    """CSV with a header row; RFC 4180 quoting for IDs and kept columns that need it."""

    def __init__(self, columns: Columns) -> None:
        self.columns = columns

    def header(self) -> bytes:
        """The header row."""
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(self.columns.names)
        return buffer.getvalue().encode()

    def encode(self, batch: ScoredBatch) -> bytes:
        """CSV rows; floats via ``repr`` (shortest round-trip)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerows(
            [repr(v) if isinstance(v, float) else ("" if v is None else v) for v in row]
            for row in rows(self.columns, batch)
        )
        return buffer.getvalue().encode()


class JsonlEncoder:
    """One JSON object per row."""

    def __init__(self, columns: Columns) -> None:
        self.columns = columns

    def header(self) -> bytes:
        """JSON lines have no header."""
        return b""

    def encode(self, batch: ScoredBatch) -> bytes:
        """One object per row, keys in column order."""
        names = self.columns.names
        return b"".join(
            orjson.dumps(dict(zip(names, row, strict=True)), option=orjson.OPT_APPEND_NEWLINE)
            for row in rows(self.columns, batch)
        )
