"""``batchscore check``: would a real run work?  Config, model, sources, a sample, coverage, ETA.

The check builds the same parts a run builds (settings, model, sources, limits, retry policy)
and fetches a small sample of IDs through them, so what it reports is what a run would meet.
Without an ID list it sends one probe request per source (ID ``0``; "not found" is a fine
answer: the source is reachable) and reports coverage only for the sources that name their
features up front.

Exit status: 0 when a real run would work; 2 for a config or model problem (raised before any
fetch, or two sources giving the same feature with no ``wins``); 4 when a source is unreachable
(a database source cannot even be opened), fails every sample request, or rejects our
credentials.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from batchscore import idrows
from batchscore import ids as idmod
from batchscore.assembly import merge_answers, source_columns
from batchscore.chunk import Matrix
from batchscore.errors import ExitStatus, SourceDownError, UsageError
from batchscore.model import Member, ModelSet
from batchscore.redact import redact
from batchscore.report import LatencyHistogram, RunStats
from batchscore.settings import Settings
from batchscore.sources import NOT_FOUND, Failure, Fetched, Source
from batchscore.sources.build import build_sources
from batchscore.sources.configs import InputConfig
from batchscore.sources.httpclient import CredentialsRejected
from batchscore.sources.input import InputSource, input_values
from batchscore.sources.limits import Limits
from batchscore.wording import counted

PROBE_ID = "0"
MAX_SAMPLE = 100_000  # IDs a check fetches at most: they are held in memory, several times over
MOSTLY_MISSING = 0.5  # share of sample rows above which a feature is "mostly missing"
SHOWN = 8  # feature names listed per line before "and N more"


@dataclass
class SourceCheck:
    """What one source did with the sample."""

    name: str
    kind: str
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)  # per request
    found: int = 0
    not_found: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    rejected: str | None = None  # why it failed for good: credentials rejected, or down
    seen: set[str] = field(default_factory=set)  # feature names in its answers
    note: str | None = None  # what an input source reads (it makes no requests)

    @property
    def reachable(self) -> bool:
        """Answered at least one request with features or a "not found"."""
        return self.rejected is None and (self.found + self.not_found) > 0

    @property
    def mean_latency(self) -> float:
        """Mean seconds per request (0 when nothing was measured)."""
        return self.latency.total / self.latency.count if self.latency.count else 0.0


@dataclass
class CheckResult:
    """The outcome of a check: an exit status and the lines to show."""

    status: ExitStatus = ExitStatus.OK
    lines: list[str] = field(default_factory=list)

    def add(self, topic: str, text: str) -> None:
        """One line of the report."""
        self.lines.append(f"{topic:<8} {text}")

    def fail(self, status: ExitStatus) -> None:
        """Record a problem; the most serious status wins (4 over 2)."""
        self.status = max(self.status, status)


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def read_sample(
    path: str, settings: Settings, size: int, values: idrows.ChooseValues | None = None
) -> list[idrows.IdRow]:
    """The rows of the first ``size`` distinct IDs of an ID list (input problems are skipped),
    carrying the values ``values`` chooses (an input source's columns)."""
    fmt = idmod.detect_format(path, settings.input.format)
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed below, after a partial read
    except OSError as exc:
        raise UsageError(f"cannot read ID file {path}: {exc.strerror}") from None
    with stream:
        rows = idmod.read_ids(
            stream,
            fmt,
            settings.input.id_column,
            settings.input.id_field,
            settings.input.keep,
            settings.input.header,
            values,
        )
        first: dict[str, idrows.IdRow] = {}
        ids = (row for row in rows if isinstance(row, idrows.IdRow))
        for row in itertools.islice(ids, size * 4):
            first.setdefault(row.id, row)
            if len(first) >= size:
                break
        return list(first.values())


async def _fetch_sample(
    source: Source, ids: list[str], names: list[str], report: SourceCheck
) -> Fetched:
    """Fetch ``ids`` as a run would; a rejection of our credentials is recorded."""
    try:
        fetched = await source.fetch(ids, names)
    except CredentialsRejected as exc:
        report.rejected = (
            f"REJECTED our credentials (HTTP {exc.status}); check the token or headers in its "
            "config"
        )
        return Fetched.failed(len(ids), Failure("rejected", exc.status, 1), names)
    except SourceDownError as exc:  # down: the other sources' lines are still worth showing
        report.rejected = f"UNREACHABLE: {exc.problem or exc.message}"
        return Fetched.failed(len(ids), Failure("source_down", None, 1), names)
    failed = [f.reason for f in fetched.failures.values() if f.reason != NOT_FOUND]
    report.found = int(fetched.found.sum())
    report.failures.update(failed)
    report.not_found = len(ids) - report.found - len(failed)
    found_rows = fetched.found.tolist()
    report.seen.update(
        name
        for name, column in fetched.columns.items()
        if any(v is not None for v, found in zip(column, found_rows, strict=True) if found)
    )
    return fetched


def _kind(source: Source) -> str:
    config: Any = getattr(source, "config", None)
    kind = str(getattr(config, "kind", type(source).__name__))
    mode = getattr(config, "mode", None)
    return f"{kind}, {mode}" if mode else kind


def _conflicts(
    sources: Sequence[Source], checks: Sequence[SourceCheck], wanted: frozenset[str]
) -> list[str]:
    """Model features answered by two sources where the config does not say which wins."""
    providers: dict[str, list[str]] = {}
    for source, check in zip(sources, checks, strict=True):
        if source.provides() is not None:
            continue  # feature_owners checked those up front
        for name in check.seen & wanted:
            providers.setdefault(name, []).append(source.name)
    for source in sources:
        known = source.provides()
        if known is None:
            continue
        for name in known & wanted:
            if name in providers:
                providers[name].append(source.name)
    problems = []
    for name, owners in sorted(providers.items()):
        if len(owners) < 2:
            continue
        winners = [
            s.name for s in sources if name in getattr(getattr(s, "config", None), "wins", ())
        ]
        if len(winners) != 1:
            problems.append(f"'{name}' comes from {', '.join(owners)}")
    return problems


async def _check_sources(
    settings: Settings,
    models: ModelSet,
    sample: list[str],
    result: CheckResult,
    total: int | None,
    given: InputSource | None = None,
) -> None:
    """``given``: the input source that read the sample (it answers with the sample's values)."""
    from batchscore.plan import check_coverage

    stats = RunStats()
    limits = Limits.of(settings.fetch, stats.observe, stats.limit_changed)
    sources = build_sources(settings.sources, limits, settings.fetch, stats)
    if given is not None:
        sources = [given if isinstance(s, InputSource) else s for s in sources]
    where = settings.config_path or "flags and environment"
    result.lines.insert(0, f"{'config':<9}{where}: valid, {len(sources)} source(s)")
    opened: list[Source] = []
    try:
        for source in sources:
            try:
                await source.open()
            except SourceDownError as exc:  # a database that is down or refuses us
                problem = exc.problem or exc.message
                result.add("source", f"{source.name} ({_kind(source)}): {problem}")
                result.fail(ExitStatus.STOPPED)
                return
            opened.append(source)
        check_coverage(models, sources)
        columns = source_columns(sources, models.feature_names)
        ids = sample or [PROBE_ID]
        checks = [SourceCheck(s.name, _kind(s), note=_input_note(s)) for s in sources]
        cpu = time.process_time()
        per_source = await asyncio.gather(
            *(
                _fetch_sample(s, ids, names, c)
                for s, names, c in zip(sources, columns, checks, strict=True)
            )
        )
        cpu = time.process_time() - cpu
    finally:
        for source in opened:
            await source.close()

    for check in checks:
        check.latency = stats.latency.get(check.name, check.latency)
        _report_source(check, len(ids), result)
    if stats.retries:
        result.add("retries", f"{stats.retries} during the sample (retried as a run would)")
    if result.status == ExitStatus.STOPPED:
        return
    wanted = frozenset(models.feature_names)
    conflicts = _conflicts(sources, checks, wanted)
    if conflicts:
        result.add(
            "problem",
            "features from two sources: "
            + "; ".join(conflicts)
            + "; add each to `wins` of exactly one of them",
        )
        result.fail(ExitStatus.USAGE)
    if not sample:
        _static_coverage(sources, models, result)
        return
    chunk = merge_answers(sources, models, ids, per_source)
    assert chunk.matrix is not None
    rows = chunk.matrix[chunk.ok()]  # the sample IDs found, as the run would score them
    for member in models.members:
        _coverage(member, member.matrix(rows), len(sample), result)
    if total is not None:
        requests = sum(c.latency.count for c in checks)
        _eta(settings, sources, checks, models, rows, total, cpu / max(requests, 1), result)


def _input_note(source: Source) -> str | None:
    """What an input source takes from the input (None for any other source)."""
    if not isinstance(source, InputSource):
        return None
    chosen = source.chosen
    if chosen is None:
        return "features from the input's own columns; pass the input (IDS) to check them"
    if not chosen:
        return "no input column is a model feature (see `columns` and `rename`)"
    return f"columns {_names(list(chosen))} of the input; no requests"


def _report_source(check: SourceCheck, asked: int, result: CheckResult) -> None:
    head = f"{check.name} ({check.kind}): "
    if check.note is not None:
        result.add("source", head + check.note)
        return
    if check.rejected is not None:
        result.add("source", head + check.rejected)
        result.fail(ExitStatus.STOPPED)
        return
    lat = check.latency
    timing = (
        f"{lat.count} request{'s' * (lat.count != 1)}, latency p50 {_ms(lat.quantile(0.5))}, "
        f"max {_ms(lat.quantile(1.0))}"
    )
    failed = sum(check.failures.values())
    reasons = ", ".join(f"{reason} {n}" for reason, n in check.failures.most_common())
    if not check.reachable:
        result.add(
            "source",
            head + f"UNREACHABLE: every request failed ({reasons}); {timing}",
        )
        result.fail(ExitStatus.STOPPED)
        return
    counts = f"{check.found} found, {check.not_found} not found" + (
        f", {failed} failed ({reasons})" if failed else ""
    )
    result.add("source", head + f"reachable; {timing}; {counts} of {asked}")


def _coverage(model: Member, matrix: Matrix, asked: int, result: CheckResult) -> None:
    """Which of a model's features the sample IDs found lack (``matrix``: their rows, the
    model's features)."""
    topic = f"coverage {model.name}" if model.name else "coverage"
    if not len(matrix):
        result.add(topic, f"none of the {asked} sample IDs was found in any source")
        return
    missing = np.isnan(matrix).mean(axis=0)
    names = model.info.feature_names
    never = [n for n, share in zip(names, missing, strict=True) if share == 1.0]
    mostly = [
        f"{n} ({share:.0%})"
        for n, share in zip(names, missing, strict=True)
        if MOSTLY_MISSING < share < 1.0
    ]
    where = f"in the {len(matrix)} sample IDs found"
    if never:
        result.add(topic, f"no source gave {len(never)} model feature(s) {where}: " + _names(never))
    else:
        result.add(topic, f"every one of the {len(names)} model features came from a source")
    if mostly:
        result.add(topic, f"mostly missing (>{MOSTLY_MISSING:.0%}) {where}: {_names(mostly)}")


def _static_coverage(sources: Sequence[Source], models: ModelSet, result: CheckResult) -> None:
    unknown = [s.name for s in sources if s.provides() is None]
    if any(isinstance(s, InputSource) for s in sources) and unknown:
        result.add("coverage", "features come from the input's columns: pass the input (IDS)")
    elif unknown:
        result.add(
            "coverage",
            f"source(s) {', '.join(unknown)} name their features only in answers; "
            "pass an ID list to check coverage on a sample",
        )
    else:
        result.add(
            "coverage", f"every one of the {len(models.feature_names)} model features has a source"
        )


def _eta(
    settings: Settings,
    sources: Sequence[Source],
    checks: Sequence[SourceCheck],
    models: ModelSet,
    rows: Matrix,
    total: int,
    cpu_per_request: float,
    result: CheckResult,
) -> None:
    """The longest of: the requests at the measured latency, spread over ``--concurrency`` (or
    at ``--rate-limit``); this process's CPU for them (per-ID requests are client-CPU-bound near
    2,000/s per core); and scoring them."""
    requests = [
        0 if isinstance(s, InputSource) else math.ceil(total / s.batch_size) for s in sources
    ]
    busy = sum(n * c.mean_latency for n, c in zip(requests, checks, strict=True))
    fetch = settings.fetch
    what = f"up to {fetch.ceiling} (auto)" if fetch.concurrency == "auto" else fetch.ceiling
    bounds = {
        f"latency at concurrency {what}": busy / fetch.ceiling,
        "client CPU": sum(requests) * cpu_per_request,
    }
    if settings.fetch.rate_limit > 0:
        bounds[f"--rate-limit {settings.fetch.rate_limit:g}/s"] = (
            sum(requests) / settings.fetch.rate_limit
        )
    if len(
        rows
    ):  # time a whole scoring batch (the sample's rows repeated): per-call costs are real
        batch = np.resize(rows, (min(settings.score.batch_size, total), rows.shape[1]))
        started = time.perf_counter()
        for member in models.members:
            member.model.predict(member.matrix(batch))
            if settings.score.explain:  # LightGBM's contributions cost many predicts
                member.model.contributions(member.matrix(batch))
        scoring = "scoring with --explain" if settings.score.explain else "scoring"
        bounds[scoring] = (time.perf_counter() - started) / len(batch) * total
    bound, seconds = max(bounds.items(), key=lambda item: item[1])
    result.add(
        "eta",
        f"{counted(total, 'ID')} in about {_duration(seconds)} (bound by {bound}; "
        "estimated from the sample)",
    )


def _input_source(settings: Settings) -> InputSource | None:
    """The configured source of kind input, built on its own: it reads the sample."""
    for config in settings.sources:
        if isinstance(config, InputConfig):
            return InputSource(config)
    return None


def run_check(settings: Settings, ids_path: str | None, sample_size: int, out: TextIO) -> int:
    """Check everything a run needs; print the findings to ``out``; return the exit status."""
    if not 1 <= sample_size <= MAX_SAMPLE:
        raise UsageError(
            f"--sample must be between 1 and {MAX_SAMPLE:,} (the sample is held in memory; "
            "a whole list is for batchscore score)"
        )
    result = CheckResult()
    from batchscore.plan import load_models

    models = load_models(settings)
    for member in models.members:
        info = member.info
        result.add(
            "model",
            (f"{member.name}: " if member.name else "")
            + f"{info.path}: {info.objective}, {info.num_trees} trees, {info.num_class} "
            f"class(es), {len(info.features)} features, version {info.version}",
        )
    sample: list[str] = []
    total: int | None = None
    given = _input_source(settings)
    if ids_path is not None:
        if not Path(ids_path).is_file():
            raise UsageError(f"ID file {ids_path} does not exist; pass a path to a list of IDs")
        fmt = idmod.detect_format(ids_path, settings.input.format)
        if given is not None and fmt == "text":
            raise UsageError(idmod.TEXT_HAS_NO_FEATURES)
        id_name = idmod.id_key(fmt, settings.input.id_column, settings.input.id_field)
        choose = input_values([given], id_name, models.feature_names) if given else None
        rows = read_sample(ids_path, settings, sample_size, choose)
        sample = [row.id for row in rows]
        if given is not None:
            given.preload({row.id: row.values for row in rows})
        skipped = idmod.header_lines(fmt, settings.input.header)
        total = max(idmod.count_lines(ids_path) - skipped, 0)  # a header is no ID
        result.add(
            "sample",
            f"{counted(len(sample), 'ID')} from {ids_path} ({counted(total, 'line')})",
        )
    else:
        result.add("sample", "no ID list given: one probe request per source")
    asyncio.run(_check_sources(settings, models, sample, result, total, given))
    for line in result.lines:
        print(redact(line), file=out)  # a source's answer or error may quote its URL
    verdict = {
        ExitStatus.OK: "ok       a real run should work",
        ExitStatus.USAGE: "FAILED   fix the config problem above, then check again",
        ExitStatus.STOPPED: "FAILED   a source is unreachable or rejects our credentials",
    }[result.status]
    print(verdict, file=out)
    return int(result.status)


__all__ = ["CheckResult", "SourceCheck", "run_check"]
