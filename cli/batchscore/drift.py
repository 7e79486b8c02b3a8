"""How far a run's distributions moved from a baseline's (``--baseline``), and the summary's
picture of them.

A comparison re-bins both histograms (:mod:`batchscore.histograms`) on the *baseline's*
deciles (:func:`compare`), so a baseline from another model version (other edges) compares
as well.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from batchscore.errors import UsageError
from batchscore.histograms import Distribution, Floats, Histogram

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
    "DriftResult",
    "compare",
    "distribution_lines",
    "load_baseline",
    "thresholds",
]
