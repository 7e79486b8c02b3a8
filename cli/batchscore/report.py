"""What a run measured: counters, latency histograms, stage timings, data quality.

One :class:`RunStats` is filled by the pipeline; the summary on stderr, the ``--report`` JSON and
the ``--metrics`` Prometheus textfile are three renderings of it.  Memory is constant in the
number of IDs: latencies go into log-spaced histogram buckets (2% wide), not lists.
"""

from __future__ import annotations

import math
import numbers
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from batchscore.atomic import write_atomically
from batchscore.drift import DriftResult, distribution_lines
from batchscore.histograms import Distribution
from batchscore.wording import counted

if TYPE_CHECKING:
    from batchscore.chunk import ErrorRecord

FIRST_FAILURES = 5
"""Failed IDs the summary names (with their line and reason), whether or not an errors file
keeps them all."""

_GROWTH = 1.02
_LOG_GROWTH = math.log(_GROWTH)
_MIN = 1e-6  # seconds; the first bucket


class LatencyHistogram:
    """Log-bucketed latencies: quantiles within 2%, constant memory."""

    def __init__(self) -> None:
        self.buckets: Counter[int] = Counter()
        self.count = 0
        self.total = 0.0

    def add(self, seconds: float) -> None:
        """Record one latency."""
        index = 0 if seconds <= _MIN else int(math.log(seconds / _MIN) / _LOG_GROWTH) + 1
        self.buckets[index] += 1
        self.count += 1
        self.total += seconds

    def quantile(self, q: float) -> float | None:
        """The q-quantile (upper edge of its bucket), or None when empty."""
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return _MIN * _GROWTH**index
        return None  # pragma: no cover - rank <= count


@dataclass
class FeatureQuality:
    """Per-feature counts of missing and out-of-training-range values."""

    missing: npt.NDArray[np.int64]
    out_of_range: npt.NDArray[np.int64]
    rows: int = 0
    distribution: Distribution | None = None  # a chunk's histograms (the writer adds them up)


@dataclass
class ConcurrencyRange:
    """One source's adaptive limit (``--concurrency auto``): the last value, and the range."""

    final: int
    low: int
    high: int
    changes: int = 0

    def as_dict(self) -> dict[str, int]:
        """For the report."""
        return {"final": self.final, "low": self.low, "high": self.high, "changes": self.changes}


