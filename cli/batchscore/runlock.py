"""The run lock: one ``flock`` per file a run writes (``.NAME.lock``), naming its holder."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
from pathlib import Path

from batchscore.errors import (
    LockedError,
    OutputWriteError,
)


def lock_path(output: Path) -> Path:
    """The lock file of a run writing ``output``."""
    return output.with_name(f".{output.name}.lock")


class RunLock:
    """Exclusive ``flock`` s on ``.<file>.lock`` for every file a run writes (its output, and its
    errors file wherever ``--errors`` puts it), each naming its holder (pid, start time).

    Two runs that share any of those files cannot both run: the second is refused (exit 75)
    before it touches anything, naming the file and the run that holds it.
    """

    def __init__(self, output: Path, *others: tuple[Path, str], option: str = "-o") -> None:
        self.output = output
        self.path = lock_path(output)
        # each file, and the option that chose it (said in the refusal)
        self._files = [(output, option), *others]
        self._fds: list[tuple[Path, int]] = []

    def acquire(self) -> None:
        """Take every lock or raise LockedError at once, naming the run that holds one."""
        try:
            for file, option in self._files:
                path = lock_path(file)
                if any(taken == path for taken, _ in self._fds):
                    continue  # -o and --errors both name one file
                self._fds.append((path, _take(path, file, option)))
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Remove the lock files and drop the locks."""
        while self._fds:
            path, fd = self._fds.pop()
            with contextlib.suppress(OSError):
                os.unlink(path)
            os.close(fd)


def _take(path: Path, file: Path, option: str) -> int:
    """An exclusive ``flock`` on ``path`` (the lock of ``file``), holder written in it."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputWriteError(
                f"cannot create the lock file {path}: {exc.strerror}; "
                "check that the output folder is writable"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LockedError(
                f"another batchscore run ({holder}) is writing {file}; "
                f"wait for it to finish or choose another {option}"
            ) from None
        # The holder may have removed the file between our open and flock: retry on the new one.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}, started {started}".encode())
    except OSError as exc:  # a full disk: nothing of the run is written yet
        os.close(fd)
        from batchscore.sinks.files import write_error

        raise write_error(path, exc, resumable=False) from None
    return fd


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "pid unknown"
