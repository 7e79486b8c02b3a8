"""The reader thread: input rows into :class:`~batchscore.chunk.Chunk` s, handed to the event loop.

Reading is synchronous (files, pipes), so it runs in a thread of its own.  The thread does all
the per-line work: it drops the rows an earlier run committed (``--resume``), the rows of other
shards (``--shard``) and repeats (``--dedupe``), and fills a chunk's ID columns; the event loop
receives whole chunks, one hand-over each.

A chunk is handed over when it is full, or early when the input stalls (a pipe or a terminal
with nothing to read yet): rows that have arrived are never held back waiting for more.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import select
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from batchscore.chunk import Chunk, ErrorRecord, Status
from batchscore.idrows import IdRow, InputItem
from batchscore.ids import stable_hash


@dataclass(frozen=True)
class Filters:
    """Which input rows the run leaves out."""

    committed: Callable[[int], bool] | None = None  # True for a line an earlier run committed
    shard: tuple[int, int] | None = None  # (k, n): keep IDs whose stable hash % n == k
    dedupe: bool = False


class StallHook:
    """Called by an input stream just before a read that would wait for data."""

    def __init__(self) -> None:
        self.callback: Callable[[], None] | None = None

    def __call__(self) -> None:
        if self.callback is not None:
            self.callback()


class _PipeLines:
    """The lines of a pipe or terminal, read with ``os.read``; calls a hook before each read
    that would wait for data.

    No buffered reader sits in between on purpose: the reader thread may still be waiting
    here when the process exits, and a buffered reader's lock held by a thread at exit makes
    the interpreter abort ("could not acquire lock ... at interpreter shutdown").
    """

    def __init__(self, stream: BinaryIO, hook: StallHook) -> None:
        self.stream = stream  # owns the descriptor: kept alive (and open) as long as we are
        self.fd = stream.fileno()
        self.hook = hook

    def __iter__(self) -> Iterator[bytes]:
        rest = b""
        while True:
            ready, _, _ = select.select([self.fd], [], [], 0)
            if not ready:
                self.hook()
            data = os.read(self.fd, 1 << 16)
            if not data:
                break
            lines = (rest + data).split(b"\n")
            rest = lines.pop()
            for line in lines:
                yield line + b"\n"
        if rest:
            yield rest


def watch_stalls(stream: BinaryIO, hook: StallHook) -> Iterable[bytes]:
    """The lines of ``stream``, made to call ``hook`` before waiting for data (pipes and
    terminals only: a regular file never stalls)."""
    try:
        regular = stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError, io.UnsupportedOperation):
        return stream
    if regular:
        return stream
    return _PipeLines(stream, hook)


class _End:
    """The input is exhausted (or reading failed with ``error``)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class ChunkFeed:
    """Reads ``items`` into chunks of up to ``size`` rows in a thread; at most ``capacity``
    chunks wait for the event loop to take them.

    ``values``: how many raw values each row carries for an input source (``IdRow.values``);
    they reach the chunk as columns (:attr:`Chunk.inputs`), transposed once per chunk.
    """

    def __init__(
        self,
        items: Iterator[InputItem],
        *,
        size: int,
        filters: Filters,
        keep: bool,
        values: int = 0,
        capacity: int = 4,
        stall: StallHook | None = None,
    ) -> None:
        self._items = items
        self._size = size
        self._filters = filters
        self._keep = keep
        self._width = values
        self._no_values = (None,) * values  # what an input problem's row carries
        self._slots = threading.Semaphore(capacity)
        self._queue: asyncio.Queue[Chunk | _End] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._stopped = False
        self._index = 0
        self._first_line = 1
        self._reset()
        if stall is not None:
            stall.callback = self._flush
        threading.Thread(target=self._run, name="batchscore-reader", daemon=True).start()

    def _reset(self) -> None:
        self._lines: list[int] = []
        self._ids: list[str] = []
        self._kept: list[tuple[Any, ...]] = []
        self._values: list[tuple[Any, ...]] = []
        self._problems: list[tuple[int, ErrorRecord]] = []
        self._filtered = 0
        self._last_line = self._first_line - 1

    def _run(self) -> None:
        committed = self._filters.committed
        shard = self._filters.shard
        seen: set[str] | None = set() if self._filters.dedupe else None
        size = self._size
        carry = self._width > 0
        # The lists are looked up on self for every row: a stall hands them over (and
        # replaces them) from inside the input's read.
        try:
            for item in self._items:
                if self._stopped:
                    return
                line = item.line
                if committed is not None and committed(line):
                    if seen is not None and isinstance(item, IdRow):
                        seen.add(item.id)
                    self._last_line = line
                    continue
                if isinstance(item, IdRow):
                    ident = item.id
                    if shard is not None and stable_hash(ident) % shard[1] != shard[0]:
                        self._filtered += 1
                        self._last_line = line
                        continue
                    if seen is not None:
                        if ident in seen:
                            self._filtered += 1
                            self._last_line = line
                            continue
                        seen.add(ident)
                    self._ids.append(ident)
                    if self._keep:
                        self._kept.append(item.keep)
                    if carry:
                        self._values.append(item.values)
                else:
                    record = ErrorRecord(item.id, line, "input", None, item.reason)
                    self._problems.append((len(self._ids), record))
                    self._ids.append(item.id or "")
                    if self._keep:
                        self._kept.append(())
                    if carry:
                        self._values.append(self._no_values)
                self._lines.append(line)
                self._last_line = line
                if len(self._ids) >= size:
                    self._flush()
            self._flush()
            self._hand_over(_End())
        except BaseException as exc:
            self._hand_over(_End(exc))

    def _flush(self) -> None:
        """Hand over the rows read so far as a chunk (nothing if there are none)."""
        if not self._ids and not self._filtered and self._last_line < self._first_line:
            return
        n = len(self._ids)
        chunk = Chunk(
            index=self._index,
            first_line=self._first_line,
            last_line=self._last_line,
            lines=np.array(self._lines, dtype=np.int64),
            ids=self._ids,
            keep=self._kept if self._keep else None,
            status=np.zeros(n, dtype=np.uint8),
            inputs=self._columns() if self._width else None,
            filtered=self._filtered,
        )
        for row, record in self._problems:
            chunk.fail(row, Status.INPUT, record)
        self._index += 1
        self._first_line = self._last_line + 1
        self._reset()
        self._hand_over(chunk)

    def _columns(self) -> list[Sequence[Any]]:
        """The rows' carried values as columns (rows to columns with zip, in C)."""
        if not self._values:
            return [() for _ in range(self._width)]
        return list(zip(*self._values, strict=True))

    def _hand_over(self, message: Chunk | _End) -> None:
        self._slots.acquire()
        if self._stopped and isinstance(message, Chunk):
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(self._queue.put_nowait, message)

    async def next(self) -> Chunk | None:
        """The next chunk, or None at the end of the input (or once stopped)."""
        if self._stopped:
            return None
        message = await self._queue.get()
        self._slots.release()
        if isinstance(message, _End):
            if message.error is not None:
                raise message.error
            return None
        return message

    def stop(self) -> None:
        """Stop reading (the thread may stay blocked on its input; it is a daemon)."""
        self._stopped = True
        self._slots.release()
        with contextlib.suppress(RuntimeError):
            self._queue.put_nowait(_End())


__all__ = ["ChunkFeed", "Filters", "StallHook", "watch_stalls"]