@dataclass
class RunStats:
    """Counters of one run (mutated only on the event loop thread)."""

    started: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.time)  # wall clock, for the report
    read: int = 0
    skipped: int = 0  # shard, dedupe or already committed by an earlier run
    scored: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    latency: dict[str, LatencyHistogram] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[str]] = field(default_factory=dict)
    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))  # busy
    quality: list[FeatureQuality] = field(default_factory=list)  # per model
    total: int | None = None
    resumed_from: int = 0  # IDs an earlier, stopped run had already committed
    resumed_read: int = 0  # input rows an earlier, stopped run had already read
    first_failures: list[ErrorRecord] = field(default_factory=list)  # this run's, as written
    workers: int = 0  # Dask workers running the run's partitions (0: this process alone)
    distributions: list[Distribution] = field(default_factory=list)  # per model, rows written
    drift: DriftResult | None = None  # against --baseline, once the run is over
    concurrency: dict[str, ConcurrencyRange] = field(default_factory=dict)  # auto only
    left_out: Counter[str] = field(default_factory=Counter)  # --reason: records not retried

    @property
    def failed_total(self) -> int:
        """IDs that produced no score."""
        return sum(self.failed.values())

    @property
    def done(self) -> int:
        """IDs finished either way."""
        return self.scored + self.failed_total

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    def rate(self, elapsed: float | None = None) -> float:
        """Input rows this run went through per second (of ``elapsed``, default: so far):
        scored, failed, or left out by ``--shard`` or ``--dedupe`` (a run that reads a
        million lines of one ID with ``--dedupe`` scores one ID, but its speed is the million
        lines)."""
        seconds = self.elapsed() if elapsed is None else elapsed
        return (self.read - self.resumed_read) / max(seconds, 1e-9)

    def counters(self) -> dict[str, Any]:
        """The counts a resumed run carries on from (kept in the run state)."""
        return {
            "read": self.read,
            "skipped": self.skipped,
            "scored": self.scored,
            "failed": dict(self.failed),
            "retries": self.retries,
            # The histograms of the rows written, so a resumed run's equal an uninterrupted one's.
            **(
                {"distributions": [d.to_dict() for d in self.distributions]}
                if self.distributions
                else {}
            ),
        }

    def restore(self, counters: dict[str, Any]) -> None:
        """Start from the counts an earlier, stopped run committed."""
        self.read = int(counters.get("read", 0))
        self.skipped = int(counters.get("skipped", 0))
        self.scored = int(counters.get("scored", 0))
        self.failed = Counter({str(k): int(v) for k, v in counters.get("failed", {}).items()})
        self.retries = int(counters.get("retries", 0))
        self.distributions = [Distribution.from_dict(d) for d in counters.get("distributions", [])]
        self.resumed_from = self.done
        self.resumed_read = self.read

    def merge(self, part: RunStats) -> None:
        """Add the counts of a partition's run (another process's stats) to these.

        Busy seconds add up over partitions (they ran side by side, so a stage's total can
        exceed the elapsed time); latency histograms merge bucket by bucket.
        """
        self.read += part.read
        self.resumed_read += part.resumed_read
        self.skipped += part.skipped
        self.scored += part.scored
        self.failed.update(part.failed)
        self.retries += part.retries
        for name, hist in part.latency.items():
            mine = self.latency.setdefault(name, LatencyHistogram())
            mine.buckets.update(hist.buckets)
            mine.count += hist.count
            mine.total += hist.total
        self.requests.update(part.requests)
        for name, counts in part.statuses.items():
            self.statuses.setdefault(name, Counter()).update(counts)
        for stage, seconds in part.seconds.items():
            self.seconds[stage] += seconds
        for name, other in part.concurrency.items():  # each partition adapted on its own
            limit = self.concurrency.get(name)
            if limit is None:
                self.concurrency[name] = ConcurrencyRange(**other.as_dict())
            else:
                limit.final = other.final
                limit.low = min(limit.low, other.low)
                limit.high = max(limit.high, other.high)
                limit.changes += other.changes
        if part.quality and not self.quality:  # per model, as the partitions counted them
            self.quality = [
                FeatureQuality(q.missing.copy(), q.out_of_range.copy(), 0) for q in part.quality
            ]
        for mine_q, theirs in zip(self.quality, part.quality, strict=False):
            mine_q.missing += theirs.missing
            mine_q.out_of_range += theirs.out_of_range
            mine_q.rows += theirs.rows
        if part.distributions and not self.distributions:
            self.distributions = [d.copy() for d in part.distributions]
        elif part.distributions:
            for mine_d, theirs_d in zip(self.distributions, part.distributions, strict=True):
                mine_d.add(theirs_d)

    def limit_changed(self, source: str, limit: int) -> None:
        """``source``'s adaptive limit is now ``limit`` (its first value: where it starts)."""
        seen = self.concurrency.get(source)
        if seen is None:
            self.concurrency[source] = ConcurrencyRange(limit, limit, limit)
        else:
            seen.final = limit
            seen.low = min(seen.low, limit)
            seen.high = max(seen.high, limit)
            seen.changes += 1

    def observe(self, source: str, seconds: float) -> None:
        """Record one request's latency for ``source``."""
        hist = self.latency.get(source)
        if hist is None:
            hist = self.latency[source] = LatencyHistogram()
        hist.add(seconds)
        self.requests[source] += 1

    def add_failures(self, records: list[ErrorRecord]) -> None:
        """Count failed rows by reason; keep the first few to name in the summary."""
        for record in records:
            self.failed[record.reason] += 1
        room = FIRST_FAILURES - len(self.first_failures)
        if room > 0:
            self.first_failures.extend(records[:room])


