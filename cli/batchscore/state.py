"""Run state beside a file output: committed progress, and resume.

For an output ``out/scores.csv`` a run keeps, in ``out/``:

- ``.scores.csv.partial``: the output being written (renamed into place on success);
- ``.scores.csv.errors.jsonl.partial`` (or beside ``--errors``): the errors file being written;
- ``.scores.csv.state``: a small SQLite file (through aiosqlite) with what is committed;
- ``.scores.csv.lock``: the run lock (``flock``; the kernel drops it when a run dies;
  :mod:`batchscore.runlock`);
- ``.scores.csv.done``: left by a completed run that was started with ``--resume`` (the cron
  pattern): what it was (:mod:`batchscore.done`), so the same command run again is a no-op.

A *commit* makes everything written so far durable in one step: fsync the output and the errors
file, then record, in one SQLite transaction, their byte lengths and which input lines they
cover (:class:`LineRanges`).  On ``--resume`` both files are truncated back to the recorded
lengths (dropping anything written after the last commit) and the input lines already covered
are skipped, so every ID ends up in the output exactly once, in the same order as an
uninterrupted run.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import shutil
import signal
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from batchscore.done import DoneRecord, is_count, usable_counters
from batchscore.errors import (
    LeftoverStateError,
    OutputWriteError,
)
from batchscore.identity import difference, identity_text

if TYPE_CHECKING:
    from batchscore.sinks import Sink
    from batchscore.sinks.errorlog import ErrorLog


def state_path(output: Path) -> Path:
    """The state file of a run writing ``output``."""
    return output.with_name(f".{output.name}.state")


class LineRanges:
    """A set of input lines kept as sorted, disjoint, inclusive ``[first, last]`` ranges.

    Chunks commit whole spans of consecutive lines, and spans of neighbouring chunks touch, so
    however long a run is, the set stays a handful of ranges: one in input order, one more per
    chunk still missing in ``--unordered`` runs.
    """

    __slots__ = ("_firsts", "_lasts")

    def __init__(self, ranges: Iterable[Sequence[int]] = ()) -> None:
        self._firsts: list[int] = []
        self._lasts: list[int] = []
        for first, last in ranges:
            self.add(first, last)

    def add(self, first: int, last: int) -> None:
        """Add lines ``first`` to ``last`` (nothing when ``last < first``)."""
        if last < first:
            return
        # Ranges that overlap or touch [first, last] are merged with it.
        lo = bisect.bisect_left(self._lasts, first - 1)
        hi = bisect.bisect_right(self._firsts, last + 1)
        if lo < hi:
            first = min(first, self._firsts[lo])
            last = max(last, self._lasts[hi - 1])
        self._firsts[lo:hi] = [first]
        self._lasts[lo:hi] = [last]

    def update(self, other: LineRanges) -> None:
        """Add every range of ``other``."""
        for first, last in other.ranges():
            self.add(first, last)

    def __contains__(self, line: object) -> bool:
        if not isinstance(line, int):
            return False
        if self._lasts and self._firsts[0] <= line <= self._lasts[0]:  # the common case
            return True
        i = bisect.bisect_left(self._lasts, line)
        return i < len(self._firsts) and self._firsts[i] <= line

    def __bool__(self) -> bool:
        return bool(self._firsts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LineRanges) and self.ranges() == other.ranges()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def ranges(self) -> list[tuple[int, int]]:
        """The ranges, in order."""
        return list(zip(self._firsts, self._lasts, strict=True))

    def copy(self) -> LineRanges:
        """An independent copy."""
        return LineRanges(self.ranges())

    def __repr__(self) -> str:
        return f"LineRanges({self.ranges()!r})"


@dataclass
class Committed:
    """What earlier runs committed: how long the outputs were, which input lines they cover."""

    output_bytes: int = 0
    errors_bytes: int = 0
    lines: LineRanges = field(default_factory=LineRanges)
    counters: dict[str, Any] = field(default_factory=dict)
    complete: bool = False  # every row was written: only the final renames may be missing

    @property
    def started(self) -> bool:
        """Whether anything was committed."""
        return bool(self.lines) or self.output_bytes > 0 or self.errors_bytes > 0


_SCHEMA = """
CREATE TABLE IF NOT EXISTS run (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    identity TEXT NOT NULL,
    output_bytes INTEGER NOT NULL,
    errors_bytes INTEGER NOT NULL,
    lines TEXT NOT NULL,
    counters TEXT NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0,
    replaces INTEGER NOT NULL DEFAULT 0
)
"""
# ``replaces``: the run was started with --overwrite, so its --resume may replace the output
# that was there (a state written before the column existed reads as 0).


def stopped_run_replaces(output: Path) -> bool:
    """Whether the stopped run whose state is beside ``output`` was started with
    ``--overwrite``: the existing output is the one it was told to replace, and its
    ``--resume`` (which cannot also pass --overwrite) replaces it too."""
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{state_path(output)}?mode=ro", uri=True)
        ) as db:
            row = db.execute("SELECT replaces FROM run").fetchone()
    except sqlite3.Error:
        return False  # no such column (an older state), or damaged: refused when opened
    return row is not None and row[0] == 1


class RunState:
    """The committed progress of one output, in ``.<output>.state`` (SQLite, through aiosqlite).

    Its connection lives only inside ``async with RunState(...) as state:`` (its one owner is
    :class:`RunFiles`): leaving the block closes it on every path, an error included (an
    aiosqlite connection left open keeps the process from ever exiting).
    """

    def __init__(self, output: Path, identity: dict[str, Any], *, replaces: bool = False) -> None:
        self.output = output
        self.path = state_path(output)
        self.identity = identity_text(identity)
        self.replaces = replaces  # started with --overwrite (kept for its --resume)
        self._db: Any = None
        self._entered = False

    async def __aenter__(self) -> RunState:
        self._entered = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._entered = False
        await self.close()

    def leftovers(self, partials: list[Path]) -> list[Path]:
        """Files a stopped run left behind."""
        return [p for p in (self.path, *partials) if p.exists()]

    async def open(self, *, resume: bool, overwrite: bool, partials: list[Path]) -> Committed:
        """Load what an earlier run committed (``resume``), or start afresh.

        Without ``resume``, leftovers are an error, unless ``overwrite`` removes them.  A state
        that cannot be read as a run's progress is refused (exit 2, naming it), never half-read.
        """
        if not self._entered:
            raise RuntimeError("RunState.open outside `async with RunState(...)`")
        left = self.leftovers(partials)
        if left and not resume:
            if not overwrite:
                raise LeftoverStateError(
                    f"a stopped run left state for {self.output} ({left[0].name}); rerun with "
                    "--resume to continue it, or --overwrite to start over"
                )
            try:
                for path in left:
                    if path.is_dir():  # a Parquet run's segment folder
                        shutil.rmtree(path)
                    else:
                        path.unlink()
            except OSError as exc:
                raise OutputWriteError(
                    f"cannot remove the stopped run's {path} ({exc.strerror}); fix the "
                    "folder's permissions"
                ) from None
        try:
            return await self._load()
        except BaseException:
            await self.close()
            raise

    async def _load(self) -> Committed:
        from batchscore.dbopen import open_sqlite

        fresh = not self.path.exists()
        try:
            self._db = await open_sqlite(self.path)
            await self._db.execute("PRAGMA synchronous = FULL")
            await self._db.execute(_SCHEMA)
            cursor = await self._db.execute(
                "SELECT identity, output_bytes, errors_bytes, lines, counters, complete FROM run"
            )
            row = await cursor.fetchone()
            columns = await (await self._db.execute("PRAGMA table_info(run)")).fetchall()
            if "replaces" not in [c[1] for c in columns]:  # a state from before the column
                await self._db.execute(
                    "ALTER TABLE run ADD COLUMN replaces INTEGER NOT NULL DEFAULT 0"
                )
                await self._db.commit()
        except (OSError, sqlite3.Error) as exc:
            if isinstance(exc, sqlite3.DatabaseError) and not isinstance(
                exc, sqlite3.OperationalError
            ):  # "file is not a database", "malformed": not the disk, the file
                raise self._damaged(str(exc)) from None
            raise OutputWriteError(
                f"cannot use the state file {self.path} ({exc}); free space or fix the "
                "folder's permissions, then rerun with --resume"
            ) from None
        if row is not None and not fresh:
            identity = row[0]
            if not isinstance(identity, str):
                raise self._damaged("identity")
            if identity != self.identity:
                raise LeftoverStateError(
                    f"the stopped run for {self.output} used another "
                    f"{difference(identity, self.identity)}; rerun it with the same arguments, "
                    "or pass --overwrite to start over"
                )
            return _progress(row, self._damaged)
        await self._update(
            "INSERT OR REPLACE INTO run VALUES (1, ?, 0, 0, '[]', '{}', 0, ?)",
            (self.identity, int(self.replaces)),
        )
        return Committed()

    def _damaged(self, what: str) -> LeftoverStateError:
        return LeftoverStateError(
            f"the state file {self.path} of the stopped run is damaged ({what}), so what it "
            "committed is unknown; pass --overwrite to start over"
        )

    async def record(self, progress: Committed) -> None:
        """Record committed progress durably (the output and errors file are already synced)."""
        await self._update(
            "UPDATE run SET output_bytes = ?, errors_bytes = ?, lines = ?, counters = ? "
            "WHERE id = 1",
            (
                progress.output_bytes,
                progress.errors_bytes,
                orjson.dumps(progress.lines.ranges()).decode(),
                orjson.dumps(progress.counters).decode(),
            ),
        )

    async def mark_complete(self) -> None:
        """Every row is written and synced: from here a resume only finishes the renames."""
        await self._update("UPDATE run SET complete = 1 WHERE id = 1", ())

    async def _update(self, sql: str, params: tuple[Any, ...]) -> None:
        try:
            await self._db.execute(sql, params)
            await self._db.commit()
        except (OSError, sqlite3.Error) as exc:
            raise OutputWriteError(
                f"cannot record progress in {self.path} ({exc}); "
                "free space, then rerun with --resume"
            ) from None

    async def close(self) -> None:
        """Close the state database (again: nothing)."""
        if self._db is not None:
            db, self._db = self._db, None
            with contextlib.suppress(sqlite3.Error):
                await db.close()

    async def remove(self) -> None:
        """The run is complete: the state is no longer needed."""
        await self.close()
        try:
            for path in (self.path, self.path.with_name(self.path.name + "-journal")):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        except OSError as exc:
            raise OutputWriteError(
                f"cannot remove the finished run's state {self.path} ({exc.strerror}); fix "
                "the folder's permissions, then rerun with --resume"
            ) from None


def _progress(row: Sequence[Any], damaged: Callable[[str], Exception]) -> Committed:
    """A state row as :class:`Committed`, each field checked (a hand-edited or half-written
    value is ``damaged``, never a traceback or a wrong resume point)."""
    _, out_bytes, err_bytes, lines, counters, complete = row
    if not (is_count(out_bytes) and is_count(err_bytes)):
        raise damaged("output_bytes/errors_bytes")
    try:
        ranges = orjson.loads(lines)
        if not isinstance(ranges, list) or not all(
            isinstance(r, list) and len(r) == 2 and all(map(is_count, r)) for r in ranges
        ):
            raise ValueError
        parsed = LineRanges(ranges)
    except (TypeError, ValueError):
        raise damaged("lines") from None
    try:
        counts = orjson.loads(counters)
    except (TypeError, ValueError):
        counts = None
    if not usable_counters(counts):
        raise damaged("counters")
    if complete not in (0, 1):
        raise damaged("complete")
    return Committed(out_bytes, err_bytes, parsed, counts, bool(complete))


def crash_point(step: str) -> None:
    """Tests only: die here, as a kill -9 would, when ``_BATCHSCORE_CRASH_AT`` names this step
    of the commit (the tests prove a kill at every step leaves a resumable run)."""
    if os.environ.get("_BATCHSCORE_CRASH_AT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


class RunFiles:
    """The files one run writes, opened, committed and left for ``--resume`` together: the
    output (a sink), the errors file, and (for file outputs) the run state.

    Used as ``async with RunFiles(...) as files:`` (:meth:`open` refuses otherwise): leaving the
    block closes whatever is still open (the state's connection, a SQLite output's), on every
    path, so that no error can leave the process unable to exit.

    The success path commits in an order that leaves the run resumable whatever instant a kill
    comes:

    1. sync the output and the errors file, and record their lengths and lines in the state;
    2. mark the state complete (every row is written and durable);
    3. put the errors file in place, then the output (each sink's own steps: a rename, or for
       Parquet the segments assembled into one file, see :class:`ParquetSink`);
    4. write the done record (runs started with ``--resume``), then remove the state.

    A kill before 2 resumes as any stopped run.  A kill after 2 resumes by finishing 3 and 4
    (:meth:`finish`): nothing is fetched again.  A resume that finds a partial file missing, or
    shorter than the state says (fewer bytes, segments or rows), refuses (exit 2, naming it)
    instead of starting that file afresh or padding it.
    """

    def __init__(
        self,
        *,
        sink: Sink,
        errors: ErrorLog,
        state: RunState | None,
        output_partial: Path | None,
        errors_partial: Path | None,
        done: DoneRecord | None = None,
    ) -> None:
        self.done = done
        self.sink = sink
        self.errors = errors
        self.state = state
        self.output_partial = output_partial
        self.errors_partial = errors_partial
        self.previous = Committed()
        self._entered = False
        self._settled = False  # committed or finished: nothing is left to keep for --resume

    async def __aenter__(self) -> RunFiles:
        if self.state is not None:
            await self.state.__aenter__()
        self._entered = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._entered = False
        await self.abort()

    async def open(self, *, resume: bool, overwrite: bool) -> Committed:
        """Take over what a stopped run committed (``resume``), or start afresh; open the files
        (unless the stopped run was complete: then :meth:`finish` is all that is left)."""
        if not self._entered:
            raise RuntimeError("RunFiles.open outside `async with RunFiles(...)`")
        state = self.state
        if state is not None:
            partials = [p for p in (self.output_partial, self.errors_partial) if p is not None]
            self.previous = await state.open(resume=resume, overwrite=overwrite, partials=partials)
        previous = self.previous
        if previous.complete:
            return previous
        if self.done is not None:
            self.done.remove()  # this run replaces the output the record describes
        resuming = previous.started
        if resuming:
            self._check_partials(previous)
        await self.sink.open(previous.output_bytes if resuming else None)
        await self.errors.open(previous.errors_bytes if resuming else None)
        return previous

    def _check_partials(self, previous: Committed) -> None:
        missing = [
            path
            for path, written in (
                (self.output_partial, previous.output_bytes or bool(previous.lines)),
                (self.errors_partial, previous.errors_bytes),
            )
            if path is not None and written and not path.exists()
        ]
        if missing:
            raise LeftoverStateError(
                f"the stopped run's partial file {missing[0]} is missing, so its rows cannot "
                "be recovered; pass --overwrite to start over"
            )

    async def checkpoint(self, written: LineRanges, counters: dict[str, Any]) -> None:
        """Make everything written so far durable and record it (step 1)."""
        out_bytes = await self.sink.sync()
        err_bytes = await self.errors.sync()
        if self.state is not None:
            lines = self.previous.lines.copy()
            lines.update(written)
            await self.state.record(Committed(out_bytes, err_bytes, lines, counters))

    async def commit(self, written: LineRanges, counters: dict[str, Any]) -> None:
        """The run succeeded: steps 1 to 4."""
        await self.checkpoint(written, counters)
        crash_point("synced")
        if self.state is not None:
            await self.state.mark_complete()
        crash_point("complete")
        await self.errors.commit()
        crash_point("errors-renamed")
        await self.sink.commit()
        crash_point("output-renamed")
        await self._done(counters)

    async def _done(self, counters: dict[str, Any]) -> None:
        """Step 4."""
        self._settled = True
        if self.done is not None:
            self.done.write(counters)
        if self.state is not None:
            await self.state.remove()

    async def finish(self) -> None:
        """A complete run was stopped during step 3 or 4: do what is left of them."""
        if self.errors_partial is not None and self.errors_partial.exists():
            await self.errors.open(self.previous.errors_bytes)
            await self.errors.commit()
        await self.sink.finish(self.previous.output_bytes)
        await self._done(self.previous.counters)

    async def abort(self) -> None:
        """The run stopped: keep what is committed for ``--resume``; close everything (again:
        nothing)."""
        if not self._settled:
            with contextlib.suppress(Exception):
                await self.sink.abort()
            with contextlib.suppress(Exception):
                await self.errors.abort()
        if self.state is not None:
            await self.state.close()
