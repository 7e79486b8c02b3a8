"""Outputs: one module per format behind the small :class:`Sink` protocol.

The pipeline hands a sink whole :class:`ScoredBatch` es in output order.  A file sink writes to a
temporary name beside the final path and renames it into place only in :meth:`Sink.commit`, so a
file at the final path is always complete.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class ScoredBatch:
    """Scored rows, column by column.

    ``scores`` is float64 of shape (rows, score columns); ``keep`` has one tuple of kept input
    columns per row (None when nothing is kept); with ``--explain K``, ``explain_features``
    (object array of str), ``explain_values`` (float64, the feature values the model saw) and
    ``explain_contributions`` (float64) have shape (rows, K); with
    ``--with-features``, ``features`` is the float64 matrix the model saw (rows, model
    features); ``audit`` holds one value per audit column (``--add``), the same for every row.
    """

    ids: Sequence[str]
    scores: npt.NDArray[np.float64]
    keep: Sequence[tuple[Any, ...]] | None = None
    explain_features: npt.NDArray[np.object_] | None = None
    explain_values: npt.NDArray[np.float64] | None = None
    explain_contributions: npt.NDArray[np.float64] | None = None
    features: npt.NDArray[np.float64] | None = None
    audit: tuple[Any, ...] = ()

    def __len__(self) -> int:
        return len(self.ids)

    def columns(self, columns: Columns, kept_as_text: bool = False) -> list[Sequence[Any]]:
        """The output columns as Python values, in ``columns.names`` order (kept input values
        as parsed, or as text with ``kept_as_text``; a missing feature value as None)."""
        out: list[Sequence[Any]] = [self.ids]
        out.extend(self.scores.T.tolist())
        if columns.keep:
            kept = self.keep or []
            kept_columns = zip(*kept, strict=True) if kept else [[]] * len(columns.keep)
            if kept_as_text:
                kept_columns = [list(map(kept_text, c)) for c in kept_columns]
            out.extend(kept_columns)
        if columns.explain:
            assert self.explain_features is not None and self.explain_values is not None
            assert self.explain_contributions is not None
            for k in range(columns.explain * len(columns.explain_prefixes)):
                out.append(self.explain_features[:, k].tolist())
                out.append(nullable(self.explain_values[:, k]))
                out.append(self.explain_contributions[:, k].tolist())
        if columns.features:
            assert self.features is not None
            out.extend(nullable(self.features[:, j]) for j in range(len(columns.features)))
        for value in self.audit:
            out.append([value] * len(self.ids))
        return out


def nullable(values: npt.NDArray[np.float64]) -> list[float | None]:
    """A float64 column as Python values, NaN (a missing value) as None: empty in CSV, null in
    JSON, NULL in SQLite."""
    out: list[float | None] = values.tolist()
    missing = np.isnan(values)
    if missing.any():
        for i in np.flatnonzero(missing).tolist():
            out[i] = None
    return out


def kept_text(value: Any) -> str:
    """A kept input value as text: strings as they are, JSON null as empty, any other JSON
    value as its JSON text (``true``, ``0``, ``[1,2]``)."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    import orjson

    return orjson.dumps(value).decode()


FEATURE_PREFIX = "feature_"
"""``--with-features`` names a feature's column ``feature_<name>``: no model feature (``id``,
``score``) can collide with another output column."""


@dataclass(frozen=True)
class Columns:
    """The output columns: id, scores, kept input columns, explanations (top K), the model's
    features (``--with-features``, model order), audit columns (``--add``)."""

    scores: tuple[str, ...]
    keep: tuple[str, ...] = ()
    explain: int = 0  # K explanations per model
    features: tuple[str, ...] = ()  # model feature names, in model order
    audit: tuple[str, ...] = ()  # model_version(_NAME), scored_at (settings.AUDIT_COLUMNS)
    explain_prefixes: tuple[str, ...] = ("",)  # per model: explain_{prefix}{i}_... ("NAME_")
    models: tuple[tuple[str, str], ...] = ()  # (name, version) per model, for file metadata

    @property
    def names(self) -> tuple[str, ...]:
        """All column names in output order."""
        return tuple(name for name, _ in self.kinds())

    def kinds(self) -> list[tuple[str, str]]:
        """Each column's name and kind, in output order: ``text`` (id, explained feature
        names, audit values), ``float`` (scores, contributions, feature values) or ``kept``
        (kept input values: text in typed formats)."""
        out = [("id", "text")]
        out += [(name, "float") for name in self.scores]
        out += [(name, "kept") for name in self.keep]
        for prefix in self.explain_prefixes if self.explain else ():
            for i in range(1, self.explain + 1):
                out += [
                    (f"explain_{prefix}{i}_feature", "text"),
                    (f"explain_{prefix}{i}_value", "float"),
                    (f"explain_{prefix}{i}_contribution", "float"),
                ]
        out += [(FEATURE_PREFIX + name, "float") for name in self.features]
        out += [(name, "text") for name in self.audit]
        return out

    @property
    def only_scores(self) -> bool:
        """Whether rows hold nothing but an id and score columns (the encoders' fast path)."""
        return not (self.keep or self.explain or self.features or self.audit)


class Sink(Protocol):
    """A destination for scored rows."""

    async def open(self, resume_at: int | None = None) -> None:
        """Create the temporary output, or take over a stopped run's, cut back to ``resume_at``."""

    async def write(self, batch: ScoredBatch) -> None:
        """Append a batch."""

    async def sync(self) -> int:
        """Make what is written durable; return its length, the point a resume continues from."""

    async def commit(self) -> None:
        """The run succeeded: make the output final (flush, sync, rename into place)."""

    async def finish(self, resume_at: int) -> None:
        """A run stopped after every row was durable (``resume_at`` of them), during
        :meth:`commit`: do what is left of it (nothing when the output is in place already)."""

    async def abort(self) -> None:
        """The run stopped: flush what is written and leave it for ``--resume``."""


EXTENSIONS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".db": "sqlite",
    ".sqlite": "sqlite",
}
"""Output formats by file extension (before an optional ``.gz``)."""


def format_of_name(path: str) -> tuple[str | None, bool]:
    """The format an output's name says (None: no known extension) and whether it is gzipped."""
    lower = path.lower()
    gzip = lower.endswith(".gz")
    if gzip:
        lower = lower[:-3]
    for ext, fmt in EXTENSIONS.items():
        if lower.endswith(ext):
            return fmt, gzip
    return None, gzip


def output_format(path: str, given: str | None) -> tuple[str, bool]:
    """The output format and whether to gzip, from ``--format`` or the extension (CSV when
    neither says: stdout, a device)."""
    named, gzip = format_of_name(path)
    return given or named or "csv", gzip
