"""The pipeline: read IDs, fetch features concurrently, score in batches, write in order.

    reader thread -> dispatcher -> fetch tasks -> scorer (thread executor) -> writer
                   (window slot per row, released when the row is written or recorded as failed)

Concurrency is bounded by construction: every row in the system holds one slot of the *window*
semaphore from the moment it is read until it is written, so reading stops when the window is
full; requests in flight are bounded by the sources' shared :class:`Limits`; queues between
stages are bounded.  The pipeline takes all its parts as arguments and touches no global state.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from batchscore.errors import BatchscoreError, ConfigError
from batchscore.ids import IdRow, InputItem, InputProblem, stable_hash
from batchscore.model import Model
from batchscore.progress import Progress
from batchscore.report import BusyClock, FeatureQuality, RunStats
from batchscore.sinks import ScoredBatch, Sink
from batchscore.sinks.errorlog import ErrorLog, ErrorRecord
from batchscore.sources import NOT_FOUND, Failure, FetchResult, Source
from batchscore.sources.limits import PRIORITY


@dataclass(frozen=True)
class PipelineOptions:
    """How the pipeline behaves (from Settings; keyword-only, checked here once)."""

    batch_size: int = 1024
    linger: float = 0.5
    window: int = 0
    unordered: bool = False
    allow_empty: bool = False
    raw_score: bool = False
    explain: int = 0
    dedupe: bool = False
    shard: tuple[int, int] | None = None
    skip: Callable[[int], bool] | None = None  # resume: True for input rows already committed
    checkpoint_interval: float = 1.0  # seconds between durable commits of written rows

    def window_size(self, sources: Sequence[Source]) -> int:
        """Rows allowed between reading and writing."""
        if self.window:
            return self.window
        widest = max((s.batch_size for s in sources), default=1)
        return max(4096, 2 * self.batch_size, 8 * widest)


@dataclass(slots=True)
class Row:
    """One input row on its way through the pipeline."""

    seq: int
    line: int
    id: str
    keep: tuple[str, ...]
    features: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Scored:
    """A scored batch on its way to the writer."""

    rows: list[Row]
    scores: npt.NDArray[np.float64]
    explanations: list[list[tuple[str, float]]] | None
    failed: list[tuple[int, ErrorRecord]] = field(default_factory=list)  # no_features


@dataclass(slots=True)
class Failed:
    """Rows that will not be scored."""

    rows: list[tuple[int, ErrorRecord]]  # (seq, record)


_END = object()

Checkpoint = Callable[[int, frozenset[int]], Awaitable[None]]
"""Makes everything written so far durable: called with the input line up to which every row
is written (the mark) and the lines written above it (only in ``--unordered`` runs)."""


class _Feed:
    """Hands input items from a reader thread to the event loop, bounded, without per-item hops."""

    def __init__(self, items: Iterator[InputItem], capacity: int) -> None:
        self._items = items
        self._capacity = capacity
        self._buffer: deque[InputItem] = deque()
        self._lock = threading.Condition()
        self._ready = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._done = False
        self._stopped = False
        self._error: BaseException | None = None
        self.lines_read = 0
        threading.Thread(target=self._run, name="batchscore-reader", daemon=True).start()

    def _run(self) -> None:
        try:
            for item in self._items:
                with self._lock:
                    while len(self._buffer) >= self._capacity and not self._stopped:
                        self._lock.wait()
                    if self._stopped:
                        return
                    was_empty = not self._buffer
                    self._buffer.append(item)
                if was_empty:
                    self._loop.call_soon_threadsafe(self._ready.set)
        except BaseException as exc:
            self._error = exc
        finally:
            with self._lock:
                self._done = True
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                self._loop.call_soon_threadsafe(self._ready.set)

    async def take(self, limit: int) -> list[InputItem] | None:
        """Up to ``limit`` items that are ready now (waiting for at least one); None at the end."""
        while True:
            with self._lock:
                if self._buffer:
                    count = min(limit, len(self._buffer))
                    items = [self._buffer.popleft() for _ in range(count)]
                    self._lock.notify()
                    return items
                self._ready.clear()
                if self._stopped:
                    return None
                if self._done:
                    if self._error is not None:
                        raise self._error
                    return None
            await self._ready.wait()

    def stop(self) -> None:
        """Stop reading (the thread may stay blocked on its input; it is a daemon)."""
        with self._lock:
            self._stopped = True
            self._lock.notify_all()
        self._ready.set()


class Window:
    """Slots for rows between reading and writing; the reader takes many at once, the writer
    gives them back as rows are written.  (One waiter, so an event is enough.)"""

    def __init__(self, size: int) -> None:
        self.free = size
        self._freed = asyncio.Event()

    async def acquire(self, count: int) -> None:
        """Wait until ``count`` slots are free and take them."""
        while self.free < count:
            self._freed.clear()
            await self._freed.wait()
        self.free -= count

    def release(self, count: int) -> None:
        """Give ``count`` slots back."""
        self.free += count
        self._freed.set()


def unite(
    sources: Sequence[Source], answers: Sequence[FetchResult], drop: Mapping[str, frozenset[str]]
) -> dict[str, Any]:
    """One ID's features: the union of the sources' answers (failures skipped), each source
    without the features another source wins (``drop``, from :func:`feature_owners`)."""
    features: dict[str, Any] = {}
    for source, answer in zip(sources, answers, strict=True):
        if isinstance(answer, Failure):
            continue
        dropped = drop.get(source.name)
        if dropped:
            features.update((k, v) for k, v in answer.items() if k not in dropped)
        else:
            features.update(answer)
    return features


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
    for name, owners in providers.items():
        if len(owners) < 2:
            continue
        winners = [source for source, won in wins.items() if name in won]
        if len(winners) != 1:
            raise ConfigError(
                f"feature '{name}' comes from sources {', '.join(owners)}; "
                f"add it to `wins` of exactly one of them"
            )
        for owner in owners:
            if owner != winners[0]:
                drop[owner].add(name)
    return {k: frozenset(v) for k, v in drop.items()}


class Pipeline:
    """One run of the stages over an input."""

    def __init__(
        self,
        *,
        sources: Sequence[Source],
        model: Model,
        sink: Sink,
        errors: ErrorLog,
        progress: Progress,
        stats: RunStats,
        options: PipelineOptions,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.sources = list(sources)
        self.checkpoint = checkpoint
        self.model = model
        self.sink = sink
        self.errors = errors
        self.progress = progress
        self.stats = stats
        self.options = options
        self.window_rows = options.window_size(self.sources)
        self._drop = feature_owners(self.sources, model.info.feature_names)
        self._stopping = False
        self._dispatcher: asyncio.Task[None] | None = None
        self._feed: _Feed | None = None
        # Commit bookkeeping: rows are numbered by seq; the mark is the input line of the last
        # row of the longest written prefix; rows written beyond it are kept by seq -> line.
        self._prefix = 0
        self._mark = 0
        self._beyond: dict[int, int] = {}
        self._dirty = False  # rows written since the last checkpoint
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchscore-score")
        n = len(model.info.features)
        self.stats.quality = FeatureQuality(np.zeros(n, np.int64), np.zeros(n, np.int64))
        lows = [
            f.low if f.low is not None and not f.categorical else -np.inf
            for f in model.info.features
        ]
        highs = [
            f.high if f.high is not None and not f.categorical else np.inf
            for f in model.info.features
        ]
        self._low = np.array(lows, dtype=np.float64)
        self._high = np.array(highs, dtype=np.float64)
        self._clocks = {stage: BusyClock(stats, stage) for stage in ("fetch", "score", "write")}

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping

    def stop(self) -> None:
        """Stop taking new IDs; what is in flight finishes and is written."""
        self._stopping = True
        if self._feed is not None:
            self._feed.stop()

    def cancel_in_flight(self) -> None:
        """Give up on reading and fetching (after a grace period); those rows stay uncommitted.

        Cancelling the dispatcher cancels its fetch tasks too (they run in its task group); the
        scorer and writer then finish what already arrived.
        """
        if self._dispatcher is not None and not self._dispatcher.done():
            self._dispatcher.cancel()

    async def run(self, items: Iterator[InputItem]) -> None:
        """Run every stage to the end of the input (or until stopped)."""
        window = Window(self.window_rows)
        to_score: asyncio.Queue[Any] = asyncio.Queue(maxsize=64)
        to_write: asyncio.Queue[Any] = asyncio.Queue(maxsize=64)
        try:
            async with asyncio.TaskGroup() as group:
                self._dispatcher = group.create_task(
                    self._dispatch(items, window, to_score, to_write)
                )
                group.create_task(self._score(to_score, to_write))
                group.create_task(self._write(to_write, window))
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        finally:
            if self._feed is not None:
                self._feed.stop()
            self._executor.shutdown(wait=False, cancel_futures=True)

    # -- stage 1: read and dispatch ------------------------------------------------------------

    def _wanted(self, row: IdRow, seen: set[str]) -> bool:
        opts = self.options
        if opts.shard is not None:
            k, n = opts.shard
            if stable_hash(row.id) % n != k:
                return False
        if opts.dedupe:
            if row.id in seen:
                return False
            seen.add(row.id)
        return True

    async def _dispatch(
        self,
        items: Iterator[InputItem],
        window: Window,
        to_score: asyncio.Queue[Any],
        to_write: asyncio.Queue[Any],
    ) -> None:
        chunk_size = max(s.batch_size for s in self.sources)
        chunk_size = max(chunk_size, 64)
        self._feed = feed = _Feed(items, capacity=max(chunk_size * 4, 4096))
        seen: set[str] = set()
        seq = 0
        try:
            async with asyncio.TaskGroup() as fetches:
                while not self._stopping:
                    batch = await feed.take(chunk_size)
                    if batch is None:
                        break
                    # One slot per item, taken for the whole batch; skipped items give theirs
                    # back at once.
                    await window.acquire(len(batch))
                    chunk: list[Row] = []
                    problems: list[tuple[int, ErrorRecord]] = []
                    skipped = 0
                    for item in batch:
                        if self.options.skip is not None and self.options.skip(item.line):
                            if self.options.dedupe and isinstance(item, IdRow):
                                seen.add(item.id)
                            skipped += 1
                            continue
                        self.stats.read += 1
                        if isinstance(item, InputProblem):
                            record = ErrorRecord(item.id, item.line, "input", None, item.reason)
                            problems.append((seq, record))
                            seq += 1
                        elif not self._wanted(item, seen):
                            self.stats.skipped += 1
                            skipped += 1
                        else:
                            chunk.append(Row(seq, item.line, item.id, item.keep))
                            seq += 1
                    window.release(skipped)
                    if problems:
                        await to_write.put(Failed(problems))
                    if chunk:
                        fetches.create_task(self._fetch_chunk(chunk, to_score, to_write))
        finally:
            await to_score.put(_END)

    # -- stage 2: fetch ------------------------------------------------------------------------

    async def _fetch_source(self, source: Source, ids: list[str]) -> list[FetchResult]:
        size = source.batch_size
        if len(ids) <= size:
            return await self._timed_fetch(source, ids)
        parts = await asyncio.gather(
            *(self._timed_fetch(source, ids[i : i + size]) for i in range(0, len(ids), size))
        )
        return [result for part in parts for result in part]

    async def _timed_fetch(self, source: Source, ids: list[str]) -> list[FetchResult]:
        # Latency is observed per request by the shared Limits (time holding a slot), so that
        # queueing for a slot does not count as the source being slow.
        return await source.fetch(ids)

    async def _fetch_chunk(
        self, rows: list[Row], to_score: asyncio.Queue[Any], to_write: asyncio.Queue[Any]
    ) -> None:
        ids = [row.id for row in rows]
        PRIORITY.set(rows[0].seq)  # this task's requests (and retries) queue by input position
        with self._clocks["fetch"]:
            per_source = await asyncio.gather(*(self._fetch_source(s, ids) for s in self.sources))
        good: list[Row] = []
        failed: list[tuple[int, ErrorRecord]] = []
        for i, row in enumerate(rows):
            failure = self._merge(row, [results[i] for results in per_source])
            if failure is None:
                good.append(row)
            else:
                failed.append((row.seq, failure))
        if failed:
            await to_write.put(Failed(failed))
        if good:
            await to_score.put(good)

    def _merge(self, row: Row, results: list[FetchResult]) -> ErrorRecord | None:
        found = False
        not_found_source: str | None = None
        for source, result in zip(self.sources, results, strict=True):
            if isinstance(result, Failure):
                if result.reason == NOT_FOUND:
                    not_found_source = source.name
                    continue
                return ErrorRecord(
                    row.id,
                    row.line,
                    "fetch",
                    source.name,
                    result.reason,
                    result.status,
                    result.attempts,
                )
            found = True
        if not found:
            name = not_found_source if len(self.sources) == 1 else None
            return ErrorRecord(row.id, row.line, "fetch", name, NOT_FOUND, None, 1)
        only = results[0]
        if len(results) == 1 and not isinstance(only, Failure):
            row.features = only  # one source: its record is the row's features, no copy
        else:
            row.features = unite(self.sources, results, self._drop)
        return None

    # -- stage 3: score ------------------------------------------------------------------------

    async def _score(self, to_score: asyncio.Queue[Any], to_write: asyncio.Queue[Any]) -> None:
        loop = asyncio.get_running_loop()
        pending: list[Row] = []
        deadline: float | None = None
        finished = False
        while not finished:
            timeout = None if deadline is None else max(deadline - loop.time(), 0)
            try:
                item = await asyncio.wait_for(to_score.get(), timeout)
            except TimeoutError:
                item = None
            if item is _END:
                finished = True
            elif item is not None:
                if not pending:
                    deadline = loop.time() + self.options.linger
                pending.extend(item)
            # Score whole batches as soon as they fill; a partial batch once its oldest row has
            # waited `linger` seconds (a slow trickle of rows is never held back longer).
            due = finished or (deadline is not None and loop.time() >= deadline)
            size = self.options.batch_size
            while len(pending) >= size or (pending and due):
                batch = pending[:size]
                del pending[:size]
                with self._clocks["score"]:
                    scored = await loop.run_in_executor(self._executor, self._score_batch, batch)
                await to_write.put(scored)
            if not pending:
                deadline = None
        await to_write.put(_END)

    def _score_batch(self, rows: list[Row]) -> Scored:
        """Runs in the scoring thread: assemble the matrix, predict, explain, count quality.

        A row whose features are all missing (NaN once encoded) is not scored silently: it is
        a ``no_features`` failure, unless ``allow_empty``.
        """
        matrix = self.model.encoder.matrix([row.features for row in rows])
        for row in rows:
            row.features = {}  # the features are in the matrix now; free them early
        empty: list[tuple[int, ErrorRecord]] = []
        if not self.options.allow_empty:
            all_missing = np.asarray(np.isnan(matrix).all(axis=1), dtype=np.bool_)
            if all_missing.any():
                lost = [bool(x) for x in all_missing]
                empty = [
                    (row.seq, ErrorRecord(row.id, row.line, "score", None, "no_features", None, 0))
                    for row, gone in zip(rows, lost, strict=True)
                    if gone
                ]
                rows = [row for row, gone in zip(rows, lost, strict=True) if not gone]
                matrix = matrix[~all_missing]
        if not rows:
            return Scored([], np.empty((0, 1)), None, empty)
        scores = self.model.predict(matrix, raw_score=self.options.raw_score)
        if scores.ndim == 1:
            scores = scores.reshape(-1, 1)
        explanations = self._explain(matrix, scores) if self.options.explain else None
        quality = self.stats.quality
        assert quality is not None
        missing = np.isnan(matrix)
        quality.missing += missing.sum(axis=0)
        with np.errstate(invalid="ignore"):
            quality.out_of_range += ((matrix < self._low) | (matrix > self._high)).sum(axis=0)
        quality.rows += len(rows)
        return Scored(rows, scores, explanations, empty)

    def _explain(
        self, matrix: npt.NDArray[np.float64], scores: npt.NDArray[np.float64]
    ) -> list[list[tuple[str, float]]]:
        contrib = self.model.contributions(matrix)[:, :, :-1]  # drop the bias column
        cls = (
            np.argmax(scores, axis=1) if contrib.shape[1] > 1 else np.zeros(len(matrix), dtype=int)
        )
        per_row = contrib[np.arange(len(matrix)), cls]
        k = min(self.options.explain, per_row.shape[1])
        order = np.argsort(-np.abs(per_row), axis=1, kind="stable")[:, :k]
        names = self.model.info.feature_names
        return [[(names[j], float(per_row[i, j])) for j in order[i]] for i in range(len(matrix))]

    # -- stage 4: write ------------------------------------------------------------------------

    async def _write(self, to_write: asyncio.Queue[Any], window: Window) -> None:
        waiting: dict[int, Any] = {}
        next_seq = 0
        unordered = self.options.unordered
        loop = asyncio.get_running_loop()
        next_checkpoint = loop.time() + self.options.checkpoint_interval
        while True:
            try:
                item = to_write.get_nowait()
            except asyncio.QueueEmpty:
                # Nothing to write now: wait, but commit what is written when a commit is due,
                # so a stalled input (a slow stdin) never leaves written rows uncommitted.
                try:
                    timeout = max(next_checkpoint - loop.time(), 0.001)
                    item = await asyncio.wait_for(to_write.get(), timeout)
                except TimeoutError:
                    await self._checkpoint()
                    next_checkpoint = loop.time() + self.options.checkpoint_interval
                    continue
            if item is _END:
                break
            if isinstance(item, Failed):
                outcomes: list[tuple[int, Any]] = list(item.rows)
            else:
                explained = item.explanations
                outcomes = [
                    (row.seq, (row, item.scores[i], explained[i] if explained else None))
                    for i, row in enumerate(item.rows)
                ]
                outcomes.extend(item.failed)
            if unordered:
                ready = outcomes
            else:
                ready = []
                waiting.update(outcomes)
                while next_seq in waiting:
                    ready.append((next_seq, waiting.pop(next_seq)))
                    next_seq += 1
            if ready:
                await self._emit([outcome for _, outcome in ready])
                self._advance(ready)
                self._dirty = True
                window.release(len(ready))
                self.progress.update(self.stats)
            if loop.time() >= next_checkpoint:
                await self._checkpoint()
                next_checkpoint = loop.time() + self.options.checkpoint_interval
        # Rows still waiting sit behind a row whose fetch was cancelled by a stop: they are not
        # written, so a resumed run does them again.
        await self._checkpoint()

    def _advance(self, written: list[tuple[int, Any]]) -> None:
        for seq, outcome in written:
            line = outcome.line if isinstance(outcome, ErrorRecord) else outcome[0].line
            if seq == self._prefix:
                self._mark = line
                self._prefix += 1
                while self._prefix in self._beyond:
                    self._mark = self._beyond.pop(self._prefix)
                    self._prefix += 1
            else:
                self._beyond[seq] = line

    async def _checkpoint(self) -> None:
        if self.checkpoint is not None and self._dirty:
            self._dirty = False
            with self._clocks["write"]:
                await self.checkpoint(self._mark, frozenset(self._beyond.values()))

    async def _emit(self, outcomes: list[Any]) -> None:
        errors = [o for o in outcomes if isinstance(o, ErrorRecord)]
        scored = [o for o in outcomes if not isinstance(o, ErrorRecord)]
        with self._clocks["write"]:
            if scored:
                batch = ScoredBatch(
                    ids=[row.id for row, _, _ in scored],
                    scores=np.stack([s for _, s, _ in scored]),
                    keep=[row.keep for row, _, _ in scored],
                    explanations=[e or [] for _, _, e in scored] if self.options.explain else None,
                )
                await self.sink.write(batch)
            if errors:
                await self.errors.write(errors)
        self.stats.scored += len(scored)
        for record in errors:
            self.stats.failed[record.reason] += 1


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


__all__ = ["Checkpoint", "Pipeline", "PipelineOptions", "allowed", "feature_owners"]
