"""The pipeline: chunks of input rows flow from the reader to the output, whole.

    reader thread --chunks--> dispatch --> per chunk: fetch (every source) -> score (thread)
                                                                              |
                                  commit <-- write (in chunk order) <---------+

Bounded by construction: at most ``window`` chunks are between reading and writing (reading
waits for the writer); requests in flight are bounded by the sources' shared :class:`Limits`;
at most ``workers`` predicts run at once.  Per-row Python work is left to where it cannot be
avoided (a reader decoding a line, a source parsing one ID's answer, a sink formatting a row);
everything else happens once per chunk, on arrays.  The pipeline takes all its parts as
arguments and touches no global state.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from batchscore.chunk import Chunk, Explanations, Status
from batchscore.edges import layout_of
from batchscore.errors import BatchscoreError, ConfigError
from batchscore.feed import ChunkFeed, Filters, StallHook
from batchscore.histograms import Distribution, Layout
from batchscore.ids import InputItem
from batchscore.model import Member, ModelSet
from batchscore.progress import ProgressDisplay
from batchscore.report import BusyClock, FeatureQuality, RunStats
from batchscore.sinks import ScoredBatch, Sink
from batchscore.sinks.errorlog import ErrorLog
from batchscore.sources import NOT_FOUND, Fetched, Source
from batchscore.sources.input import InputSource
from batchscore.sources.limits import PRIORITY
from batchscore.state import LineRanges


@dataclass(frozen=True)
class PipelineOptions:
    """How the pipeline behaves (from Settings; keyword-only, checked here once)."""

    batch_size: int = 1024  # rows per chunk: the unit of fetching, scoring and writing
    window: int = 0  # rows between reading and writing; 0 = derived from the batch sizes
    workers: int = 1  # predicts at once (each in its own thread)
    unordered: bool = False
    allow_empty: bool = False
    raw_score: bool = False
    explain: int = 0
    keep: bool = False  # carry --keep columns through
    with_features: bool = False  # write the feature matrix the model saw
    audit: tuple[str, ...] = ()  # audit columns (--add): model_version, scored_at
    filters: Filters = field(default_factory=Filters)
    checkpoint_interval: float = 1.0  # seconds between durable commits of written rows

    def chunk_rows(self, sources: Sequence[Source]) -> int:
        """Rows per chunk: ``batch_size``, rounded to a whole number of requests of the source
        with the largest ones, so no request goes out part-empty (1,024 rows and batches of
        100 IDs make chunks of 1,000: 10 requests, not 10 and one of 24).  A batch size below
        one request's is kept as given."""
        widest = max((s.batch_size for s in sources), default=1)
        if self.batch_size <= widest:
            return self.batch_size
        return round(self.batch_size / widest) * widest

    def window_chunks(self, sources: Sequence[Source]) -> int:
        """Chunks allowed between reading and writing (never fewer than two)."""
        size = self.chunk_rows(sources)
        rows = self.window
        if not rows:
            rows = max(8192, 4 * size)
        return max(2, -(-rows // size))


Checkpoint = Callable[[LineRanges], Awaitable[None]]
"""Makes everything written so far durable; called with the input lines it covers."""


def feature_owners(
    sources: Sequence[Source], model_features: Sequence[str]
) -> dict[str, frozenset[str]]:
    """Per source, the model features it must NOT contribute because another source wins them.

    A model feature provided by two sources is a config error unless exactly one of them lists it
    in ``wins``.  A source that names its features only in its answers (``provides()`` is None)
    counts as providing what it wins, and loses whatever another source wins.
    """
    wanted = set(model_features)
    wins = {s.name: set(getattr(getattr(s, "config", None), "wins", ())) for s in sources}
    providers: dict[str, list[str]] = {}
    drop: dict[str, set[str]] = {s.name: set() for s in sources}
    for source in sources:
        provided = source.provides()
        if provided is None:
            provided = frozenset(wins[source.name])
            drop[source.name].update(*(v for k, v in wins.items() if k != source.name))
        for name in provided & wanted:
            providers.setdefault(name, []).append(source.name)
    order = {name: j for j, name in enumerate(model_features)}
    # In model order, so that a conflict is always named by the same (first) feature.
    for name, owners in sorted(providers.items(), key=lambda item: order[item[0]]):
        if len(owners) < 2:
            continue
        winners = [source for source, won in wins.items() if name in won]
        if len(winners) != 1:
            from_input = [s.name for s in sources if isinstance(s, InputSource)]
            raise ConfigError(
                f"feature '{name}' comes from sources {', '.join(owners)}; "
                f"add it to `wins` of exactly one of them"
                + (
                    f" (or list the input columns to use in `columns` of source '{from_input[0]}')"
                    if from_input and from_input[0] in owners
                    else ""
                )
            )
        for owner in owners:
            if owner != winners[0]:
                drop[owner].add(name)
    return {k: frozenset(v) for k, v in drop.items()}


def source_columns(sources: Sequence[Source], model_features: Sequence[str]) -> list[list[str]]:
    """Per source, the model features it fills, in model order (see :func:`feature_owners`)."""
    drop = feature_owners(sources, model_features)
    columns = []
    for source in sources:
        provided = source.provides()
        columns.append(
            [
                name
                for name in model_features
                if name not in drop[source.name] and (provided is None or name in provided)
            ]
        )
    return columns


class Assembler:
    """Merges the sources' answers for a chunk: row statuses and the feature matrix."""

    def __init__(self, sources: Sequence[Source], models: ModelSet) -> None:
        self.sources = list(sources)
        self.encoder = models.encoder
        self.width = len(models.features)
        self.columns = source_columns(self.sources, models.feature_names)
        owners: dict[str, int] = {}
        for columns in self.columns:
            for name in columns:
                owners[name] = owners.get(name, 0) + 1
        # A column that more than one source may fill (sources that name their features only
        # in answers): later sources fill it only where they have a value.
        self.shared = frozenset(name for name, count in owners.items() if count > 1)

    def assemble(
        self, chunk: Chunk, rows: npt.NDArray[np.intp], answers: Sequence[Fetched]
    ) -> None:
        """Fill ``chunk.matrix`` at ``rows`` (the rows fetched) and mark rows that failed."""
        matrix = np.full((len(chunk), self.width), np.nan, dtype=np.float64)
        everything = len(rows) == len(chunk)
        found = np.zeros(len(rows), dtype=np.bool_)
        for source, names, fetched in zip(self.sources, self.columns, answers, strict=True):
            found |= fetched.found
            for position in sorted(fetched.failures):
                row = int(rows[position])
                failure = fetched.failures[position]
                if failure.reason == NOT_FOUND or chunk.status[row] != Status.OK:
                    continue
                record = chunk.record(
                    row, "fetch", source.name, failure.reason, failure.status, failure.attempts
                )
                chunk.fail(row, Status.FAILED, record)
            for name in names:
                for j in self.encoder.slots[name]:  # one column per encoding of the feature
                    values = self.encoder.column(j, fetched.columns[name])
                    if name in self.shared:
                        current = matrix[:, j] if everything else matrix[rows, j]
                        values = np.where(np.isnan(values), current, values)
                    if everything:
                        matrix[:, j] = values
                    else:
                        matrix[rows, j] = values
        missing = rows[~found]
        single = self.sources[0].name if len(self.sources) == 1 else None
        for row in missing.tolist():
            if chunk.status[row] == Status.OK:
                record = chunk.record(row, "fetch", single, NOT_FOUND, None, 1)
                chunk.fail(row, Status.NOT_FOUND, record)
        chunk.matrix = matrix


class Scorer:
    """Predicts a chunk's matrix with every model (in a scoring thread), explains it, counts
    data quality per model."""

    def __init__(self, models: ModelSet, options: PipelineOptions) -> None:
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


class Writer:
    """Writes chunks in index order (or as they come, ``unordered``) and commits them."""

    def __init__(
        self,
        *,
        sink: Sink,
        errors: ErrorLog,
        stats: RunStats,
        progress: ProgressDisplay,
        feature_names: Sequence[str],
        unordered: bool,
        audit: Sequence[str] = (),
        constants: dict[str, str] | None = None,
        checkpoint: Checkpoint | None,
        clock: BusyClock,
    ) -> None:
        self.sink = sink
        self.errors = errors
        self.stats = stats
        self.progress = progress
        self.names = np.array(feature_names, dtype=object)  # what explanations' indices name
        self.audit = tuple(audit)
        self.constants = constants or {}  # audit columns of one value (model_version ...)
        self.unordered = unordered
        self.checkpoint = checkpoint
        self.clock = clock
        self.written = LineRanges()
        self._waiting: dict[int, Chunk] = {}
        self._next = 0
        self._dirty = False

    def ready(self, chunk: Chunk) -> list[Chunk]:
        """The chunks that can be written now that ``chunk`` is done."""
        if self.unordered:
            return [chunk]
        self._waiting[chunk.index] = chunk
        out = []
        while self._next in self._waiting:
            out.append(self._waiting.pop(self._next))
            self._next += 1
        return out

    async def write(self, chunk: Chunk, quality: list[FeatureQuality] | None) -> None:
        """Write one chunk's scores and errors; count it."""
        stats = self.stats
        with self.clock:
            if chunk.scores is not None and len(chunk.failures) < len(chunk):
                await self.sink.write(self._batch(chunk))
            records = chunk.error_records()
            if records:
                await self.errors.write(records)
        stats.read += chunk.read
        stats.skipped += chunk.filtered
        stats.scored += len(chunk) - len(chunk.failures)
        stats.add_failures(records)
        if quality is not None:
            for total, part in zip(stats.quality, quality, strict=True):
                total.missing += part.missing
                total.out_of_range += part.out_of_range
                total.rows += part.rows
            for histograms, part in zip(stats.distributions, quality, strict=True):
                if part.distribution is not None:
                    histograms.add(part.distribution)
        self.written.add(chunk.first_line, chunk.last_line)
        self._dirty = True
        self.progress.update(stats)

    def _batch(self, chunk: Chunk) -> ScoredBatch:
        assert chunk.scores is not None
        explain = chunk.explanations
        features = chunk.matrix  # kept for --with-features only
        if not chunk.failures:
            ids: Sequence[str] = chunk.ids
            keep = chunk.keep
            scores = chunk.scores
        else:
            ok = chunk.ok()
            rows = np.flatnonzero(ok)
            ids = [chunk.ids[r] for r in rows.tolist()]
            keep = None if chunk.keep is None else [chunk.keep[r] for r in rows.tolist()]
            scores = chunk.scores[rows]
            if explain is not None:
                explain = explain.take(rows)
            if features is not None:
                features = features[rows]
        chunk.matrix = None
        return ScoredBatch(
            ids=ids,
            scores=scores,
            keep=keep,
            explain_features=None if explain is None else self.names[explain.features],
            explain_values=None if explain is None else explain.values,
            explain_contributions=None if explain is None else explain.contributions,
            features=features,
            audit=tuple(self._audit_value(name, chunk) for name in self.audit),
        )

    def _audit_value(self, name: str, chunk: Chunk) -> str:
        """An audit column's value for every row of ``chunk``."""
        if name in self.constants:
            return self.constants[name]
        assert name == "scored_at"
        return scored_at_text(chunk.scored_at)

    async def commit(self) -> None:
        """Make what is written durable (when anything was written since the last commit)."""
        if self.checkpoint is not None and self._dirty:
            self._dirty = False
            with self.clock:
                await self.checkpoint(self.written)


@dataclass(slots=True)
class _Done:
    """A chunk that went through fetching and scoring, on its way to the writer."""

    chunk: Chunk
    quality: list[FeatureQuality] | None


class Pipeline:
    """One run of the stages over an input."""

    def __init__(
        self,
        *,
        sources: Sequence[Source],
        models: ModelSet,
        sink: Sink,
        errors: ErrorLog,
        progress: ProgressDisplay,
        stats: RunStats,
        options: PipelineOptions,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.sources = list(sources)
        self.models = models
        self.stats = stats
        self.options = options
        self.assembler = Assembler(self.sources, models)
        self.scorer = Scorer(models, options)
        stats.quality = [
            FeatureQuality(np.zeros(n, np.int64), np.zeros(n, np.int64))
            for n in (len(m.info.features) for m in models.members)
        ]
        fresh = [Distribution(layout) for layout in self.scorer.layouts]
        if len(stats.distributions) != len(fresh) or not all(
            kept.layout.same_bins(new.layout)
            for kept, new in zip(stats.distributions, fresh, strict=True)
        ):  # a new run, or a state from before these bins: count from here
            stats.distributions = fresh
        # A source that answers from the chunk's own values, without a request.
        self._input = next((s for s in self.sources if isinstance(s, InputSource)), None)
        self._clocks = {stage: BusyClock(stats, stage) for stage in ("fetch", "score", "write")}
        self.writer = Writer(
            sink=sink,
            errors=errors,
            stats=stats,
            progress=progress,
            feature_names=[n for m in models.members for n in m.info.feature_names],
            unordered=options.unordered,
            audit=options.audit,
            constants=models.version_columns(),
            checkpoint=checkpoint,
            clock=self._clocks["write"],
        )
        self._executor = ThreadPoolExecutor(
            max_workers=options.workers,
            thread_name_prefix="batchscore-score",
            initializer=_yield_to_the_loop,
        )
        self._scoring = asyncio.Semaphore(options.workers)
        self._dispatcher: asyncio.Task[None] | None = None
        self._feed: ChunkFeed | None = None
        self._stopping = False

    def stop(self) -> None:
        """Stop taking new IDs; what is in flight finishes and is written."""
        self._stopping = True
        if self._feed is not None:
            self._feed.stop()

    def cancel_in_flight(self) -> None:
        """Give up on what is being fetched (after a grace period); those rows stay uncommitted.

        Cancelling the dispatcher cancels its chunk tasks too (they run in its task group);
        the writer then finishes what already arrived.
        """
        if self._dispatcher is not None and not self._dispatcher.done():
            self._dispatcher.cancel()

    async def run(self, items: Iterator[InputItem], stall: StallHook | None = None) -> None:
        """Run every stage to the end of the input (or until stopped)."""
        done: asyncio.Queue[_Done | None] = asyncio.Queue()
        window = asyncio.Semaphore(self.options.window_chunks(self.sources))
        try:
            async with asyncio.TaskGroup() as group:
                self._dispatcher = group.create_task(self._dispatch(items, stall, window, done))
                group.create_task(self._write(done, window))
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        finally:
            if self._feed is not None:
                self._feed.stop()
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _dispatch(
        self,
        items: Iterator[InputItem],
        stall: StallHook | None,
        window: asyncio.Semaphore,
        done: asyncio.Queue[_Done | None],
    ) -> None:
        self._feed = feed = ChunkFeed(
            items,
            size=self.options.chunk_rows(self.sources),
            filters=self.options.filters,
            keep=self.options.keep,
            values=0 if self._input is None else self._input.width,
            stall=stall,
        )
        if self._stopping:
            feed.stop()
        try:
            async with asyncio.TaskGroup() as chunks:
                while not self._stopping:
                    await window.acquire()
                    chunk = await feed.next()
                    if chunk is None:
                        window.release()
                        break
                    chunks.create_task(self._process(chunk, done))
        finally:
            done.put_nowait(None)

    async def _process(self, chunk: Chunk, done: asyncio.Queue[_Done | None]) -> None:
        """Fetch and score one chunk, then hand it to the writer."""
        quality = None
        ok = chunk.ok()
        if ok.any():
            await self._fetch(chunk, ok)
            if chunk.ok().any():
                async with self._scoring:
                    with self._clocks["score"]:
                        loop = asyncio.get_running_loop()
                        quality = await loop.run_in_executor(
                            self._executor, self.scorer.score, chunk
                        )
        done.put_nowait(_Done(chunk, quality))

    async def _fetch(self, chunk: Chunk, ok: npt.NDArray[np.bool_]) -> None:
        rows = np.flatnonzero(ok)
        ids = chunk.ids if len(rows) == len(chunk) else [chunk.ids[r] for r in rows.tolist()]
        PRIORITY.set(chunk.index)  # this chunk's requests (and retries) queue by input position
        pairs = list(zip(self.sources, self.assembler.columns, strict=True))
        with self._clocks["fetch"]:
            # A task group: when one source stops the run (down, credentials refused), the
            # other sources' requests for this chunk are cancelled, not left running.
            async with asyncio.TaskGroup() as group:
                tasks = {
                    i: group.create_task(source.fetch(ids, names))
                    for i, (source, names) in enumerate(pairs)
                    if source is not self._input
                }
            answers = [
                tasks[i].result() if i in tasks else self._from_input(chunk, rows, names)
                for i, (_, names) in enumerate(pairs)
            ]
        self.assembler.assemble(chunk, rows, answers)

    def _from_input(
        self, chunk: Chunk, rows: npt.NDArray[np.intp], names: Sequence[str]
    ) -> Fetched:
        """The input source's answer: the chunk's own values, no request."""
        assert self._input is not None
        return self._input.answer(chunk.inputs or [], rows, len(rows) == len(chunk), names)

    async def _write(self, done: asyncio.Queue[_Done | None], window: asyncio.Semaphore) -> None:
        writer = self.writer
        loop = asyncio.get_running_loop()
        interval = self.options.checkpoint_interval
        next_commit = loop.time() + interval
        quality: dict[int, list[FeatureQuality] | None] = {}
        while True:
            try:
                # Nothing to write: wait, but commit what is written when a commit is due, so
                # a stalled input (a slow stdin) never leaves written rows uncommitted.
                item = await asyncio.wait_for(done.get(), max(next_commit - loop.time(), 0.001))
            except TimeoutError:
                await writer.commit()
                next_commit = loop.time() + interval
                continue
            if item is None:
                break
            quality[item.chunk.index] = item.quality
            for chunk in writer.ready(item.chunk):
                await writer.write(chunk, quality.pop(chunk.index))
                window.release()
            if loop.time() >= next_commit:
                await writer.commit()
                next_commit = loop.time() + interval
        # Chunks still waiting sit behind a chunk whose fetch was cancelled by a stop: they
        # are not written, so a resumed run does them again.
        await writer.commit()


def scored_at_text(seconds: float) -> str:
    """A scoring time as UTC ISO-8601 with milliseconds: ``2024-06-01T03:15:42.123Z``."""
    moment = dt.datetime.fromtimestamp(seconds, dt.UTC)
    return moment.isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"


SCORING_NICENESS = 10
"""How much lower the scoring threads' CPU priority is than the event loop's."""


def _yield_to_the_loop() -> None:
    """Lower this scoring thread's CPU priority (Linux: per thread).

    The event loop is the bottleneck of a run: everything but ``predict`` happens there, under
    the GIL.  When cores are short, the kernel should run the loop and let predicts take the
    time left over, not the other way round (bench/RESULTS.md measures it).
    """
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SCORING_NICENESS)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a (possibly nested) task group failure: ours first."""
    leaves: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        else:
            leaves.append(error)

    walk(group)
    ours = [e for e in leaves if isinstance(e, BatchscoreError)]
    return (ours or leaves)[0]


def allowed(stats: RunStats, max_failed: int, max_failed_rate: float) -> bool:
    """Whether the failures stay within the allowance (exit 0) or not (exit 3)."""
    failed = stats.failed_total
    if failed == 0 or failed <= max_failed:
        return True
    attempted = stats.done
    return attempted > 0 and failed / attempted <= max_failed_rate


def merge_answers(
    sources: Sequence[Source], models: ModelSet, ids: list[str], answers: Sequence[Fetched]
) -> Chunk:
    """The chunk ``batchscore check`` sees: the sample's rows assembled as a run would."""
    chunk = Chunk(
        index=0,
        first_line=1,
        last_line=len(ids),
        lines=np.arange(1, len(ids) + 1, dtype=np.int64),
        ids=ids,
        keep=None,
        status=np.zeros(len(ids), np.uint8),
    )
    Assembler(sources, models).assemble(chunk, np.arange(len(ids)), answers)
    return chunk


__all__ = [
    "Assembler",
    "Checkpoint",
    "Pipeline",
    "PipelineOptions",
    "Scorer",
    "Writer",
    "allowed",
    "feature_owners",
    "merge_answers",
    "source_columns",
]