def as_dict(stats: RunStats, models: Sequence[tuple[str, Sequence[str]]] = ()) -> dict[str, Any]:
    """The summary as plain data (the ``--report`` body, minus run identity)."""
    elapsed = stats.elapsed()
    latency = {
        name: {
            "requests": hist.count,
            "p50": hist.quantile(0.50),
            "p95": hist.quantile(0.95),
            "p99": hist.quantile(0.99),
        }
        for name, hist in sorted(stats.latency.items())
    }
    per_model = [
        (name, _quality(counts, features))
        for (name, features), counts in zip(models, stats.quality, strict=False)
    ]
    if len(per_model) == 1 and not per_model[0][0]:  # one unnamed model: as it always was
        data_quality: dict[str, Any] = per_model[0][1]
    elif per_model:
        data_quality = {"models": dict(per_model)}
    else:
        data_quality = {"rows": 0, "features": {}}
    return {
        "ids_read": stats.read,
        "resumed_from": stats.resumed_from,
        "ids_skipped": stats.skipped,
        "scored": stats.scored,
        "failed": stats.failed_total,
        "failed_by_reason": dict(sorted(stats.failed.items())),
        **({"left_out_by_reason": dict(sorted(stats.left_out.items()))} if stats.left_out else {}),
        "retries": stats.retries,
        "elapsed_seconds": round(elapsed, 3),
        "ids_per_second": round(stats.rate(elapsed), 1) if elapsed > 0 else None,
        "latency_seconds": latency,
        "source_statuses": {k: dict(v) for k, v in sorted(stats.statuses.items())},
        "concurrency": {k: v.as_dict() for k, v in sorted(stats.concurrency.items())},
        "busy_seconds": {k: round(v, 3) for k, v in sorted(stats.seconds.items())},
        "data_quality": data_quality,
        **(
            {"distribution": {"models": [d.to_dict() for d in stats.distributions]}}
            if stats.distributions
            else {}
        ),
        **({"drift": stats.drift.to_dict()} if stats.drift is not None else {}),
    }


def _quality(counts: FeatureQuality, features: Sequence[str]) -> dict[str, Any]:
    """One model's data quality: rows scored, and per feature the share of them missing or
    outside the training range."""
    rows = counts.rows
    if not rows:
        return {"rows": 0, "features": {}}
    shares = {
        name: {
            "missing_share": float(counts.missing[j]) / rows,
            "out_of_range_share": float(counts.out_of_range[j]) / rows,
        }
        for j, name in enumerate(features)
    }
    return {"rows": rows, "features": shares}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


def summary_lines(stats: RunStats) -> list[str]:
    """The human summary printed on stderr at the end of a run."""
    data = as_dict(stats)
    rate = data["ids_per_second"]
    lines = [
        f"read {counted(stats.read, 'ID')}, scored {stats.scored:,}, failed {stats.failed_total:,}"
        + (f", skipped {stats.skipped:,}" if stats.skipped else "")
        + f" in {data['elapsed_seconds']:.1f} s"
        + (f" ({rate:,.0f} IDs/s)" if rate else ""),
    ]
    if stats.resumed_from:
        lines.append(f"resumed: {stats.resumed_from:,} of them were committed by the stopped run")
    if stats.left_out:
        reasons = ", ".join(f"{reason} {n:,}" for reason, n in stats.left_out.most_common())
        lines.append(
            f"left out {counted(stats.left_out.total(), 'record')} of the errors file, of "
            f"reasons --reason did not ask for: {reasons}"
        )
    if stats.failed:
        reasons = ", ".join(f"{reason} {count:,}" for reason, count in stats.failed.most_common())
        lines.append(f"failed by reason: {reasons}")
    lines += failure_lines(stats)
    if stats.retries:
        lines.append(f"retries: {stats.retries:,}")
    for name, lat in data["latency_seconds"].items():
        lines.append(
            f"source {name}: {counted(lat['requests'], 'request')}, latency p50 {_ms(lat['p50'])}, "
            f"p95 {_ms(lat['p95'])}, p99 {_ms(lat['p99'])}"
        )
    for name, limit in data["concurrency"].items():
        lines.append(
            f"source {name}: concurrency auto, {limit['final']:,} at the end (range "
            f"{limit['low']:,}-{limit['high']:,}, {limit['changes']:,} changes)"
        )
    for name, counts in data["source_statuses"].items():
        lines.append(
            f"source {name} statuses: " + ", ".join(f"{k} {v:,}" for k, v in counts.items())
        )
    busy = data["busy_seconds"]
    if busy:
        lines.append("time busy: " + ", ".join(f"{k} {v:.2f} s" for k, v in busy.items()))
    lines += distribution_lines(stats.distributions, stats.drift)
    return lines


