"""The bin edges of a model's histograms, all of them read from the model file (nothing
learnt from the data):

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
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from batchscore.histograms import Floats, Layout

FEATURE_EDGES = 63
"""At most this many edges per feature (64 bins and the missing count)."""

SCORE_EDGES = 255
"""Edges per score column (256 bins): ~0.2 log-odds wide over a typical 300-tree range."""

PROBABILITY_LOGIT = 12.0
"""A multiclass probability grid spans log-odds -12 to 12 (6e-6 to 1 - 6e-6)."""


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
