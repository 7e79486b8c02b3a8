"""Byte destinations: a file written under a temporary name and renamed into place, or stdout.

Writes go through aiofiles, one write per batch, so the event loop never waits on the disk.
``.gz`` outputs are compressed in memory with a streaming gzip compressor before writing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import zlib
from pathlib import Path
from typing import Any, Protocol

import aiofiles

from batchscore.atomic import fsync_folder
from batchscore.errors import (
    LeftoverStateError,
    OutputExistsError,
    OutputWriteError,
    PipeClosedError,
)
from batchscore.sinks import ScoredBatch
from batchscore.sinks.encoders import RowEncoder


class ByteTarget(Protocol):
    """Where encoded bytes go."""

    async def open(self, resume_at: int | None = None) -> None:
        """Get ready to write (continuing at byte ``resume_at`` of a stopped run's file)."""

    async def write(self, data: bytes) -> None:
        """Append bytes."""

    async def sync(self) -> int:
        """Flush and fsync; return the durable length."""

    async def commit(self) -> None:
        """Make what was written final."""

    async def finish(self, resume_at: int) -> None:
        """A stopped run's complete file (``resume_at`` bytes): make it final, if not yet."""

    async def abort(self) -> None:
        """Stop, leaving what was written for ``--resume``."""


def temp_path(final: Path) -> Path:
    """The temporary name beside ``final`` that a run writes to until it succeeds."""
    return final.with_name(f".{final.name}.partial")


def refuse_existing(path: Path, overwrite: bool) -> None:
    """An existing output is an error unless ``--overwrite``."""
    if not overwrite and path.exists():
        raise OutputExistsError(
            f"output {path} already exists; pass --overwrite to replace it or choose another -o"
        )


def shorter_than_committed(partial: Path, has: str, expected: str) -> LeftoverStateError:
    """A stopped run's partial file holds less than its state says was committed (cut short
    or edited by hand): refused, never padded or taken as it is."""
    return LeftoverStateError(
        f"the stopped run's partial file {partial} holds {has}, but its state says {expected} "
        "were committed, so rows are lost from it; pass --overwrite to start over"
    )


def write_error(path: Path | str, exc: OSError, resumable: bool = True) -> OutputWriteError:
    """A one-line error for an output that cannot be written."""
    reason = {
        errno.ENOSPC: "the disk is full",
        errno.EACCES: "permission denied",
        errno.EROFS: "the file system is read-only",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EFBIG: "the file size limit is reached",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    then = ", then rerun with --resume" if resumable else ""
    return OutputWriteError(f"cannot write {path}: {reason}; free space or fix permissions{then}")


def _gzip_member() -> Any:
    return zlib.compressobj(6, zlib.DEFLATED, 31)


class FileTarget:
    """A file at ``path``, written as ``.<name>.partial`` and renamed into place on commit.

    Gzip output is a series of gzip members, one per sync, so a resumed run can cut the file
    back to a sync point and append; readers see one stream (RFC 1952 allows members in series).
    """

    def __init__(self, path: Path, *, overwrite: bool, gzip: bool) -> None:
        self.path = path
        self.temp = temp_path(path)
        self.overwrite = overwrite
        self._gzip = _gzip_member() if gzip else None
        self._file: Any = None
        self._length = 0

    async def open(self, resume_at: int | None = None) -> None:
        """Refuse an existing output unless overwriting; create or take over the temporary file."""
        refuse_existing(self.path, self.overwrite)
        try:
            if resume_at is not None and self.temp.exists():
                size = self.temp.stat().st_size
                if size < resume_at:  # truncate() would pad it with NUL bytes
                    raise shorter_than_committed(
                        self.temp, f"{size:,} bytes", f"{resume_at:,} bytes"
                    )
                self._file = await aiofiles.open(self.temp, "r+b")
                await self._file.truncate(resume_at)
                await self._file.seek(resume_at)
                self._length = resume_at
            else:
                self._file = await aiofiles.open(self.temp, "wb")
        except OSError as exc:
            raise write_error(self.path, exc) from None

    async def write(self, data: bytes) -> None:
        """Append (compressed if gzip)."""
        if self._gzip is not None:
            data = self._gzip.compress(data)
        if data:
            try:
                await self._file.write(data)
            except OSError as exc:
                raise write_error(self.path, exc) from None
            self._length += len(data)

    async def sync(self) -> int:
        """End the gzip member (if any), flush, fsync; return the file's durable length."""
        try:
            if self._gzip is not None:
                tail = self._gzip.flush()
                self._gzip = _gzip_member()
                await self._file.write(tail)
                self._length += len(tail)
            await self._file.flush()
            await asyncio.to_thread(os.fsync, self._file.fileno())
        except OSError as exc:
            raise write_error(self.path, exc) from None
        return self._length

    async def commit(self) -> None:
        """Sync, rename into place, fsync the directory."""
        await self.sync()
        try:
            await self._file.close()
            self._file = None
            os.replace(self.temp, self.path)
            fsync_folder(self.path.parent)
        except OSError as exc:
            raise write_error(self.path, exc) from None

    async def finish(self, resume_at: int) -> None:
        """Rename the complete temporary file into place (if a kill came before that)."""
        if self.temp.exists():
            await self.open(resume_at)
            await self.commit()

    async def abort(self) -> None:
        """Close the temporary file, keeping it."""
        if self._file is not None:
            file, self._file = self._file, None
            with contextlib.suppress(OSError):
                await file.close()


class StdoutTarget:
    """Standard output (a pipe, a terminal or a file); a closed pipe is PipeClosedError."""

    def __init__(self, fd: int = 1, gzip: bool = False, name: str = "stdout") -> None:
        self.fd = fd
        self.name = name
        self._gzip = zlib.compressobj(6, zlib.DEFLATED, 31) if gzip else None
        self._file: Any = None

    async def open(self, resume_at: int | None = None) -> None:
        """Wrap the descriptor without taking ownership of it (stdout cannot be resumed)."""
        del resume_at
        self._file = await aiofiles.open(self.fd, "wb", closefd=False)

    async def sync(self) -> int:
        """Everything is flushed at each write; there is nothing to resume from."""
        return 0

    async def write(self, data: bytes) -> None:
        """Write and flush, so a pipeline downstream sees rows as they are scored."""
        if self._gzip is not None:
            data = self._gzip.compress(data)
        await self._write_raw(data)

    async def finish(self, resume_at: int) -> None:
        """Never called: stdout is not resumable."""
        del resume_at

    async def commit(self) -> None:
        """Flush the rest."""
        if self._gzip is not None:
            await self._write_raw(self._gzip.flush())
        await self.abort()

    async def _write_raw(self, data: bytes) -> None:
        try:
            await self._file.write(data)
            await self._file.flush()
        except BrokenPipeError:
            raise PipeClosedError("the reader of stdout went away") from None
        except OSError as exc:
            raise write_error(self.name, exc, resumable=False) from None

    async def abort(self) -> None:
        """Nothing to keep: stdout cannot be resumed."""
        if self._file is not None:
            file, self._file = self._file, None
            with contextlib.suppress(OSError):
                await file.close()


class StreamSink:
    """A :class:`~batchscore.sinks.Sink` for byte formats: an encoder feeding a target."""

    def __init__(self, encoder: RowEncoder, target: ByteTarget) -> None:
        self.encoder = encoder
        self.target = target

    async def open(self, resume_at: int | None = None) -> None:
        """Open the target and write the header (not when continuing a stopped run's file)."""
        await self.target.open(resume_at)
        header = self.encoder.header()
        if header and not resume_at:
            await self.target.write(header)

    async def sync(self) -> int:
        """Make what is written durable."""
        return await self.target.sync()

    async def write(self, batch: ScoredBatch) -> None:
        """Encode and write a batch."""
        await self.target.write(self.encoder.encode(batch))

    async def commit(self) -> None:
        """Finalize the target."""
        await self.target.commit()

    async def finish(self, resume_at: int) -> None:
        """Finalize a complete run's target, if not yet."""
        await self.target.finish(resume_at)

    async def abort(self) -> None:
        """Leave the target resumable."""
        await self.target.abort()
