"""The part folder of a Dask run: how the input is cut into partitions, the names in the
folder, and how its parts are read back and merged (see :mod:`batchscore.engines.dask.driver`
for the folder's layout).
"""

from __future__ import annotations

import contextlib
import gzip as gzipmod
import math
import shutil
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson

from batchscore import ids as idmod
from batchscore.atomic import atomic_file
from batchscore.engines.dask.task import Partition
from batchscore.errors import LeftoverStateError

SUCCESS = "_SUCCESS"
MARKER = ".batchscore-run.json"
MERGED = "merged"

PARTITIONS_PER_WORKER = 4
"""A small input is cut into about this many partitions per worker (the last partitions then
finish close together)."""
MIN_PARTITION, MAX_PARTITION = 1_000, 10_000
"""Bounds of the chosen partition size, in lines.  A stop keeps whole parts, so a partition is
what a stop (or a lost worker) can throw away: 10,000 lines are ~5 s of a worker's work over a
per-ID HTTP source (~2,000 IDs/s), which a local cluster's workers mostly finish as it stops.
Each partition costs some 30-90 ms of CPU (its sources opened, its files committed): ~2-5% of
the work of 10,000 lines over a fast batch source, ~1% over per-ID HTTP; below 1,000 lines it
would outweigh the work (bench/results/dask-partition-size.md)."""
MAX_PARTITIONS = 10_000
"""A huge input gets larger partitions rather than more than this many (three files each in
the folder, an entry each in ``_SUCCESS``, a task each for the scheduler)."""


def split_lines(path: str, size: int, skip_first: bool) -> tuple[list[Partition], int]:
    """Cut a file into partitions of ``size`` physical lines (the last one shorter); with
    ``skip_first``, line 1 (a header) belongs to none.  Returns them and the file's line count.

    One pass that counts newlines a block at a time; only a block where a partition ends is
    searched for the newline's position.
    """
    parts: list[Partition] = []
    with open(path, "rb") as f:
        start_line, start_byte = 1, 0
        if skip_first:
            first = f.readline()
            if first:
                start_line, start_byte = 2, len(first)
        pos = start_byte
        counted = 0  # newlines since the partition's start
        last = b"\n"
        while block := f.read(1 << 22):
            last = block[-1:]
            newlines = block.count(b"\n")
            if counted + newlines < size:
                counted += newlines
                pos += len(block)
                continue
            ends = np.flatnonzero(np.frombuffer(block, np.uint8) == ord("\n"))
            i = 0
            while counted + (len(ends) - i) >= size:
                j = i + (size - counted) - 1
                end = pos + int(ends[j]) + 1
                parts.append(
                    Partition(len(parts), start_line, start_line + size - 1, start_byte, end)
                )
                start_line, start_byte, counted, i = start_line + size, end, 0, j + 1
            counted += len(ends) - i
            pos += len(block)
        if pos > start_byte:
            last_line = start_line + counted - 1 + (0 if last == b"\n" else 1)
            parts.append(Partition(len(parts), start_line, last_line, start_byte, pos))
    lines = parts[-1].last_line if parts else start_line - 1
    return parts, lines


def choose_partition_size(id_lines: int, workers: int) -> int:
    """About :data:`PARTITIONS_PER_WORKER` partitions per worker, within the bounds; at most
    :data:`MAX_PARTITIONS` partitions."""
    lines = max(id_lines, 1)
    wanted = math.ceil(lines / (PARTITIONS_PER_WORKER * max(workers, 1)))
    size = max(MIN_PARTITION, min(MAX_PARTITION, wanted))
    return max(size, math.ceil(lines / MAX_PARTITIONS))


def header_line(path: str) -> bytes:
    """A CSV/TSV input's header line, as every partition is given it (without a BOM)."""
    with open(path, "rb") as f:
        line = f.readline()
    return line.removeprefix(b"\xef\xbb\xbf")


def text_header_at(path: str) -> int:
    """The line of a text input's ``--header``: its first non-blank line (0: none).  With
    small partitions it may be in any of them, after blank lines."""
    with open(path, "rb") as f:
        first = next(idmod.read_text(f, whole=False), None)
    return 0 if first is None else first.line


def read_json(path: Path, missing_ok: bool = False) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        if missing_ok:
            return None
        raise LeftoverStateError(
            f"{path} is missing; pass --overwrite to start the run over"
        ) from None
    except (OSError, orjson.JSONDecodeError):
        raise LeftoverStateError(
            f"{path} cannot be read; pass --overwrite to start the run over"
        ) from None


def is_ours(name: str) -> bool:
    """Files a cluster run writes in its output folder (``--overwrite`` removes them all: an
    old run's ``errors-NNNNN.jsonl`` left beside the new parts would count its failures
    again)."""
    prefixes = ("part-", ".part-", "errors-", ".errors-", f"{MERGED}.", f".{MERGED}.")
    return name.startswith(prefixes) or name in (
        SUCCESS,
        MARKER,
    )


def concatenate(sources: list[Path], target: Path, header: bytes, *, gzip: bool) -> None:
    """``target`` made of ``sources`` in order, each without its first ``len(header)`` bytes
    (the CSV header every part begins with), ``header`` once at the start; atomically."""
    with atomic_file(target, temp=target.with_name(f".{target.name}.partial")) as raw:
        out: BinaryIO = gzipmod.GzipFile(fileobj=raw, mode="wb", mtime=0) if gzip else raw  # type: ignore[assignment]
        with out if gzip else contextlib.nullcontext():
            out.write(header)
            for source in sources:
                with open_part(source, gzip) as part:
                    if header:
                        part.read(len(header))
                    shutil.copyfileobj(part, out, 1 << 20)


def open_part(path: Path, gzip: bool) -> BinaryIO:
    if gzip:
        return gzipmod.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


__all__ = [
    "MARKER",
    "MERGED",
    "SUCCESS",
    "choose_partition_size",
    "concatenate",
    "header_line",
    "is_ours",
    "read_json",
    "split_lines",
    "text_header_at",
]
