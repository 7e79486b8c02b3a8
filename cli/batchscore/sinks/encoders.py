"""Row encoders for the byte-stream formats: CSV and JSON lines.

Floats are written with Python's shortest round-trip representation (``repr``; orjson uses the
same algorithm), so every score reads back to the identical double.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

import orjson

from batchscore.sinks import Columns, ScoredBatch, kept_text


class RowEncoder(Protocol):
    """Turns batches into bytes of one format."""

    def header(self) -> bytes:
        """Bytes written once at the start of the output."""

    def encode(self, batch: ScoredBatch) -> bytes:
        """The bytes for a batch of rows."""


_NEEDS_QUOTES = re.compile(r'[,"\r\n]')


def csv_field(value: Any) -> str:
    """One CSV field: floats by ``repr``; quoted (RFC 4180) when it holds ``,`` ``"`` CR or LF.

    (The csv module, with ``\n`` line ends, leaves a lone CR unquoted, which splits the row
    for every reader: hence this.)
    """
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    text = value if isinstance(value, str) else kept_text(value)
    if _NEEDS_QUOTES.search(text):
        return '"' + text.replace('"', '""') + '"'
    return text


class CsvEncoder:
    """CSV with a header row; RFC 4180 quoting for IDs and kept columns that need it."""

    def __init__(self, columns: Columns) -> None:
        self.columns = columns

    def header(self) -> bytes:
        """The header row."""
        return (",".join(map(csv_field, self.columns.names)) + "\n").encode()

    def encode(self, batch: ScoredBatch) -> bytes:
        """CSV rows; floats via ``repr`` (shortest round-trip)."""
        ids = batch.ids
        plain_ids = not _NEEDS_QUOTES.search("".join(ids))
        if self.columns.only_scores and batch.scores.shape[1] == 1:
            # The common shape, an id and a score: one f-string a row.
            scores: list[float] = batch.scores[:, 0].tolist()
            if not plain_ids:
                ids = list(map(csv_field, ids))
            return "".join(f"{i},{s!r}\n" for i, s in zip(ids, scores, strict=True)).encode()
        fields = [list(map(csv_field, column)) for column in batch.columns(self.columns)]
        return "".join(f"{line}\n" for line in map(",".join, zip(*fields, strict=True))).encode()


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
        dumps = orjson.dumps
        newline = orjson.OPT_APPEND_NEWLINE
        return b"".join(
            dumps(dict(zip(names, row, strict=True)), option=newline)
            for row in zip(*batch.columns(self.columns), strict=True)
        )
