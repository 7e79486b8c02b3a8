"""Opening SQLite files through aiosqlite without leaving its thread talking to a closed loop.

When ``aiosqlite.connect`` fails (a state path that is a folder, a file we may not read), its
worker thread still answers a stop request later, on the event loop, and if the run has ended
by then that prints ``RuntimeError: Event loop is closed`` after the run's one-line error.  So
the file is opened once with :mod:`sqlite3` first: what fails fails there, with the same
``sqlite3.Error``, and aiosqlite only opens what will open.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any


async def open_sqlite(target: str | Path, **kwargs: Any) -> Any:
    """An ``aiosqlite`` connection to ``target`` (``sqlite3.connect`` arguments)."""
    import aiosqlite

    sqlite3.connect(target, **kwargs).close()  # a quick open and close; raises what connect would
    return await aiosqlite.connect(target, **kwargs)
