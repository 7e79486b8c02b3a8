"""Times as an operator reads them: ISO 8601 with the zone, on log lines and in the report.

A cron log holds many nights, so when stderr is not a terminal every line batchscore writes
there (progress, summary, warnings, the error line) starts with the time it was written.
:class:`StampedLines` does that at the one place lines leave the process: ``app.run_cli`` puts
it in front of ``sys.stderr`` for the whole command, so no caller formats a time itself.  On a
terminal the screen stays as it is.
"""

from __future__ import annotations

import datetime as dt
import time


def iso_time(when: float | None = None) -> str:
    """``when`` (Unix time; now if None) in the local zone: ``2026-12-07T03:15:42+01:00``."""
    moment = dt.datetime.fromtimestamp(time.time() if when is None else when).astimezone()
    return moment.isoformat(timespec="seconds")
