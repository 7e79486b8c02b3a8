"""Score and feature distributions of a run: one histogram per score column and per feature.

Every run keeps, per model, a histogram of each score column and of each model feature: fixed
bin edges chosen once from the model file (:mod:`batchscore.edges`), counts added chunk by
chunk in the scoring thread (vectorised: a lookup grid per feature, then one ``bincount``),
merged by the writer in chunk order, across Dask partitions by the driver, and carried by the
run state across a stop and ``--resume``.  Memory is O(bins): never a value per row.

Besides the counts each histogram keeps its missing values (NaN) and how far its end bins are
taken to reach (the feature's training range, the scores' range), so that the cumulative
distribution can be interpolated within every bin, the end bins included (what
:mod:`batchscore.drift` compares).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


CELLS = 512
"""Cells of the per-column lookup grid that finds a value's bin in O(1) (see :class:`Layout`)."""


@dataclass(frozen=True, eq=False)
class Layout:
    """The columns of one model's histograms and their bin edges: score columns, then the
    model's features, in its order.  Column ``i`` has ``len(edges[i]) + 1`` bins,
    ``(-inf, e0], (e0, e1], ..., (e_last, +inf)`` (LightGBM's own ``<=`` goes left), stored
    from ``offsets[i]`` in one flat array; ``bounds[i]`` are the values the end bins are taken
    to reach (the training range, the scores' range) when a share is interpolated in them."""

    model: str
    version: str
    scale: str  # "output" (probabilities, predictions) or "raw" (--raw-score margins)
    names: tuple[str, ...]
    kinds: tuple[str, ...]  # "score" | "feature"
    edges: tuple[Floats, ...]
    bounds: tuple[tuple[float, float], ...]

    @functools.cached_property
    def offsets(self) -> npt.NDArray[np.intp]:
        """Where each column's bins start in the flat counts (and, last, their total)."""
        sizes = [len(e) + 1 for e in self.edges]
        return np.concatenate([[0], np.cumsum(sizes)]).astype(np.intp)

    @functools.cached_property
    def lookup(self) -> tuple[Floats, Floats, npt.NDArray[np.intp], Floats]:
        """A grid per column that finds a value's bin without a binary search.

        Column ``j``'s range ``[e0, e_last]`` is cut into :data:`CELLS` equal cells; a cell
        gives the flat index of a bin at or below the value's (the first edge of the cell
        before it, so that rounding never overshoots), and a short walk up the flat edges
        (each column's ending in +inf) finds the bin.  Returns per column the grid's start and
        cells per unit, the (columns, CELLS + 2) table of flat indices, and the flat edges.
        """
        width = len(self.edges)
        start = np.zeros(width)
        scale = np.zeros(width)
        table = np.zeros((width, CELLS + 2), np.intp)
        flat = np.concatenate([np.append(e, np.inf) for e in self.edges]) if width else np.zeros(0)
        for j, (edges, kind) in enumerate(zip(self.edges, self.kinds, strict=True)):
            table[j] = self.offsets[j]
            if len(edges) < 2 or not edges[-1] > edges[0] or kind == "score":
                continue  # a score's edges crowd near 0 and 1: a binary search (one column)
            start[j], scale[j] = edges[0], CELLS / (edges[-1] - edges[0])
            # Cell c (1..CELLS) starts at edges[0] + (c - 1) / scale: the edges below a hair
            # under that, so that no rounding of a value's cell can overshoot its bin.
            lefts = edges[0] + (np.arange(CELLS) - 1e-6) / scale[j]
            table[j, 1:-1] += np.searchsorted(edges, lefts, side="left")
            table[j, -1] += np.searchsorted(edges, edges[-1], side="left")  # >= the last edge
        return start, scale, table, flat

    def __getstate__(self) -> dict[str, Any]:
        # Not the cached lookup grid: a partition's result travels to the driver without it.
        return {k: v for k, v in self.__dict__.items() if k not in ("lookup", "offsets")}

    def same_bins(self, other: Layout) -> bool:
        """Whether counts of ``other`` can be added to counts of this layout."""
        return (
            self.names == other.names
            and self.scale == other.scale
            and all(np.array_equal(a, b) for a, b in zip(self.edges, other.edges, strict=True))
        )


