"""The unit of work from input to output: a :class:`Chunk` of consecutive input rows.

Every stage moves whole chunks: the reader thread fills their ID columns, sources fill the
feature columns they own, the scorer predicts the whole matrix at once, and the writer writes
chunks in index order.  Per-row state lives in arrays (``status``, the feature ``matrix``, the
``scores``); only what is rare is kept per row, sparsely (``failures``).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """Why one input row produced no score."""

    id: str | None
    line: int
    stage: str  # input | fetch | score
    source: str | None
    reason: str
    status: int | None = None
    attempts: int = 0
    keep: tuple[Any, ...] | None = None  # the row's --keep values, when there are any


Matrix = npt.NDArray[np.float64]
"""float64, shape (rows, columns); NaN where a value is missing."""


@dataclass(frozen=True, slots=True)
class Explanations:
    """A chunk's top-K explanations, each array of shape (rows, K), row-aligned with the chunk.

    ``features`` are indices into the model's features; ``values`` the feature values the model
    saw (the matrix's, NaN = missing); ``contributions`` LightGBM's ``pred_contrib`` (raw margin)
    for the explained class.  Rows that were not scored hold NaN.
    """

    features: npt.NDArray[np.intp]
    values: Matrix
    contributions: Matrix

    def take(self, rows: npt.NDArray[np.intp]) -> Explanations:
        """Only ``rows``."""
        return Explanations(self.features[rows], self.values[rows], self.contributions[rows])

    def shifted(self, offset: int) -> Explanations:
        """The same, with feature indices moved by ``offset`` (into several models' names)."""
        return Explanations(self.features + offset, self.values, self.contributions)

    @staticmethod
    def side_by_side(parts: list[Explanations]) -> Explanations:
        """Several models' explanations of the same rows, one model's K columns after another."""
        if len(parts) == 1:
            return parts[0]
        return Explanations(
            np.hstack([p.features for p in parts]),
            np.hstack([p.values for p in parts]),
            np.hstack([p.contributions for p in parts]),
        )


class Status(enum.IntEnum):
    """What became of one row of a chunk (stored as ``uint8`` in :attr:`Chunk.status`)."""

    OK = 0  # features found; scored (or to be scored)
    INPUT = 1  # the input line is unusable (invalid UTF-8, ID too long, ...)
    NOT_FOUND = 2  # no source knows the ID
    FAILED = 3  # a source failed for the ID (timeout, http_500, malformed_response, ...)
    NO_FEATURES = 4  # found, but every model feature is missing


@dataclass(slots=True, eq=False)
class Chunk:
    """Consecutive input rows, from ``first_line`` to ``last_line`` of the input (inclusive).

    The span counts every physical line the reader consumed for this chunk, blank lines and
    rows filtered out (``--shard``, ``--dedupe``, committed by an earlier run) included, so the
    spans of consecutive chunks tile the input: committing a chunk commits its whole span.
    """

    index: int  # dense, from 0: the order chunks are written in (unless --unordered)
    first_line: int
    last_line: int
    lines: npt.NDArray[np.int64]  # (rows,) input line of each row, as an editor numbers them
    ids: list[str]  # (rows,) the IDs; "" where the input gave none
    keep: list[tuple[Any, ...]] | None  # (rows,) kept input columns, when --keep is given
    status: npt.NDArray[np.uint8]  # (rows,) a Status per row
    inputs: list[Sequence[Any]] | None = None  # an input source's columns: per column, the
    # (rows,) raw values as read (None in a row that is an input problem)
    failures: dict[int, ErrorRecord] = field(default_factory=dict)  # row -> why, sparse
    filtered: int = 0  # rows --shard / --dedupe left out (counted, never written)
    matrix: Matrix | None = None  # (rows, model features), filled by the sources; freed once
    # scored, unless --with-features writes it
    scores: Matrix | None = None  # (rows, score columns); rows not OK hold NaN
    explanations: Explanations | None = None  # with --explain K
    scored_at: float = 0.0  # when the scores were predicted (seconds since the epoch)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def read(self) -> int:
        """Input rows this chunk accounts for (filtered ones included)."""
        return len(self.ids) + self.filtered

    def ok(self) -> npt.NDArray[np.bool_]:
        """Mask of the rows that are (to be) scored."""
        return np.asarray(self.status == Status.OK, dtype=np.bool_)

    def fail(self, row: int, status: Status, record: ErrorRecord) -> None:
        """Mark one row as not scored, and why."""
        self.status[row] = status
        self.failures[row] = record

    def record(
        self,
        row: int,
        stage: str,
        source: str | None,
        reason: str,
        status: int | None = None,
        attempts: int = 0,
    ) -> ErrorRecord:
        """Why row ``row`` (its ID and input line) produced no score."""
        kept = None if self.keep is None else self.keep[row]
        return ErrorRecord(
            self.ids[row], int(self.lines[row]), stage, source, reason, status, attempts, kept
        )

    def error_records(self) -> list[ErrorRecord]:
        """The rows that were not scored, in input order."""
        return [self.failures[row] for row in sorted(self.failures)]


__all__ = ["Chunk", "Explanations", "Matrix", "Status"]
