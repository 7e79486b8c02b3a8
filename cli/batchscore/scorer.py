"""The scoring stage: one chunk's matrix through every model (in a scoring thread), its
explanations, its data-quality counts and the bins its histograms count in."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from batchscore.chunk import Chunk, Explanations, Status
from batchscore.edges import layout_of
from batchscore.histograms import Distribution, Layout
from batchscore.model import Member, ModelSet
from batchscore.report import FeatureQuality


@dataclass(frozen=True)
class ScoringOptions:
    """What the scoring stage is asked for (its part of the pipeline's options)."""

    raw_score: bool = False
    allow_empty: bool = False  # score a row whose features are all missing
    explain: int = 0
    with_features: bool = False  # keep the feature matrix the model saw


class Scorer:
    """Predicts a chunk's matrix with every model (in a scoring thread), explains it, counts
    data quality per model."""

    def __init__(self, models: ModelSet, options: ScoringOptions) -> None:
        self.models = models
        self.options = options
        self.bounds = [_training_bounds(m) for m in models.members]
        self.layouts = [layout_for(m, options.raw_score) for m in models.members]
        self.width = len(models.score_columns)
        # --explain: a feature is named by its index into every model's names, one after another
        self.explain_offsets = np.cumsum([0] + [len(m.info.features) for m in models.members])

    def score(self, chunk: Chunk) -> list[FeatureQuality]:
        """Score the chunk's OK rows in place; returns each model's data-quality counts.

        A row whose features are all missing is not scored silently: it is a ``no_features``
        failure, unless ``allow_empty``.
        """
        matrix = chunk.matrix
        assert matrix is not None
        ok = chunk.ok()
        if not self.options.allow_empty:
            empty = ok & np.isnan(matrix).all(axis=1)
            for row in np.flatnonzero(empty).tolist():
                record = chunk.record(row, "score", None, "no_features")
                chunk.fail(row, Status.NO_FEATURES, record)
            ok &= ~empty
        rows = np.flatnonzero(ok)
        shared = matrix if len(rows) == len(chunk) else matrix[rows]
        scores = np.full((len(chunk), self.width), np.nan, dtype=np.float64)
        qualities = []
        explained = []
        at = 0
        for i, member in enumerate(self.models.members):
            x = member.matrix(shared)
            width = len(member.score_columns)
            quality = FeatureQuality(np.zeros(x.shape[1], np.int64), np.zeros(x.shape[1], np.int64))
            if len(rows):
                predicted = member.model.predict(x, raw_score=self.options.raw_score)
                scores[rows, at : at + width] = predicted.reshape(len(rows), -1)
                if self.options.explain:
                    part = self._explain(member, x, scores[rows, at : at + width], rows, len(chunk))
                    explained.append(part.shifted(int(self.explain_offsets[i])))
                low, high = self.bounds[i]
                quality.missing += np.isnan(x).sum(axis=0)
                with np.errstate(invalid="ignore"):
                    quality.out_of_range += ((x < low) | (x > high)).sum(axis=0)
                quality.rows = len(rows)
                quality.distribution = Distribution.observe(
                    self.layouts[i], scores[rows, at : at + width], x
                )
            qualities.append(quality)
            at += width
        if explained:
            chunk.explanations = Explanations.side_by_side(explained)
        chunk.scores = scores
        chunk.scored_at = time.time()
        if not self.options.with_features:
            chunk.matrix = None  # the features are scored; free them before the chunk waits
        return qualities

    def _explain(
        self,
        member: Member,
        x: npt.NDArray[np.float64],
        scores: npt.NDArray[np.float64],
        rows: npt.NDArray[np.intp],
        n: int,
    ) -> Explanations:
        """The top-K features by |contribution| per row, of the predicted class (the highest
        score) for multiclass, with the values the model saw for them."""
        contrib = member.model.contributions(x)[:, :, :-1]  # drop the bias column
        cls = np.argmax(scores, axis=1) if contrib.shape[1] > 1 else np.zeros(len(x), dtype=int)
        per_row = contrib[np.arange(len(x)), cls]
        k = min(self.options.explain, per_row.shape[1])
        order = np.argsort(-np.abs(per_row), axis=1, kind="stable")[:, :k]
        features = np.zeros((n, k), dtype=np.intp)
        values = np.full((n, k), np.nan, dtype=np.float64)
        contributions = np.full((n, k), np.nan, dtype=np.float64)
        features[rows] = order
        values[rows] = np.take_along_axis(x, order, axis=1)
        contributions[rows] = np.take_along_axis(per_row, order, axis=1)
        return Explanations(features, values, contributions)


def layout_for(member: Member, raw_score: bool) -> Layout:
    """The bins of a model's score and feature histograms (see :mod:`batchscore.drift`)."""
    info = member.info
    return layout_of(
        member.name,
        info.version,
        info.booster_file,
        member.score_columns,
        info.feature_names,
        raw_score,
    )


def _training_bounds(
    member: Member,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """A model's training range per feature (categoricals and unknowns: unbounded)."""
    features = member.info.features
    low = np.array(
        [f.low if f.low is not None and not f.categorical else -np.inf for f in features]
    )
    high = np.array(
        [f.high if f.high is not None and not f.categorical else np.inf for f in features]
    )
    return low, high
