"""Entry point for ``python -m batchscore`` and the ``batchscore`` console script.

Before anything else is imported, the standard streams are made safe to use, whatever the
shell handed over: a closed descriptor (``<&-``, ``2>&-``) is opened on ``/dev/null`` (else the
next file opened would take its number, and a message meant for stderr would land in an output
file), in the direction that keeps what a closed stream means: stdin open for writing only, so
that reading IDs from it fails (and says stdin is closed), stdout for reading only, so that
scores written to it fail (exit 74) instead of vanishing, stderr for writing, so messages go
nowhere.  And stderr never raises: a message that cannot be written (``2>/dev/full``, a closed
pipe) is dropped, so the exit status is the run's, not the message's; text that cannot be
written to stdout is exit 74 (141 for a closed pipe), never a traceback at exit.
"""

from __future__ import annotations

import io
import os
import sys

_CLOSED_MEANS = ((0, os.O_WRONLY), (1, os.O_RDONLY), (2, os.O_WRONLY))


def reopen_closed_stdio() -> None:
    """Open ``/dev/null`` on each standard descriptor that is closed (see the module's doc),
    and give Python a stream object for it."""
    for fd, flags in _CLOSED_MEANS:
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, flags)
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)
    if sys.stdin is None:
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115 - the process's own


class _Direct(io.TextIOBase):
    """Text written straight to a descriptor, unbuffered (nothing is left to fail at exit);
    what a failed write means is the subclass's :meth:`failed`."""

    def __init__(self, fd: int, encoding: str = "utf-8") -> None:
        super().__init__()
        self._fd = fd
        self._encoding = encoding

    @property
    def encoding(self) -> str:  # type: ignore[override]  # read-only, as on every text stream
        """The encoding of the text written (the one Python chose for the stream)."""
        return self._encoding

    def writable(self) -> bool:
        """Always: :meth:`failed` says what a failed write means."""
        return True

    def write(self, text: str) -> int:
        """Write ``text`` whole, or stop at the first error and call :meth:`failed`."""
        data = text.encode(self._encoding, "backslashreplace")
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError as exc:
            self.failed(exc)
        return len(text)

    def failed(self, exc: OSError) -> None:
        """A write failed."""
        raise exc

    def fileno(self) -> int:
        """The descriptor (a terminal check, a progress bar's width)."""
        return self._fd

    def isatty(self) -> bool:
        """Whether the descriptor is a terminal."""
        try:
            return os.isatty(self._fd)
        except OSError:
            return False


class QuietStderr(_Direct):
    """stderr, where a write that fails (a full disk, a closed pipe or descriptor) is dropped
    instead of raising: a message is never worth a crash or a different exit status."""

    def failed(self, exc: OSError) -> None:
        """Drop the rest of the message."""


class CheckedStdout(_Direct):
    """stdout of the text commands (``check``, ``model-info``, help): a write that fails is
    the error of its exit status, 141 for a reader that went away (``| head``), else 74.
    (``score`` writes its scores to the descriptor itself, with the same statuses.)"""

    def failed(self, exc: OSError) -> None:
        """Raise the error the command line reports."""
        from batchscore.errors import OutputWriteError, PipeClosedError

        if isinstance(exc, BrokenPipeError):
            raise PipeClosedError("stdout was closed by its reader") from None
        raise OutputWriteError(f"cannot write stdout: {exc.strerror or exc}") from None


def main() -> None:
    """Run the command line and exit with its status."""
    reopen_closed_stdio()
    sys.stderr = QuietStderr(2, getattr(sys.stderr, "encoding", None) or "utf-8")
    sys.stdout = CheckedStdout(1, getattr(sys.stdout, "encoding", None) or "utf-8")
    try:
        from batchscore.app import run_cli
    except KeyboardInterrupt:  # Ctrl-C while the command's modules load: no traceback
        print("batchscore: interrupted", file=sys.stderr)
        sys.exit(130)
    try:
        status = run_cli(sys.argv[1:])
    except KeyboardInterrupt:  # Ctrl-C in run_cli's first or last instants, outside its try
        print("batchscore: interrupted", file=sys.stderr)
        status = 130
    if status in (130, 143):
        # A signal stopped the run and decided its status; a second one arriving while the
        # interpreter shuts down (Python resets its handlers to the default there, and any
        # thread may receive it) would kill the process with the signal instead.
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    sys.exit(status)


if __name__ == "__main__":
    main()
