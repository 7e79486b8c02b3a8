"""The batch-at-a-time core's pieces: committed line ranges, the chunk reorderer, the encoder's
one conversion rule, and the reader thread's chunks.

These are the internals every run relies on for "every ID exactly once" and "a row's score
depends on that row alone"; the CLI tests check the same promises end to end.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import math
import os
import random
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchscore.chunk import Chunk, ErrorRecord, Status
from batchscore.feed import ChunkFeed, Filters, StallHook, watch_stalls
from batchscore.ids import read_ids
from batchscore.model import Encoder, FeatureInfo, read_info, to_float
from batchscore.pipeline import Writer
from batchscore.report import BusyClock, RunStats
from batchscore.sinks import ScoredBatch
from batchscore.sinks.errorlog import ErrorLog
from batchscore.state import LineRanges
from conftest import SAMPLE_DIR

# -- LineRanges ----------------------------------------------------------------------------------


@given(st.lists(st.tuples(st.integers(1, 300), st.integers(0, 40)), max_size=40))
@settings(max_examples=200, deadline=None)
def test_line_ranges_hold_exactly_the_lines_added_and_stay_merged(
    spans: list[tuple[int, int]],
) -> None:
    ranges = LineRanges()
    lines: set[int] = set()
    for first, length in spans:
        ranges.add(first, first + length - 1)  # length 0: an empty span adds nothing
        lines.update(range(first, first + length))
    assert {n for n in range(0, 400) if n in ranges} == lines
    stored = ranges.ranges()
    assert stored == sorted(stored)
    for (_, last), (first, _) in itertools.pairwise(stored):
        assert first > last + 1, "touching or overlapping ranges are merged"
    assert LineRanges(stored) == ranges  # what the state file stores reads back the same


def test_chunk_spans_in_any_order_end_as_one_range() -> None:
    spans = [(1 + 10 * i, 10 * (i + 1)) for i in range(50)]
    random.Random(3).shuffle(spans)
    ranges = LineRanges()
    for first, last in spans:
        ranges.add(first, last)
    assert ranges.ranges() == [(1, 500)]


# -- the writer's reorderer ----------------------------------------------------------------------


def _chunk(index: int, size: int = 3) -> Chunk:
    first = index * size + 1
    ids = [f"id{first + i}" for i in range(size)]
    chunk = Chunk(
        index=index,
        first_line=first,
        last_line=first + size - 1,
        lines=np.arange(first, first + size, dtype=np.int64),
        ids=ids,
        keep=None,
        status=np.zeros(size, np.uint8),
    )
    chunk.scores = np.arange(first, first + size, dtype=np.float64).reshape(-1, 1)
    return chunk


class _ListSink:
    def __init__(self) -> None:
        self.batches: list[ScoredBatch] = []

    async def write(self, batch: ScoredBatch) -> None:
        self.batches.append(batch)


class _NoProgress:
    def update(self, stats: RunStats) -> None:
        pass

    def close(self, stats: RunStats) -> None:
        pass


def _writer(unordered: bool) -> tuple[Writer, _ListSink, RunStats]:
    sink = _ListSink()
    stats = RunStats()
    writer = Writer(
        sink=sink,  # type: ignore[arg-type]
        errors=ErrorLog(None),
        stats=stats,
        progress=_NoProgress(),
        feature_names=("a",),
        unordered=unordered,
        checkpoint=None,
        clock=BusyClock(stats, "write"),
    )
    return writer, sink, stats


@pytest.mark.parametrize("unordered", [False, True])
def test_writer_writes_chunks_in_index_order_and_commits_their_spans(unordered: bool) -> None:
    writer, sink, stats = _writer(unordered)
    order = list(range(20))
    random.Random(5).shuffle(order)
    chunks = {i: _chunk(i) for i in order}
    failed = chunks[order[0]]
    failed.fail(1, Status.NOT_FOUND, ErrorRecord(failed.ids[1], 2, "fetch", None, "not_found"))

    async def go() -> list[int]:
        committed_prefix = []
        for i in order:
            for chunk in writer.ready(chunks[i]):
                await writer.write(chunk, None)
            committed_prefix.append(max((r[1] for r in writer.written.ranges()), default=0))
        return committed_prefix

    asyncio.run(go())
    written = [i for batch in sink.batches for i in batch.ids]
    expected = [i for k in range(20) for i in chunks[k].ids if i != failed.ids[1]]
    if unordered:
        assert sorted(written) == sorted(expected)
    else:
        assert written == expected
    assert writer.written.ranges() == [(1, 60)]
    assert stats.scored == 59
    assert stats.failed == {"not_found": 1}
    assert stats.read == 60


def test_ordered_writer_holds_chunks_behind_a_missing_one() -> None:
    writer, sink, _ = _writer(unordered=False)
    assert writer.ready(_chunk(1)) == []
    assert writer.ready(_chunk(2)) == []
    assert [c.index for c in writer.ready(_chunk(0))] == [0, 1, 2]
    assert sink.batches == []


# -- the encoder's one conversion rule ------------------------------------------------------------


@pytest.fixture(scope="module")
def features() -> tuple[FeatureInfo, ...]:
    """The sample model's features, read (and its file checked in a child process) once: not
    once per generated example."""
    return read_info(str(SAMPLE_DIR / "model.txt")).features


@pytest.fixture(scope="module")
def encoder(features: tuple[FeatureInfo, ...]) -> Encoder:
    return Encoder(features)


ODD_VALUES: list[object] = [
    1.5,
    -0.0,
    7,
    True,
    False,
    None,
    "2.25",
    " 3 ",
    "nan",
    "1_000",
    "٣",
    "abc",
    b"1.5",
    [1.0],
    {"a": 1},
    10**400,
    2**63 + 1,
]


def _bits(values: np.ndarray) -> list[int]:
    return np.asarray(values, dtype=np.float64).view(np.uint64).tolist()


@given(st.lists(st.sampled_from(ODD_VALUES), min_size=1, max_size=30), st.data())
@settings(max_examples=200, deadline=None)
def test_a_value_converts_the_same_whatever_its_batchmates(
    encoder: Encoder, features: tuple[FeatureInfo, ...], batch: list[object], data: st.DataObject
) -> None:
    numeric = next(j for j, f in enumerate(features) if not f.categorical)
    i = data.draw(st.integers(0, len(batch) - 1))
    alone = encoder.column(numeric, [batch[i]])
    together = encoder.column(numeric, batch)
    assert _bits(together[i : i + 1]) == _bits(alone)
    assert _bits(alone) == _bits(np.array([to_float(batch[i])]))


def test_the_conversion_rule_per_type() -> None:
    assert to_float(True) == 1.0 and to_float(7) == 7.0 and to_float("2.25") == 2.25
    for missing in (None, "abc", "1_000", "٣", b"1.5", [1.0], {"a": 1}, 10**400):
        assert math.isnan(to_float(missing)), missing


def test_categorical_values_code_as_lightgbm_and_unknowns_are_missing(
    encoder: Encoder, features: tuple[FeatureInfo, ...]
) -> None:
    j, feature = next((j, f) for j, f in enumerate(features) if f.categorical)
    values = [feature.categories[1], str(feature.categories[0]), "never-seen", None, [1], 1.5]
    column = encoder.column(j, values)
    assert column[:2].tolist() == [1.0, 0.0]
    assert np.isnan(column[2:]).all()


# -- the reader thread -----------------------------------------------------------------------------


def _read_chunks(data: bytes, size: int, filters: Filters | None = None) -> list[Chunk]:
    async def go() -> list[Chunk]:
        items = read_ids(io.BytesIO(data), "text", "id", "id", ())
        feed = ChunkFeed(items, size=size, filters=filters or Filters(), keep=False)
        out = []
        while (chunk := await feed.next()) is not None:
            out.append(chunk)
        return out

    return asyncio.run(go())


def test_chunks_tile_the_input_and_carry_problems_with_their_lines() -> None:
    data = b"a\n\nb\n\xff\xfe\nc\n\n\nd\ne\n"
    chunks = _read_chunks(data, size=2)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[0].first_line == 1
    for before, after in itertools.pairwise(chunks):
        assert after.first_line == before.last_line + 1
    rows = [(int(line), ident) for c in chunks for line, ident in zip(c.lines, c.ids, strict=True)]
    assert rows == [(1, "a"), (3, "b"), (4, ""), (5, "c"), (8, "d"), (9, "e")]
    problems = [r for c in chunks for r in c.error_records()]
    assert [(p.line, p.reason) for p in problems] == [(4, "invalid_utf8")]
    assert all(len(c) <= 2 for c in chunks)


def test_committed_lines_are_skipped_and_filtered_rows_counted() -> None:
    data = b"".join(f"id{i}\n".encode() for i in range(1, 11))
    done = LineRanges([(1, 4)])
    chunks = _read_chunks(data, size=3, filters=Filters(committed=done.__contains__, dedupe=True))
    assert [i for c in chunks for i in c.ids] == [f"id{i}" for i in range(5, 11)]
    assert sum(c.read for c in chunks) == 6


def test_a_stalled_pipe_hands_over_the_rows_it_has(tmp_path: Path) -> None:
    """A partial chunk is handed over as soon as the pipe has nothing more to read."""
    read_fd, write_fd = os.pipe()

    async def go() -> list[str]:
        hook = StallHook()
        stream = watch_stalls(os.fdopen(read_fd, "rb", buffering=0), hook)
        os.write(write_fd, b"x1\nx2\n")
        # read_ids reads the first rows at once (up to the first ID), as a run does in its
        # input thread: a file whose every line fails alike is refused before any output.
        items = read_ids(stream, "text", "id", "id", ())
        feed = ChunkFeed(items, size=1000, filters=Filters(), keep=False, stall=hook)
        first = await asyncio.wait_for(feed.next(), 10)  # the pipe stays open: it stalls
        assert first is not None
        threading.Thread(target=os.close, args=(write_fd,)).start()
        return first.ids

    assert asyncio.run(go()) == ["x1", "x2"]