class Distribution:
    """One model's histograms (mutable; merged by the writer, on the event loop's thread)."""

    def __init__(
        self, layout: Layout, counts: Ints | None = None, missing: Ints | None = None
    ) -> None:
        self.layout = layout
        self.counts = np.zeros(int(layout.offsets[-1]), np.int64) if counts is None else counts
        self.missing = np.zeros(len(layout.names), np.int64) if missing is None else missing

    @classmethod
    def observe(cls, layout: Layout, scores: Floats, features: Floats) -> Distribution:
        """The histograms of one chunk's scored rows: ``scores`` (rows, score columns) and
        ``features`` (rows, model features), float64, NaN = missing.

        Vectorised over the whole block (a bin search per value costs a few times more: see
        :attr:`Layout.lookup`); NaN lands in each column's first bin and is moved to
        ``missing``.
        """
        block = np.concatenate([scores, features], axis=1) if scores.size else features
        width = block.shape[1]
        if width != len(layout.names):
            raise ValueError("a block's columns do not match the layout")
        start, scale, table, flat = layout.lookup
        with np.errstate(invalid="ignore", over="ignore"):  # inf * 0, 1e308 * cells
            cell = (block - start) * scale
        np.fmax(cell, -1.0, out=cell)  # NaN (missing, or inf * 0) too: the first cell
        np.minimum(cell, CELLS, out=cell)  # from -1 to CELLS: cast, then + 1, 0 to CELLS + 1
        index = cell.astype(np.intp)
        index += np.arange(width) * (CELLS + 2) + 1  # into the flat table
        where = table.ravel()[index.ravel()]  # the bin of each value's cell start
        values = block.ravel()
        moving = np.flatnonzero(flat[where] < values)  # past an edge within its cell
        where[moving] += 1
        moving = moving[flat[where[moving]] < values[moving]]  # past two: edges crowd there
        if len(moving):
            columns = moving % width
            for j in np.unique(columns).tolist():  # a binary search for those few
                mine = moving[columns == j]
                found = np.searchsorted(layout.edges[j], values[mine], side="left")
                where[mine] = layout.offsets[j] + found
        counts = np.bincount(where, minlength=int(layout.offsets[-1])).astype(np.int64)
        gaps = np.flatnonzero(np.isnan(values)) % width
        missing = np.bincount(gaps, minlength=width).astype(np.int64)
        counts[layout.offsets[:-1]] -= missing  # NaN compared false: it stayed in bin 0
        return cls(layout, counts, missing)

    def add(self, other: Distribution) -> None:
        """Count ``other``'s rows too (same layout)."""
        self.counts += other.counts
        self.missing += other.missing

    def copy(self) -> Distribution:
        """An independent copy."""
        return Distribution(self.layout, self.counts.copy(), self.missing.copy())

    @property
    def rows(self) -> int:
        """Rows counted (every column counts every row)."""
        if not self.layout.names:
            return 0
        return int(self.counts[: self.layout.offsets[1]].sum() + self.missing[0])

    def histogram(self, i: int) -> Histogram:
        """Column ``i``'s histogram."""
        start, end = self.layout.offsets[i], self.layout.offsets[i + 1]
        low, high = self.layout.bounds[i]
        return Histogram(
            self.layout.edges[i], self.counts[start:end], int(self.missing[i]), low, high
        )

    def column(self, name: str, kind: str) -> Histogram | None:
        """The histogram of a column by its name and kind, if this model has it."""
        for i, (n, k) in enumerate(zip(self.layout.names, self.layout.kinds, strict=True)):
            if n == name and k == kind:
                return self.histogram(i)
        return None

    def to_dict(self) -> dict[str, Any]:
        """The report's (and the run state's) form: every histogram's edges and counts."""
        columns: dict[str, dict[str, Any]] = {"scores": {}, "features": {}}
        for i, (name, kind) in enumerate(zip(self.layout.names, self.layout.kinds, strict=True)):
            columns["scores" if kind == "score" else "features"][name] = self.histogram(i).to_dict()
        return {
            "name": self.layout.model,
            "version": self.layout.version,
            "scale": self.layout.scale,
            "rows": self.rows,
            **columns,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Distribution:
        """Read :meth:`to_dict`'s form back (a report's, or the run state's); ValueError,
        KeyError or TypeError when it is not that."""
        names: list[str] = []
        kinds: list[str] = []
        hists: list[Histogram] = []
        for kind, key in (("score", "scores"), ("feature", "features")):
            for name, body in dict(data[key]).items():
                names.append(str(name))
                kinds.append(kind)
                hists.append(Histogram.from_dict(body))
        layout = Layout(
            str(data.get("name", "")),
            str(data.get("version", "")),
            str(data.get("scale", "output")),
            tuple(names),
            tuple(kinds),
            tuple(h.edges for h in hists),
            tuple((h.low, h.high) for h in hists),
        )
        counts = np.concatenate([h.counts for h in hists]) if hists else np.zeros(0, np.int64)
        return cls(layout, counts.astype(np.int64), np.array([h.missing for h in hists], np.int64))


@dataclass(frozen=True, eq=False)
class Histogram:
    """One column's counts: bins ``(-inf, e0], ..., (e_last, +inf)``, NaNs apart, and how far
    the end bins are taken to reach (``low``, ``high``: the training range of a feature, the
    range of a score) when a share is interpolated in them."""

    edges: Floats
    counts: Ints
    missing: int
    low: float
    high: float

    @property
    def present(self) -> int:
        """Values counted that are not missing."""
        return int(self.counts.sum())

    @property
    def total(self) -> int:
        """Rows counted, missing values included."""
        return self.present + self.missing

    def to_dict(self) -> dict[str, Any]:
        """``{"edges", "counts", "missing", "range"}``."""
        return {
            "edges": self.edges.tolist(),
            "counts": self.counts.tolist(),
            "missing": self.missing,
            "range": [self.low, self.high],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Histogram:
        """Read :meth:`to_dict`'s form; ValueError when its parts do not fit together."""
        edges = np.array(data["edges"], dtype=np.float64).reshape(-1)
        counts = np.array(data["counts"], dtype=np.int64).reshape(-1)
        if (
            len(counts) != len(edges) + 1
            or (counts < 0).any()
            or not np.isfinite(edges).all()
            or np.any(np.diff(edges) <= 0)
        ):
            raise ValueError("a histogram's edges and counts do not fit together")
        low, high = (float(v) for v in data["range"])
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise ValueError("a histogram's range is not two finite numbers, low to high")
        return cls(edges, counts, int(data.get("missing", 0)), low, high)

    def _knots(self, low: float | None = None, high: float | None = None) -> tuple[Floats, Floats]:
        """The piecewise-linear cumulative count: at ``x[k]``, ``y[k]`` values are <= it.
        ``low``/``high``: the outer ends of the end bins (default: the values seen)."""
        low = self.low if low is None else low
        high = self.high if high is None else high
        edges = self.edges
        if not len(edges):
            lo = low if math.isfinite(low) else 0.0
            hi = high if math.isfinite(high) else lo
            return np.array([lo, hi]), np.array([0.0, float(self.present)])
        first = min(low, edges[0]) if math.isfinite(low) else edges[0]
        last = max(high, edges[-1]) if math.isfinite(high) else edges[-1]
        x = np.concatenate([[first], edges, [last]])
        y = np.concatenate([[0.0], np.cumsum(self.counts).astype(np.float64)])
        return x, y

    def cdf(self, points: Floats, low: float | None = None, high: float | None = None) -> Floats:
        """The share of present values <= each point: exact at an edge, values spread evenly
        within a bin elsewhere (the end bins reach to ``low``/``high``, default: the values
        seen)."""
        present = self.present
        if not present:
            return np.zeros(len(points))
        x, y = self._knots(low, high)
        # The last knot at or below each point, and the segment it starts.
        k = np.clip(np.searchsorted(x, points, side="right") - 1, 0, len(x) - 2)
        width = x[k + 1] - x[k]
        with np.errstate(invalid="ignore", divide="ignore"):
            part = np.where(width > 0, (points - x[k]) / width, 1.0)
        value = y[k] + np.clip(part, 0.0, 1.0) * (y[k + 1] - y[k])
        value = np.where(points < x[0], 0.0, value)
        value = np.where(points >= x[-1], y[-1], value)
        return np.asarray(value / present, dtype=np.float64)

    def quantiles(self, shares: Floats) -> Floats:
        """The values below which each share of present values lies (interpolated)."""
        x, y = self._knots()
        targets = shares * self.present
        k = np.clip(np.searchsorted(y, targets, side="left") - 1, 0, len(y) - 2)
        rise = y[k + 1] - y[k]
        with np.errstate(invalid="ignore", divide="ignore"):
            part = np.where(rise > 0, (targets - y[k]) / rise, 0.0)
        return np.asarray(x[k] + np.clip(part, 0.0, 1.0) * (x[k + 1] - x[k]), dtype=np.float64)
