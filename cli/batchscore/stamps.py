"""Times as an operator reads them: ISO 8601 with the zone, on log lines and in the report.

A cron log holds many nights, so when stderr is not a terminal every line batchscore writes
there (progress, summary, warnings, the error line) starts with the time it was written.
:class:`StampedLines` does that at the one place lines leave the process: ``app.run_cli`` puts
it in front of ``sys.stderr`` for the whole command, so no caller formats a time itself.  On a
terminal the screen stays as it is; ``--timestamps never`` leaves them out where a collector
(journald, a container runtime) stamps lines itself, ``always`` puts them on a terminal too.
"""

from __future__ import annotations

import datetime as dt
import io
import sys
import threading
import time
from typing import TextIO

WHEN = ("auto", "always", "never")
"""``--timestamps``: auto stamps lines when stderr is not a terminal."""


def iso_time(when: float | None = None) -> str:
    """``when`` (Unix time; now if None) in the local zone: ``2026-12-07T03:15:42+01:00``."""
    moment = dt.datetime.fromtimestamp(time.time() if when is None else when).astimezone()
    return moment.isoformat(timespec="seconds")


class StampedLines(io.TextIOBase):
    """A text stream that starts each line written to ``target`` with :func:`iso_time`.

    Writes may come in pieces (``print`` writes the text, then the newline) and from several
    threads (the logging handler, the input reader): a line is stamped when its first
    character is written, under a lock.
    """

    def __init__(self, target: TextIO, when: str = "auto") -> None:
        super().__init__()
        self.target = target
        self.stamping = False
        self._line_start = True
        self._lock = threading.Lock()
        self.set_when(when)

    def set_when(self, when: str) -> None:
        """Stamp ``always``, ``never``, or (``auto``) unless the target is a terminal."""
        self.stamping = when == "always" or (when == "auto" and not _is_terminal(self.target))

    def write(self, text: str) -> int:
        """Write ``text``, a stamp before each line it starts."""
        if not self.stamping:
            return self.target.write(text)
        if not text:
            return 0
        with self._lock:
            out: list[str] = []
            for piece in text.splitlines(keepends=True):
                if self._line_start and piece not in ("\n", "\r\n"):  # not on a blank line
                    out.append(iso_time() + " ")
                out.append(piece)
                self._line_start = piece.endswith(("\n", "\r"))
            self.target.write("".join(out))
        return len(text)

    def flush(self) -> None:
        """Flush the stream underneath."""
        self.target.flush()

    def isatty(self) -> bool:
        """As the stream underneath, unless stamping (``--timestamps always`` on a terminal):
        then log lines, not a live display that stamps would break up."""
        return not self.stamping and _is_terminal(self.target)

    def fileno(self) -> int:
        """The stream underneath's descriptor."""
        return self.target.fileno()

    def writable(self) -> bool:
        """Always."""
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        """As the stream underneath."""
        return self.target.encoding


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def stamp_stderr(when: str) -> None:
    """Set how the command's stderr (a :class:`StampedLines`, once ``run_cli`` runs) stamps."""
    if isinstance(sys.stderr, StampedLines):
        sys.stderr.set_when(when)
