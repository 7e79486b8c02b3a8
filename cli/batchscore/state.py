"""Run state beside a file output: the run lock, committed progress, and resume.

For an output ``out/scores.csv`` a run keeps, in ``out/``:

- ``.scores.csv.partial``: the output being written (renamed into place on success);
- ``.scores.csv.errors.jsonl.partial`` (or beside ``--errors``): the errors file being written;
- ``.scores.csv.state``: a small SQLite file (through aiosqlite) with what is committed;
- ``.scores.csv.lock``: the run lock (``flock``; the kernel drops it when a run dies);
- ``.scores.csv.done``: left by a completed run that was started with ``--resume`` (the cron
  pattern): what it was (:class:`DoneRecord`), so the same command run again is a no-op.

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
import datetime as dt
import fcntl
import logging
import os
import shutil
import signal
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from batchscore.atomic import write_atomically
from batchscore.errors import (
    LeftoverStateError,
    LockedError,
    OutputExistsError,
    OutputWriteError,
)
from batchscore.identity import difference, identity_text

log = logging.getLogger("batchscore")

if TYPE_CHECKING:
    from batchscore.sinks import Sink
    from batchscore.sinks.errorlog import ErrorLog


def state_path(output: Path) -> Path:
    """The state file of a run writing ``output``."""
    return output.with_name(f".{output.name}.state")


def done_path(output: Path) -> Path:
    """The record a completed ``--resume`` run leaves beside ``output``."""
    return output.with_name(f".{output.name}.done")


def file_stamp(path: str | Path) -> list[int] | None:
    """Size and modification time of a file (what ``make`` trusts), or None for stdin or a
    file that is gone."""
    if str(path) == "-":
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns]


class DoneRecord:
    """What a completed run knew, kept beside its output so that the same job run again with
    ``--resume`` is a no-op (exit 0) instead of "already exists".

    The job is the same when the run identity (input path, model, columns, format ...) is, the
    input file has the size and modification time it had, and the output is the file that run
    wrote (same size and time).  Anything else is not this run's output, and is refused as an
    existing output.
    """

    def __init__(
        self, output: Path, identity: dict[str, Any], input_path: str, config: str = ""
    ) -> None:
        self.output = output
        self.path = done_path(output)
        self.identity = identity_text(identity)
        self.input_path = input_path
        self.config = config  # the config file's fingerprint (its sources, tables, keys ...)

    def write(self, counters: dict[str, Any]) -> None:
        """Record the completed run (after its output is in place), atomically."""
        record = {
            "identity": self.identity,
            "config": self.config,
            "counters": counters,
            "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "input": file_stamp(self.input_path),
            "output": file_stamp(self.output),
        }
        try:
            self._store(record)
        except OSError as exc:  # the output is in place: the run succeeded all the same
            log.warning(
                "cannot write %s (%s): running the same job again with --resume will say the "
                "output exists instead of doing nothing",
                self.path,
                exc.strerror,
            )

    def _store(self, record: dict[str, Any]) -> None:
        write_atomically(self.path, orjson.dumps(record))

    def attach(self, monitoring: dict[str, Any]) -> None:
        """Keep the run's report and metrics in its record, so that the same job run again
        (a no-op) writes the real figures again instead of empty ones.  Only a record that
        describes the output as it is now is touched."""
        try:
            record = orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return
        if not isinstance(record, dict) or record.get("output") != file_stamp(self.output):
            return
        record["monitoring"] = monitoring
        try:
            self._store(record)
        except OSError as exc:  # the run succeeded all the same
            log.warning("cannot keep the report in %s (%s)", self.path, exc.strerror)

    def remove(self) -> None:
        """A new run replaces the output: the record no longer describes it."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def check(self) -> dict[str, Any]:
        """The record, if the existing output is what the same job wrote from the same input;
        otherwise an :class:`~batchscore.errors.OutputExistsError` saying why not."""

        def refuse(why: str) -> OutputExistsError:
            return OutputExistsError(
                f"output {self.output} already exists{why}; pass --overwrite to replace it or "
                "choose another -o"
            )

        try:
            record: Any = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            raise refuse(" (and no completed run with --resume recorded it)") from None
        except (OSError, orjson.JSONDecodeError):
            record = None
        if not _usable_done(record):
            raise OutputExistsError(
                f"output {self.output} already exists and the record of the run that wrote it "
                f"({self.path}) is damaged, so it cannot tell whether this job is done; pass "
                "--overwrite to score again (or remove that record and the output)"
            )
        if record.get("identity") != self.identity:
            raise refuse(
                f"; the run that wrote it used another "
                f"{difference(str(record.get('identity')), self.identity)}"
            )
        if record.get("config", "") != self.config:
            raise refuse(
                "; the run that wrote it used a config file with other content (sources, "
                "tables, settings)"
            )
        if self.input_path == "-" or record.get("input") != file_stamp(self.input_path):
            raise refuse(
                f" from a completed run, but {self.input_path} has changed since"
                if self.input_path != "-"
                else " from a completed run, and an input from stdin cannot be compared"
            )
        if record.get("output") != file_stamp(self.output):
            raise refuse(" and has changed since the run that wrote it")
        usable: dict[str, Any] = record
        return usable


def _usable_done(record: Any) -> bool:
    """Whether a done record has every field, each of its type (a hand-edited or truncated one
    is refused as damaged, never half-read)."""
    if not isinstance(record, dict):
        return False
    stamps_ok = all(
        stamp is None
        or (isinstance(stamp, list) and len(stamp) == 2 and all(_count(v) for v in stamp))
        for stamp in (record.get("input"), record.get("output"))
    )
    return (
        isinstance(record.get("identity"), str)
        and isinstance(record.get("config", ""), str)
        and isinstance(record.get("finished"), str)
        and _usable_counters(record.get("counters"))
        and stamps_ok
    )


def _count(value: Any) -> bool:
    """A non-negative integer (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _usable_counters(counters: Any) -> bool:
    """Counters as :meth:`~batchscore.report.RunStats.counters` writes them: counts, the
    failures by reason, and the histograms of the rows written."""
    if not isinstance(counters, dict):
        return False
    for key, value in counters.items():
        if key == "failed":
            if not isinstance(value, dict) or not all(map(_count, value.values())):
                return False
        elif key == "distributions":
            if not _usable_distributions(value):
                return False
        elif not _count(value):
            return False
    return True


def _usable_distributions(value: Any) -> bool:
    """Histograms that read back (:meth:`~batchscore.drift.Distribution.from_dict`)."""
    from batchscore.histograms import Distribution

    if not isinstance(value, list):
        return False
    try:
        for item in value:
            Distribution.from_dict(item)
    except (KeyError, TypeError, ValueError):
        return False
    return True


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
    if not (_count(out_bytes) and _count(err_bytes)):
        raise damaged("output_bytes/errors_bytes")
    try:
        ranges = orjson.loads(lines)
        if not isinstance(ranges, list) or not all(
            isinstance(r, list) and len(r) == 2 and all(map(_count, r)) for r in ranges
        ):
            raise ValueError
        parsed = LineRanges(ranges)
    except (TypeError, ValueError):
        raise damaged("lines") from None
    try:
        counts = orjson.loads(counters)
    except (TypeError, ValueError):
        counts = None
    if not _usable_counters(counts):
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
