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
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from batchscore.assembly import Assembler
from batchscore.chunk import Chunk
from batchscore.errors import BatchscoreError
from batchscore.feed import ChunkFeed, Filters, StallHook
from batchscore.histograms import Distribution
from batchscore.idrows import InputItem
from batchscore.model import ModelSet
from batchscore.progress import ProgressDisplay
from batchscore.report import BusyClock, FeatureQuality, RunStats
from batchscore.scorer import Scorer, ScoringOptions
from batchscore.sinks import ScoredBatch, Sink
from batchscore.sinks.errorlog import ErrorLog
from batchscore.sources import Fetched, Source
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

    @property
    def scoring(self) -> ScoringOptions:
        """The scoring stage's part."""
        return ScoringOptions(self.raw_score, self.allow_empty, self.explain, self.with_features)

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
        self.scorer = Scorer(models, options.scoring)
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


__all__ = ["Checkpoint", "Pipeline", "PipelineOptions", "Writer"]
