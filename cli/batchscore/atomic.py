"""Whole-file writes that readers never see half done, and that survive a crash once returned.

One mechanism for every file batchscore writes in one piece (reports, metrics, done records, a
merged output, a part's done record): the bytes go to a temporary file beside the target, are
fsynced, renamed over the target, and the folder is fsynced so the rename itself is durable. On
any failure the temporary file is removed and the target is left as it was.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_folder(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_beside(target: Path) -> Path:
    """The hidden temporary name a whole-file write of ``target`` uses."""
    return target.with_name(f".{target.name}.tmp{os.getpid()}")


@contextlib.contextmanager
def atomic_file(target: Path, temp: Path | None = None) -> Iterator[BinaryIO]:
    """A binary file that becomes ``target`` (durably) when the block ends without an error.

    ``temp`` names the file written meanwhile (hidden, beside ``target``, by default); it is
    removed if the block or the rename fails.
    """
    staged = temp if temp is not None else temp_beside(target)
    try:
        with open(staged, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(staged, target)
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk, a directory in the way
            staged.unlink()
        raise
    fsync_folder(target.parent)


def write_atomically(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename (readers never see half)."""
    with atomic_file(Path(path)) as f:
        f.write(data)


__all__ = ["atomic_file", "fsync_folder", "temp_beside", "write_atomically"]