def failure_lines(stats: RunStats) -> list[str]:
    """The first failed IDs , one a line: ``  line 17  C999001  not_found (profile)``."""
    records = stats.first_failures
    if not records:
        return []
    shown = [_shown_id(r.id) for r in records]
    line_width = max(len(f"{r.line:,}") for r in records)
    id_width = max(len(i) for i in shown)
    title = (
        f"first {counted(len(records), 'failed ID')}"
        + (" of this run" if stats.resumed_from else "")
        + ":"
        if stats.failed_total > len(records)
        else "failed IDs:"
    )
    out = [title]
    for record, ident in zip(records, shown, strict=True):
        where = f" ({record.source})" if record.source else ""
        out.append(
            f"  line {record.line:>{line_width},}  {ident:<{id_width}}  {record.reason}{where}"
        )
    return out


_ID_SHOWN = 40


def _shown_id(ident: str | None) -> str:
    """An ID as the summary shows it: on one line, at most 40 characters."""
    if ident is None or ident == "":
        return "(no ID)"
    text = ident if ident.isprintable() else repr(ident)
    return text if len(text) <= _ID_SHOWN else text[: _ID_SHOWN - 3] + "..."


class BusyClock:
    """Wall time during which at least one operation of a stage was running.

    Stages overlap (fetches run while a batch is scored), so busy times are unions of intervals
    per stage, not sums of durations, and each is at most the elapsed time.
    """

    def __init__(self, stats: RunStats, stage: str) -> None:
        self.stats = stats
        self.stage = stage
        self.active = 0
        self._since = 0.0

    def __enter__(self) -> None:
        if self.active == 0:
            self._since = time.monotonic()
        self.active += 1

    def __exit__(self, *exc: object) -> None:
        self.active -= 1
        if self.active == 0:
            self.stats.seconds[self.stage] += time.monotonic() - self._since


def report_body(
    stats: RunStats,
    features: Sequence[tuple[str, Sequence[str]]],
    status: int,
    run_id: str,
    identity: dict[str, Any],
) -> dict[str, Any]:
    """The ``--report`` JSON: the summary plus run identity, exit code and data quality."""
    return {"run_id": run_id, "exit_code": int(status), **identity, **as_dict(stats, features)}


