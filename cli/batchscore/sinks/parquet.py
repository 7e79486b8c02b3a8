"""Parquet output (the ``parquet`` extra, pyarrow), streamed and resumable.

A Parquet file is only readable once its footer is written, so a run cannot make half a file
durable.  Instead each sync closes a small *segment* file in a temporary folder beside the
output; the sync's length is the number of segments.  On success the segments are streamed, one
row group each, into the final file under a temporary name, which is then renamed into place.
A resumed run deletes segments past the recorded count and carries on numbering; it refuses
(exit 2, naming it) a segment that is missing or unreadable below that count.

Putting the file in place takes steps a kill can come between, so each leaves a sign a resume
reads (:meth:`ParquetSink.finish`):

1. the segments are streamed into ``.<name>.assembling`` (fsynced);
2. ``.<name>.assembled`` is created: the assembled file is complete;
3. it is renamed to the output;
4. the segment folder is removed, then ``.<name>.assembled``.

Without the sign, a resume assembles again from the segments; with it, it does what is left of
3 and 4 (the output in place is then this run's, not someone else's to refuse).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from batchscore.atomic import fsync_folder
from batchscore.errors import LeftoverStateError, UsageError
from batchscore.sinks import Columns, ScoredBatch, kept_text
from batchscore.sinks.files import (
    refuse_existing,
    shorter_than_committed,
    temp_path,
    write_error,
)
from batchscore.state import crash_point


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise UsageError(
            "Parquet output needs pyarrow: pip install 'batchscore[parquet]', or use .csv/.jsonl"
        ) from None
    return pyarrow


def _nullable(pa: Any, values: Any) -> Any:
    """A float64 column whose NaN (a missing feature value) is null, as in the other formats."""
    return pa.array(values, type=pa.float64(), mask=np.isnan(values))


class ParquetSink:
    """Rows into a Parquet file, one row group per committed segment."""

    def __init__(self, path: Path, columns: Columns, *, overwrite: bool) -> None:
        self.pa = _pyarrow()
        self.path = path
        self.folder = temp_path(path)
        self.columns = columns
        self.overwrite = overwrite
        types = {"text": self.pa.string(), "kept": self.pa.string(), "float": self.pa.float64()}
        import orjson

        models = [{"name": name, "version": version} for name, version in columns.models]
        self.schema = self.pa.schema(
            [self.pa.field(name, types[kind]) for name, kind in columns.kinds()],
            # which model made each score, for whoever reads the file later
            metadata={"batchscore.models": orjson.dumps(models)} if models else None,
        )
        self._pending: list[Any] = []  # pyarrow tables, one per batch, until the next sync
        self._segments = 0

    def _segment(self, index: int) -> Path:
        return self.folder / f"segment-{index:08d}.parquet"

    @property
    def _assembling(self) -> Path:
        return self.path.with_name(f".{self.path.name}.assembling")

    @property
    def _assembled(self) -> Path:
        """The sign that ``_assembling`` is complete (step 2 of the commit)."""
        return self.path.with_name(f".{self.path.name}.assembled")

    async def open(self, resume_at: int | None = None) -> None:
        """Create the segment folder, or cut a stopped run's back to ``resume_at`` segments
        (refused when one of those is missing or unreadable)."""
        import asyncio

        refuse_existing(self.path, self.overwrite)
        try:
            for stale in (self._assembled, self._assembling):  # a commit that did not end
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
            if resume_at is None and self.folder.exists():
                shutil.rmtree(self.folder)
            self.folder.mkdir(exist_ok=True)
            self._segments = resume_at or 0
            for extra in self.folder.glob("segment-*.parquet"):
                number = extra.stem.split("-")[1]
                if number.isdigit() and int(number) >= self._segments:
                    extra.unlink()
            await asyncio.to_thread(self._check_segments)
        except OSError as exc:
            raise write_error(self.path, exc) from None

    def _check_segments(self) -> None:
        """Every committed segment is there and has its footer (a kill never cuts one: each is
        written under another name and renamed; a missing or cut one was lost or edited)."""
        for index in range(self._segments):
            segment = self._segment(index)
            try:
                self.pa.parquet.read_metadata(segment)
            except FileNotFoundError:
                raise shorter_than_committed(
                    self.folder, f"no {segment.name}", f"{self._segments:,} segment(s)"
                ) from None
            except (OSError, self.pa.ArrowException) as exc:
                if isinstance(exc, OSError) and exc.errno is not None:
                    raise  # the disk, not the file
                raise LeftoverStateError(
                    f"the stopped run's segment {segment} is damaged ({exc}), so its rows "
                    "cannot be recovered; pass --overwrite to start over"
                ) from None

    async def write(self, batch: ScoredBatch) -> None:
        """Keep the batch (as a table of columns) until the next sync writes a segment."""
        pa = self.pa
        arrays = [pa.array(batch.ids, type=pa.string())]
        arrays += [pa.array(batch.scores[:, k]) for k in range(batch.scores.shape[1])]
        if self.columns.keep:
            kept = list(zip(*batch.keep, strict=True)) if batch.keep else []
            arrays += [
                pa.array([kept_text(v) for v in kept[k]] if kept else [], type=pa.string())
                for k in range(len(self.columns.keep))
            ]
        if self.columns.explain:
            features, values = batch.explain_features, batch.explain_values
            contributions = batch.explain_contributions
            assert features is not None and values is not None and contributions is not None
            for k in range(self.columns.explain * len(self.columns.explain_prefixes)):
                arrays.append(pa.array(features[:, k].tolist(), type=pa.string()))
                arrays.append(_nullable(pa, values[:, k]))
                arrays.append(pa.array(contributions[:, k]))
        if self.columns.features:
            assert batch.features is not None
            arrays += [_nullable(pa, column) for column in batch.features.T]
        arrays += [pa.array([value] * len(batch), type=pa.string()) for value in batch.audit]
        self._pending.append(pa.Table.from_arrays(arrays, schema=self.schema))

    def _write_segment(self, tables: list[Any], index: int) -> None:
        table = self.pa.concat_tables(tables)
        temp = self._segment(index).with_suffix(".tmp")
        self.pa.parquet.write_table(table, temp)
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temp, self._segment(index))

    async def sync(self) -> int:
        """Write the pending rows as the next segment; the segment count is the resume point."""
        import asyncio

        if self._pending:
            tables, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self._write_segment, tables, self._segments)
                await asyncio.to_thread(fsync_folder, self.folder)
            except OSError as exc:
                raise write_error(self.path, exc) from None
            self._segments += 1
        return self._segments

    def _assemble(self) -> None:
        """Steps 1 and 2 of the commit (module docstring)."""
        with self.pa.parquet.ParquetWriter(self._assembling, self.schema) as writer:
            for index in range(self._segments):
                writer.write_table(self.pa.parquet.read_table(self._segment(index)))
        with open(self._assembling, "rb+") as f:
            os.fsync(f.fileno())
        self._assembled.touch()
        fsync_folder(self.path.parent)

    def _put_in_place(self) -> None:
        """Steps 3 and 4 (after a kill, what is left of them)."""
        if self._assembling.exists():
            os.replace(self._assembling, self.path)
            fsync_folder(self.path.parent)
        crash_point("parquet-renamed")
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self._assembled.unlink(missing_ok=True)

    async def commit(self) -> None:
        """Stream the segments into the final file and rename it into place."""
        import asyncio

        await self.sync()
        try:
            await asyncio.to_thread(self._assemble)
            crash_point("parquet-assembled")
            await asyncio.to_thread(self._put_in_place)
        except OSError as exc:
            raise write_error(self.path, exc) from None

    async def finish(self, resume_at: int) -> None:
        """A complete run stopped during :meth:`commit`: assemble again from the segments, or
        (its sign is there) put the assembled file in place and remove the segments."""
        import asyncio

        if self._assembled.exists():
            try:
                await asyncio.to_thread(self._put_in_place)
            except OSError as exc:
                raise write_error(self.path, exc) from None
        elif self.folder.exists():
            await self.open(resume_at)
            await self.commit()

    async def abort(self) -> None:
        """Drop rows not yet synced; the segments stay for ``--resume``."""
        self._pending = []
