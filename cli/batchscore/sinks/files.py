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

from batchscore.errors import OutputExistsError, OutputWriteError, PipeClosedError
from batchscore.sinks import ScoredBatch
from batchscore.sinks.encoders import RowEncoder


class ByteTarget(Protocol):
    """Where encoded bytes go."""

    async def open(self) -> None:
        """Get ready to write."""

    async def write(self, data: bytes) -> None:
        """Append bytes."""

    async def commit(self) -> None:
        """Make what was written final."""

    async def abort(self) -> None:
        """Stop, leaving what was written for ``--resume``."""


def temp_path(final: Path) -> Path:
    """The temporary name beside ``final`` that a run writes to until it succeeds."""
    return final.with_name(f".{final.name}.partial")


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_error(path: Path | str, exc: OSError) -> OutputWriteError:
    """A one-line error for an output that cannot be written."""
    reason = {
        errno.ENOSPC: "the disk is full",
        errno.EACCES: "permission denied",
        errno.EROFS: "the file system is read-only",
        errno.EDQUOT: "the disk quota is exceeded",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    return OutputWriteError(
        f"cannot write {path}: {reason}; free space or fix permissions, then rerun with --resume"
    )


class FileTarget:
    """A file at ``path``, written as ``.<name>.partial`` and renamed into place on commit."""

    def __init__(self, path: Path, *, overwrite: bool, gzip: bool) -> None:
        self.path = path
        self.temp = temp_path(path)
        self.overwrite = overwrite
        self._gzip = zlib.compressobj(6, zlib.DEFLATED, 31) if gzip else None
        self._file: Any = None

    async def open(self) -> None:
        """Refuse an existing output unless overwriting; create the temporary file."""
        if self.path.exists() and not self.overwrite:
            raise OutputExistsError(
                f"output {self.path} already exists; "
                "pass --overwrite to replace it or choose another -o"
            )
        try:
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

    async def _flush_and_sync(self) -> None:
        await self._file.flush()
        await asyncio.to_thread(os.fsync, self._file.fileno())

    async def commit(self) -> None:
        """Flush, fsync, rename into place, fsync the directory."""
        try:
            if self._gzip is not None:
                await self._file.write(self._gzip.flush())
            await self._flush_and_sync()
            await self._file.close()
            self._file = None
            os.replace(self.temp, self.path)
            fsync_dir(self.path.parent)
        except OSError as exc:
            raise write_error(self.path, exc) from None

    async def abort(self) -> None:
        """Close the temporary file, keeping it."""
        if self._file is not None:
            file, self._file = self._file, None
            with contextlib.suppress(OSError):
                await file.close()


class StdoutTarget:
    """Standard output (a pipe, a terminal or a file); a closed pipe is PipeClosedError."""

    def __init__(self, fd: int = 1, gzip: bool = False) -> None:
        self.fd = fd
        self._gzip = zlib.compressobj(6, zlib.DEFLATED, 31) if gzip else None
        self._file: Any = None

    async def open(self) -> None:
        """Wrap the descriptor without taking ownership of it."""
        self._file = await aiofiles.open(self.fd, "wb", closefd=False)

    async def write(self, data: bytes) -> None:
        """Write and flush, so a pipeline downstream sees rows as they are scored."""
        if self._gzip is not None:
            data = self._gzip.compress(data)
        await self._write_raw(data)

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
            raise write_error("stdout", exc) from None

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

    async def open(self) -> None:
        """Open the target and write the header."""
        await self.target.open()
        header = self.encoder.header()
        if header:
            await self.target.write(header)

    async def write(self, batch: ScoredBatch) -> None:
        """Encode and write a batch."""
        await self.target.write(self.encoder.encode(batch))

    async def commit(self) -> None:
        """Finalize the target."""
        await self.target.commit()

    async def abort(self) -> None:
        """Leave the target resumable."""
        await self.target.abort()
