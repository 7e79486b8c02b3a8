"""Score and feature distributions of a run, and how far they moved from a baseline's.

Every run keeps, per model, a histogram of each score column and of each model feature: fixed
bin edges chosen once from the model file, counts added chunk by chunk in the scoring thread
(vectorised: a lookup grid per feature, then one ``bincount``), merged by the writer in
chunk order, across Dask partitions by the driver, and carried by the run state across a stop
and ``--resume``.  Memory is O(bins): never a value per row.

Where the edges come from (all of it in the model file, nothing learnt from the data):

- **a numeric feature**: the thresholds the model splits it on.  LightGBM's split candidates
  are the boundaries of its quantile bins of the training data, so these edges are dense where
  the training data was, and a value moving *within* a bin moves no score at all.  Thinned to
  at most :data:`FEATURE_EDGES` by rank.  A feature the model never splits on: equal-width
  edges over its training range (``feature_infos``); neither: one bin.
- **a categorical feature**: one bin per category of ``feature_infos``.
- **a score column**: the raw score of a tree ensemble lies between the sums, over its trees,
  of each tree's smallest and largest leaf value; :data:`SCORE_EDGES` edges evenly over that
  range in raw (margin) space, mapped through the objective's output function (the sigmoid of
  a binary model: edges evenly spaced in log-odds, fine near 0 and 1 where such scores crowd).
  Multiclass probabilities (a softmax, not a function of one class's margin) use a fixed
  log-odds grid over (0, 1).  Linear trees can leave the range: the end bins hold the rest.

Besides the counts each histogram keeps its missing values (NaN) and how far its end bins are
taken to reach (the feature's training range, the scores' range), so that the cumulative
distribution can be interpolated within every bin, the end bins included.  A comparison
re-bins both histograms on the *baseline's* deciles (:func:`compare`), so a baseline from
another model version (other edges) compares as well.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from batchscore.errors import UsageError

FEATURE_EDGES = 63
"""At most this many edges per feature (64 bins and the missing count)."""

SCORE_EDGES = 255
"""Edges per score column (256 bins): ~0.2 log-odds wide over a typical 300-tree range."""

PROBABILITY_LOGIT = 12.0
"""A multiclass probability grid spans log-odds -12 to 12 (6e-6 to 1 - 6e-6)."""

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


# ------------------------------------------------------------------------------ the bins


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


# ------------------------------------------------------------------------------ the model file


@dataclass(frozen=True)
class _Trees:
    """What the trees of a model file say about its columns."""

    thresholds: dict[int, Floats]  # numeric split thresholds per feature index
    categories: dict[int, Floats]  # categorical feature index -> its values (feature_infos)
    ranges: dict[int, tuple[float, float]]  # numeric feature index -> training range
    raw_low: Floats  # per class: the sum of each tree's smallest leaf
    raw_high: Floats
    objective: str
    sigmoid: float


_FIELDS = (b"split_feature", b"threshold", b"decision_type", b"leaf_value")
_LINE = re.compile(rb"^(split_feature|threshold|decision_type|leaf_value)=(.*)$", re.M)


def _floats(text: bytes) -> Floats:
    """Space-separated numbers (LightGBM writes them with repr's digits) as float64."""
    return np.array(text.split(), dtype=np.float64)


def _read_trees(path: str) -> _Trees:
    data = Path(path).read_bytes()
    head, _, body = data.partition(b"\nTree=")
    header: dict[str, str] = {}
    for line in head.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            header[key] = value.strip()
    classes = max(int(header.get("num_tree_per_iteration", header.get("num_class", "1"))), 1)
    objective = header.get("objective", "")
    sigmoid_match = re.search(r"sigmoid:([0-9.eE+-]+)", objective)
    sigmoid = float(sigmoid_match.group(1)) if sigmoid_match else 1.0
    categories: dict[int, Floats] = {}
    ranges: dict[int, tuple[float, float]] = {}
    for j, info in enumerate(header.get("feature_infos", "").split()):
        if info.startswith("[") and info.endswith("]"):
            low, _, high = info[1:-1].partition(":")
            with_range = _finite(low, high)
            if with_range is not None:
                ranges[j] = with_range
        elif info != "none":
            values = sorted({float(v) for v in info.split(":") if _is_number(v)})
            categories[j] = np.array(values, dtype=np.float64)
    # Every tree's lines at once (a tree's split lines are as long as each other, so the
    # concatenations stay aligned): a few array passes, not a parse per tree.
    lines: dict[bytes, list[bytes]] = {name: [] for name in _FIELDS}
    for match in _LINE.finditer(body.split(b"\nend of trees", 1)[0]):
        lines[match.group(1)].append(match.group(2))
    raw_low = np.zeros(classes)
    raw_high = np.zeros(classes)
    leaf_lines = lines[b"leaf_value"]
    if leaf_lines:
        leaves = _floats(b" ".join(leaf_lines))
        sizes = np.array([line.count(b" ") + 1 for line in leaf_lines])
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        tree_class = np.arange(len(leaf_lines)) % classes
        lowest, highest = np.minimum.reduceat(leaves, starts), np.maximum.reduceat(leaves, starts)
        raw_low = np.bincount(tree_class, lowest, classes).astype(np.float64)
        raw_high = np.bincount(tree_class, highest, classes).astype(np.float64)
    features = _floats(b" ".join(lines[b"split_feature"])).astype(np.intp)
    thresholds = _floats(b" ".join(lines[b"threshold"]))
    numeric = (_floats(b" ".join(lines[b"decision_type"])).astype(np.int64) & 1) == 0
    # Finite only (a JSON report cannot hold an infinite edge; the top bin is open anyway).
    keep = numeric & np.isfinite(thresholds)
    splits = {
        j: np.unique(thresholds[keep & (features == j)]) for j in np.unique(features[keep]).tolist()
    }
    return _Trees(splits, categories, ranges, raw_low, raw_high, objective, sigmoid)


def _finite(low: str, high: str) -> tuple[float, float] | None:
    try:
        lo, hi = float(low), float(high)
    except ValueError:
        return None
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _thinned(values: Floats, most: int) -> Floats:
    """At most ``most`` of the sorted ``values``, evenly by rank (the ends kept)."""
    if len(values) <= most:
        return values
    picks = np.unique(np.round(np.linspace(0, len(values) - 1, most)).astype(np.intp))
    return values[picks]


def _feature_edges(trees: _Trees, j: int) -> Floats:
    if j in trees.categories:
        values = trees.categories[j]
        return _thinned((values[:-1] + values[1:]) / 2, FEATURE_EDGES)
    split = trees.thresholds.get(j)
    if split is not None and len(split):
        return _thinned(split, FEATURE_EDGES)
    if j in trees.ranges:
        low, high = trees.ranges[j]
        return np.unique(np.linspace(low, high, 33)) if high > low else np.array([low])
    return np.zeros(0)


_PROBABILITIES = ("binary", "cross_entropy", "xentropy")
_EXPONENTIAL = ("poisson", "gamma", "tweedie")
_MULTICLASS = ("multiclass", "softmax", "multiclassova", "multiclass_ova", "ova", "ovr")


def _score_edges(trees: _Trees, k: int, raw: bool) -> Floats:
    kind = trees.objective.split(" ")[0]
    if not raw and kind in _MULTICLASS:
        logits = np.linspace(-PROBABILITY_LOGIT, PROBABILITY_LOGIT, SCORE_EDGES)
        return np.unique(1.0 / (1.0 + np.exp(-logits)))
    low, high = float(trees.raw_low[k]), float(trees.raw_high[k])
    grid = np.linspace(low, high, SCORE_EDGES) if high > low else np.array([low])
    if not raw and kind in _PROBABILITIES:
        with np.errstate(over="ignore"):
            grid = 1.0 / (1.0 + np.exp(-trees.sigmoid * grid))
    elif not raw and kind in _EXPONENTIAL:
        with np.errstate(over="ignore"):
            grid = np.exp(grid)
    return np.unique(grid[np.isfinite(grid)])


def _bounds(edges: Floats, known: tuple[float, float] | None) -> tuple[float, float]:
    """How far a column's end bins reach: its known range, widened to its edges."""
    if not len(edges):
        return known or (0.0, 0.0)
    low, high = known or (float(edges[0]), float(edges[-1]))
    return min(low, float(edges[0])), max(high, float(edges[-1]))


def _feature_range(trees: _Trees, j: int) -> tuple[float, float] | None:
    if j in trees.categories and len(trees.categories[j]):
        values = trees.categories[j]
        return float(values[0]), float(values[-1])
    return trees.ranges.get(j)


@functools.lru_cache(maxsize=16)
def _layout(
    booster_file: str, model: str, version: str, raw: bool, scores: tuple[str, ...], n: int
) -> tuple[tuple[Floats, ...], tuple[tuple[float, float], ...]]:
    trees = _read_trees(booster_file)
    classes = len(trees.raw_low)
    score_edges = tuple(_score_edges(trees, k % classes, raw) for k in range(len(scores)))
    feature_edges = tuple(_feature_edges(trees, j) for j in range(n))
    bounds = tuple(_bounds(e, None) for e in score_edges) + tuple(
        _bounds(e, _feature_range(trees, j)) for j, e in enumerate(feature_edges)
    )
    return (*score_edges, *feature_edges), bounds


def layout_of(
    model: str,
    version: str,
    booster_file: str,
    score_columns: Sequence[str],
    features: Sequence[str],
    raw: bool,
) -> Layout:
    """The bins of a model's histograms, from its booster file (read once per process)."""
    edges, bounds = _layout(booster_file, model, version, raw, tuple(score_columns), len(features))
    return Layout(
        model,
        version,
        "raw" if raw else "output",
        (*score_columns, *features),
        ("score",) * len(score_columns) + ("feature",) * len(features),
        edges,
        bounds,
    )


# ------------------------------------------------------------------------------ comparing

DECILES = 10
"""PSI bins: the baseline's deciles (merged where they coincide), plus one for missing."""

PSI_MIN = 0.1
"""PSI below this never flags a column: the usual "no significant change" line."""

KS_MIN = 0.05
"""KS distance below this never flags a column: at 100M rows a p-value alone would flag a
shift of a thousandth of a standard deviation."""

ALPHA = 0.001
"""The chance that a run from the baseline's own population flags any column (Bonferroni over
the columns compared): the statistical part of each threshold."""


@dataclass(frozen=True)
class ColumnDrift:
    """How far one column moved from the baseline's."""

    model: str
    column: str
    kind: str  # "score" | "feature"
    rows: int
    baseline_rows: int
    psi: float
    ks: float
    psi_threshold: float
    ks_threshold: float

    @property
    def drifted(self) -> bool:
        """Beyond either threshold."""
        return self.psi > self.psi_threshold or self.ks > self.ks_threshold

    def to_dict(self) -> dict[str, Any]:
        """The report's per-column figures."""
        return {
            "kind": self.kind,
            "rows": self.rows,
            "baseline_rows": self.baseline_rows,
            "psi": round(self.psi, 6),
            "ks": round(self.ks, 6),
            "psi_threshold": round(self.psi_threshold, 6),
            "ks_threshold": round(self.ks_threshold, 6),
            "drifted": self.drifted,
        }


@dataclass(frozen=True, eq=False)
class Baseline:
    """The distributions of an earlier run's report (``--baseline``)."""

    path: str
    models: tuple[Distribution, ...]


@dataclass
class DriftResult:
    """This run against a baseline: per-column figures, and what could not be compared."""

    baseline: Baseline
    columns: list[ColumnDrift] = field(default_factory=list)
    not_compared: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    matched: dict[str, Distribution] = field(default_factory=dict)  # model -> its baseline

    @property
    def drifted(self) -> list[ColumnDrift]:
        """The columns beyond a threshold, the biggest move (PSI) first."""
        return sorted((c for c in self.columns if c.drifted), key=lambda c: (-c.psi, -c.ks))

    @property
    def drifted_names(self) -> list[str]:
        """The names of the columns that moved, each once, the biggest move first."""
        return list(dict.fromkeys(c.column for c in self.drifted))

    @property
    def scores(self) -> list[ColumnDrift]:
        """The score columns compared."""
        return [c for c in self.columns if c.kind == "score"]

    @property
    def score_psi(self) -> float | None:
        """The largest PSI of a score column (any model), or None when none was compared."""
        return max((c.psi for c in self.scores), default=None)

    def to_dict(self) -> dict[str, Any]:
        """The report's ``drift`` section."""
        models: dict[str, dict[str, Any]] = {}
        for c in self.columns:
            models.setdefault(c.model, {})[c.column] = c.to_dict()
        return {
            "baseline": self.baseline.path,
            "score_psi": None if self.score_psi is None else round(self.score_psi, 6),
            "drifted": self.drifted_names,
            "models": [
                {
                    "name": name,
                    "baseline_version": self.matched[name].layout.version,
                    "columns": dict(
                        sorted(columns.items(), key=lambda item: -float(item[1]["psi"]))
                    ),
                }
                for name, columns in models.items()
            ],
            "not_compared": self.not_compared,
            "notes": self.notes,
            "thresholds": {"psi_min": PSI_MIN, "ks_min": KS_MIN, "alpha": ALPHA},
        }


def load_baseline(path: str, report: str | None) -> Baseline | None:
    """Read a ``--report`` JSON written by an earlier run as a baseline.

    Read when the run is planned, so the same path as this run's ``--report`` is last
    night's report.  That path missing is the first night of a cron line: None (a warning);
    any other path missing, or a file that is not a report with distributions, is exit 2.
    """
    import orjson

    where = Path(path)
    try:
        data = orjson.loads(where.read_bytes())
    except FileNotFoundError:
        if report is not None and where.absolute() == Path(report).absolute():
            return None
        raise UsageError(
            f"--baseline {path} does not exist; pass the --report JSON of an earlier run"
        ) from None
    except IsADirectoryError:
        raise UsageError(f"--baseline {path} is a folder; pass a --report JSON file") from None
    except OSError as exc:
        raise UsageError(f"cannot read --baseline {path}: {exc.strerror}") from None
    except orjson.JSONDecodeError:
        raise UsageError(
            f"--baseline {path} is not JSON; pass the --report file of an earlier run"
        ) from None
    section = data.get("distribution") if isinstance(data, dict) else None
    if not isinstance(section, dict) or not isinstance(section.get("models"), list):
        raise UsageError(
            f"--baseline {path} holds no score distribution (not a batchscore report, or one "
            "from before distributions were kept); pass the --report of a run of this version"
        )
    try:
        models = tuple(Distribution.from_dict(m) for m in section["models"])
    except (KeyError, TypeError, ValueError, AttributeError):
        raise UsageError(
            f"--baseline {path}: its distribution section is damaged; pass another report"
        ) from None
    return Baseline(path, models)


def _psi_ks(current: Histogram, base: Histogram) -> tuple[float, float, int]:
    """PSI over the baseline's deciles (+ missing) and the KS distance of the two CDFs (with
    missing values as one value above all others); the PSI's number of bins.

    Where the two histograms share edges (the same model, or thresholds kept across versions)
    both statistics use only those, where each CDF is exact: the deciles are moved to the
    shared edge nearest in the baseline's CDF.  Otherwise values are spread evenly within
    bins, the end bins reaching to the wider of the two ranges, so two samples of one
    population interpolate alike.
    """
    n, m = current.total, base.total
    low, high = min(current.low, base.low), max(current.high, base.high)
    shared = np.intersect1d(current.edges, base.edges)
    deciles = np.arange(1, DECILES) / DECILES
    if len(shared):
        at = base.cdf(shared)
        edges = np.unique(shared[np.abs(at[None, :] - deciles[:, None]).argmin(axis=1)])
        points = shared
    else:
        edges = np.unique(base.quantiles(deciles))
        points = np.unique(np.concatenate([current.edges, base.edges, edges]))
    shares = []
    for hist, total in ((current, n), (base, m)):
        present = hist.present / total
        cdf = hist.cdf(edges, low, high)
        inner = np.diff(np.concatenate([[0.0], cdf, [1.0]])) * present
        shares.append(np.concatenate([inner, [hist.missing / total]]))
    a, b = shares
    # Additive smoothing by half a row (the Jeffreys prior): an empty bin is not infinite.
    a = (a * n + 0.5) / (n + 0.5 * len(a))
    b = (b * m + 0.5) / (m + 0.5 * len(b))
    psi = float(np.sum((a - b) * np.log(a / b)))
    points = points[np.isfinite(points)]
    cur = current.cdf(points, low, high) * current.present / n
    bas = base.cdf(points, low, high) * base.present / m
    ks = float(np.max(np.abs(cur - bas), initial=0.0))
    ks = max(ks, abs(current.missing / n - base.missing / m))
    return psi, ks, len(a)


def _chi2_quantile(p: float, k: int) -> float:
    """Wilson-Hilferty's approximation of the chi-square quantile (k degrees of freedom)."""
    import statistics  # here: ~2 ms of import a run without --baseline does not need

    z = statistics.NormalDist().inv_cdf(p)
    return float(k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3)


def thresholds(n: int, m: int, bins: int, alpha: float) -> tuple[float, float]:
    """The PSI and KS thresholds for samples of ``n`` and ``m`` rows: the larger of the minimum
    effect and what chance alone reaches with probability ``alpha``.

    Two samples of one population: PSI * nm/(n+m) is about chi-square with ``bins - 1``
    degrees of freedom (PSI is the symmetric Kullback-Leibler divergence, whose second-order
    term is the chi-square statistic); KS exceeds c(alpha) * sqrt((n+m)/(nm)) with probability
    alpha, c(alpha) = sqrt(-ln(alpha/2)/2).
    """
    scale = (n + m) / (n * m)
    psi = _chi2_quantile(1 - alpha, max(bins - 1, 1)) * scale
    ks = math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt(scale)
    return max(PSI_MIN, psi), max(KS_MIN, ks)


def compare(current: Sequence[Distribution], baseline: Baseline) -> DriftResult:
    """This run's distributions against the baseline's, column by column where both have
    one, saying what could not be compared and why."""
    result = DriftResult(baseline)
    by_name = {d.layout.model: d for d in baseline.models}
    pairs: list[tuple[Distribution, Distribution]] = []
    for mine in current:
        name = mine.layout.model
        theirs = by_name.get(name)
        if theirs is None and len(current) == 1 and len(baseline.models) == 1:
            theirs = baseline.models[0]  # one model each: whatever their names
        label = f"model {name}" if name else "the model"
        if theirs is None:
            result.not_compared.append(f"{label}: not in the baseline")
            continue
        if not mine.rows or not theirs.rows:
            result.not_compared.append(
                f"{label}: {'this run' if not mine.rows else 'the baseline'} scored no rows"
            )
            continue
        result.matched[name] = theirs
        if theirs.layout.version != mine.layout.version:
            result.notes.append(
                f"{label}: version {mine.layout.version}, the baseline's "
                f"{theirs.layout.version}: compared column by column"
            )
        pairs.append((mine, theirs))
    planned: list[tuple[str, str, str, Histogram, Histogram]] = []
    for mine, theirs in pairs:
        name = mine.layout.model
        prefix = f"model {name}: " if name else ""
        for i, (column, kind) in enumerate(zip(mine.layout.names, mine.layout.kinds, strict=True)):
            base = theirs.column(column, kind)
            if base is None:
                result.not_compared.append(f"{prefix}{kind} {column}: not in the baseline")
            elif kind == "score" and theirs.layout.scale != mine.layout.scale:
                result.not_compared.append(
                    f"{prefix}score {column}: the baseline has {theirs.layout.scale} scores, "
                    f"this run {mine.layout.scale} (--raw-score differs)"
                )
            else:
                planned.append((name, column, kind, mine.histogram(i), base))
        mine_names = set(zip(mine.layout.names, mine.layout.kinds, strict=True))
        for column, kind in zip(theirs.layout.names, theirs.layout.kinds, strict=True):
            if (column, kind) not in mine_names:
                result.not_compared.append(f"{prefix}{kind} {column}: only in the baseline")
    alpha = ALPHA / max(len(planned), 1)
    for name, column, kind, hist, base in planned:
        psi, ks, bins = _psi_ks(hist, base)
        psi_limit, ks_limit = thresholds(hist.total, base.total, bins, alpha)
        result.columns.append(
            ColumnDrift(name, column, kind, hist.total, base.total, psi, ks, psi_limit, ks_limit)
        )
    return result


# ------------------------------------------------------------------------------ the summary

_BAR_WIDTH = 24
_EIGHTHS = " ▏▎▍▌▋▊▉"
_SPARK = "▁▂▃▄▅▆▇█"
_GROUPS = 8


def _bar(share: float, most: float) -> str:
    eighths = round(share / most * _BAR_WIDTH * 8) if most > 0 else 0
    full, part = divmod(eighths, 8)
    return ("█" * full + (_EIGHTHS[part] if part else "")).ljust(_BAR_WIDTH)


def _number(value: float) -> str:
    return f"{value:.3g}"


def _groups(hists: Sequence[Histogram]) -> Floats:
    """Display group edges: equal widths between the 0.5th and 99.5th percentiles of the
    histograms shown (the first and last groups take the tails)."""
    lows = [float(h.quantiles(np.array([0.005]))[0]) for h in hists if h.present]
    highs = [float(h.quantiles(np.array([0.995]))[0]) for h in hists if h.present]
    lo, hi = min(lows), max(highs)
    if hi <= lo:
        return np.array([lo])
    return np.linspace(lo, hi, _GROUPS + 1)[1:-1]


def _shares(hist: Histogram, groups: Floats) -> Floats:
    cdf = np.concatenate([[0.0], hist.cdf(groups), [1.0]])
    return np.asarray(np.diff(cdf), dtype=np.float64)


def distribution_lines(
    distributions: Sequence[Distribution], drift: DriftResult | None
) -> list[str]:
    """The summary's picture of each model's scores (beside the baseline's, when there is
    one), and a line naming the column that moved most."""
    lines: list[str] = []
    for dist in distributions:
        base_dist = drift.matched.get(dist.layout.model) if drift is not None else None
        scores = [i for i, kind in enumerate(dist.layout.kinds) if kind == "score"]
        for i in scores:
            hist = dist.histogram(i)
            if not hist.present:
                continue
            name = dist.layout.names[i]
            base = base_dist.column(name, "score") if base_dist is not None else None
            if base is not None and not base.present:
                base = None
            shown = [hist] if base is None else [hist, base]
            groups = _groups(shown)
            mine = _shares(hist, groups)
            theirs = _shares(base, groups) if base is not None else None
            if len(scores) > 1:  # multiclass: a line per class
                top = max(float(mine.max()), 1e-12)
                spark = "".join(_SPARK[min(int(share / top * 7.999), 7)] for share in mine)
                ends = hist.quantiles(np.array([0.005, 0.995]))  # what the bars span
                span = f"{_number(float(ends[0]))} .. {_number(float(ends[1]))}"
                lines.append(f"{name} distribution: {spark}  {span}")
                continue
            title = f"{name} distribution ({hist.present:,} scored"
            title += f"; baseline {base.present:,}, right)" if base is not None else ")"
            lines.append(title + ":")
            bounds = [hist.low if base is None else min(hist.low, base.low), *groups]
            bounds.append(hist.high if base is None else max(hist.high, base.high))
            most = float(max(mine.max(), theirs.max() if theirs is not None else 0.0))
            labels = [f"{_number(a)} .. {_number(b)}" for a, b in itertools.pairwise(bounds)]
            width = max(len(label) for label in labels)
            for g, label in enumerate(labels):
                row = f"  {label:>{width}} {_bar(mine[g], most)} {mine[g]:6.1%}"
                if theirs is not None:
                    row += f"  {_bar(theirs[g], most)} {theirs[g]:6.1%}"
                lines.append(row.rstrip())
    if drift is None:
        return lines
    if drift.columns:
        moved = drift.drifted
        score_psi = drift.score_psi
        head = f"drift from {drift.baseline.path}: " + (
            f"score PSI {score_psi:.3f}; " if score_psi is not None else ""
        )
        if moved:
            first = moved[0]
            lines.append(
                head
                + f"{len(drift.drifted_names)} column{'s' if len(drift.drifted_names) > 1 else ''}"
                + " moved: "
                + ", ".join(drift.drifted_names[:5])
                + (" ..." if len(drift.drifted_names) > 5 else "")
            )
            lines.append(f"{first.column} moved most: PSI {first.psi:.2f}, KS {first.ks:.2f}")
        else:
            lines.append(head + "nothing moved beyond the thresholds")
    if drift.not_compared:
        listed = "; ".join(drift.not_compared[:3])
        more = f" (and {len(drift.not_compared) - 3} more)" if len(drift.not_compared) > 3 else ""
        lines.append(f"not compared with the baseline: {listed}{more}")
    return lines


__all__ = [
    "Baseline",
    "ColumnDrift",
    "Distribution",
    "DriftResult",
    "Histogram",
    "Layout",
    "compare",
    "distribution_lines",
    "layout_of",
    "load_baseline",
    "thresholds",
]