def write_report(path: str, body: dict[str, Any]) -> None:
    """Write a :func:`report_body` atomically."""
    import orjson

    write_atomically(
        path, orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    )


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def sample_value(value: float) -> str:
    """A sample value, exact: an integer as its digits, a float as its shortest repr.

    Prometheus reads values with Go's ``ParseFloat``, correctly rounded, so ``repr`` (the
    shortest text that reads back to the same double) is exact; ``{:g}`` kept six digits
    (a Unix time off by an hour, counters above 999,999 rounded).  Not finite: the format's
    own ``NaN``, ``+Inf`` and ``-Inf``.
    """
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def metrics_text(stats: RunStats, status: int, identity: dict[str, Any]) -> str:
    """The counters in Prometheus text exposition format (for the node exporter's textfile).

    Written by hand rather than with ``prometheus_client``: a few gauges are all it takes,
    :func:`sample_value` makes every value exact, and the library would be one more
    dependency (~7.5 ms of import on top of a run's own; measured with 0.26.0) for the same
    text.  ``tests/test_report.py`` reads the file back.
    """
    out: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP batchscore_{name} {help_text}")
        out.append(f"# TYPE batchscore_{name} {kind}")
        out.extend(f"batchscore_{name}{labels} {sample_value(value)}" for labels, value in samples)

    model = f'{{model_version="{_label(str(identity.get("model_version", "")))}"}}'
    metric("ids_read", "gauge", "IDs read from the input in the last run.", [("", stats.read)])
    metric("ids_scored", "gauge", "IDs scored in the last run.", [("", stats.scored)])
    metric(
        "ids_failed",
        "gauge",
        "IDs not scored in the last run, by reason.",
        [(f'{{reason="{_label(r)}"}}', n) for r, n in sorted(stats.failed.items())] or [("", 0)],
    )
    metric("retries", "gauge", "Retried requests in the last run.", [("", stats.retries)])
    metric("duration_seconds", "gauge", "Wall time of the last run.", [("", stats.elapsed())])
    metric("exit_code", "gauge", "Exit status of the last run.", [(model, status)])
    metric(
        "last_run_timestamp_seconds",
        "gauge",
        "When the last run ended (Unix time).",
        [("", time.time())],
    )
    metric(
        "stage_busy_seconds",
        "gauge",
        "Wall time during which each stage was busy.",
        [(f'{{stage="{k}"}}', v) for k, v in sorted(stats.seconds.items())],
    )
    latency: list[tuple[str, float]] = []
    for source, hist in sorted(stats.latency.items()):
        for q in (0.5, 0.95, 0.99):
            value = hist.quantile(q)
            if value is not None:
                latency.append((f'{{source="{_label(source)}",quantile="{q}"}}', value))
    metric("fetch_latency_seconds", "gauge", "Fetch latency quantiles per source.", latency)
    drift = stats.drift
    if drift is not None:
        metric(
            "score_psi",
            "gauge",
            "Population stability index of each score column against --baseline.",
            [
                (f'{{model="{_label(c.model)}",column="{_label(c.column)}"}}', c.psi)
                for c in drift.scores
            ],
        )
        metric(
            "drifted_columns",
            "gauge",
            "Columns (scores and features) beyond the drift thresholds against --baseline.",
            [("", len(drift.drifted_names))],
        )
    if stats.concurrency:
        metric(
            "source_concurrency",
            "gauge",
            "Each source's adaptive limit on requests in flight (--concurrency auto): at the "
            "end of the last run, and the lowest and highest it took.",
            [
                (f'{{source="{_label(name)}",value="{which}"}}', value)
                for name, limit in sorted(stats.concurrency.items())
                for which, value in (
                    ("final", limit.final),
                    ("low", limit.low),
                    ("high", limit.high),
                )
            ],
        )
    return "\n".join(out) + "\n"


def noop_metric(noop: bool) -> str:
    """The gauge that tells a dashboard whether the last invocation did anything.

    A ``--resume`` run that finds its output complete already writes the figures of the run
    that wrote it again, with this gauge at 1, so a good night never turns into zeros.
    """
    return (
        "# HELP batchscore_noop 1 when the last invocation found its output complete already "
        "and did nothing; the other figures are those of the run that wrote it.\n"
        "# TYPE batchscore_noop gauge\n"
        f"batchscore_noop {int(noop)}\n"
    )


def write_metrics(path: str, stats: RunStats, status: int, identity: dict[str, Any]) -> None:
    """Write the Prometheus textfile atomically."""
    write_metrics_text(path, metrics_text(stats, status, identity))


def write_metrics_text(path: str, text: str, *, noop: bool = False) -> None:
    """Write a :func:`metrics_text` (and :func:`noop_metric`) atomically."""
    write_atomically(path, (text + noop_metric(noop)).encode())
