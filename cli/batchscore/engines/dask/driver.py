"""``--engine dask``: one run over many cores or machines, driven from this process.

The driver checks everything a local run checks before any work (model, input as a whole,
sources, the output folder), cuts the input file into partitions of consecutive lines, and
submits one Dask task per partition (:func:`batchscore.engines.dask.task.run_partition`: the same
pipeline as a local run, on a worker).  It shows one progress display fed by the partitions'
Dask events and completed futures, and writes, once every part is in place, the merged file
(``--merge``) and last the ``_SUCCESS`` manifest.

The output folder::

    part-00000.csv                  a partition's scores (complete whenever it exists)
    errors-00000.jsonl              its errors file
    .part-00000.csv.done            its lines and counts (removed once _SUCCESS is written)
    .batchscore-run.json            the run's identity and partitioning (until _SUCCESS)
    merged.csv, merged.csv.errors.jsonl   with --merge: every part, in input order
    _SUCCESS                        the manifest, written last

A lost worker's partition is run again by Dask, and replaces its part as a whole; ``--resume``
after a stopped driver runs only the partitions whose part is missing.  So the display counts
a partition once its part is committed, and a stopped run's summary counts the parts in the
folder (:meth:`Driver._stopped`): no count shown is one that ``--resume`` fetches again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import signal
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from batchscore import ids as idmod
from batchscore.atomic import write_atomically
from batchscore.done import file_stamp
from batchscore.engines.dask.cluster import Cluster, allowed_failures, for_workers
from batchscore.engines.dask.folder import (
    MARKER,
    SUCCESS,
    choose_partition_size,
    header_line,
    is_ours,
    read_json,
    split_lines,
    text_header_at,
)
from batchscore.engines.dask.manifest import manifest_counters, merge_parts, write_success
from batchscore.engines.dask.task import (
    Job,
    JobPlugin,
    Partition,
    PartResult,
    done_name,
    errors_name,
    left_failing,
    part_name,
    run_partition,
)
from batchscore.errors import (
    ExitStatus,
    InterruptedRun,
    LeftoverStateError,
    OutputExistsError,
    SourceDownError,
    Terminated,
    UsageError,
    swallowed_stop,
    with_status,
)
from batchscore.identity import difference, identity_text
from batchscore.plan import Plan, input_format, input_path, plan_identity
from batchscore.progress import ProgressDisplay, choose
from batchscore.report import FIRST_FAILURES, RunStats
from batchscore.runlock import RunLock
from batchscore.scoring import Environment, open_sources, read_input
from batchscore.settings import Settings
from batchscore.signals import leave_on_second_signal
from batchscore.sinks import EXTENSIONS
from batchscore.sources import Source
from batchscore.sources.build import build_sources
from batchscore.sources.input import input_values
from batchscore.sources.limits import Limits
from batchscore.sources.retry import down_message
from batchscore.wording import counted

log = logging.getLogger("batchscore")


def start(p: Plan, env: Environment, stats: RunStats) -> Driver:
    """A ``--engine dask`` run of plan ``p`` (nothing is started yet)."""
    return Driver(p, env, stats, _extension(p))


def refuse(settings: Settings) -> None:
    """What a cluster run cannot do, said before anything starts (exit 2)."""
    s = settings
    if s.input.from_errors:
        raise UsageError(
            "--from-errors retries an errors file in this process; drop --engine dask (an "
            "errors file is small), or pass the IDs as a file"
        )
    if s.input.path == "-":
        raise UsageError(
            "--engine dask reads the input file on the workers; pass IDS as a file on storage "
            "they can reach, not stdin"
        )
    if not os.path.isfile(s.input.path):
        raise UsageError(f"ID file {s.input.path} does not exist or is not a file; pass a file")
    if s.input.dedupe:
        raise UsageError(
            "--dedupe needs every ID seen in one process; drop --engine dask, or dedupe the "
            "input first (sort -u)"
        )
    if s.output.errors:
        raise UsageError(
            "--engine dask writes each part's errors file beside it (errors-NNNNN.jsonl); "
            "drop --errors"
        )
    if s.output.merge and s.output.format in ("parquet", "sqlite"):
        raise UsageError(f"--merge writes CSV or JSON lines; {s.output.format} parts stay parts")
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise UsageError("--engine dask needs Dask: pip install 'batchscore[dask]'") from None


def _extension(p: Plan) -> str:
    """The part files' extension: ``csv``, ``jsonl.gz``, ``parquet`` ..."""
    by_format = {fmt: ext.lstrip(".") for ext, fmt in reversed(EXTENSIONS.items())}
    ext = by_format.get(p.fmt, p.fmt)
    if p.gzip:
        if p.fmt in ("parquet", "sqlite"):
            raise UsageError(f"--format {p.fmt} cannot be gzipped; drop the .gz")
        ext += ".gz"
    if p.settings.output.merge and p.fmt in ("parquet", "sqlite"):
        raise UsageError(f"--merge writes CSV or JSON lines; {p.fmt} parts stay parts")
    return ext


@dataclass(frozen=True)
class _Started:
    """A partition's task started (a Dask event its task published)."""

    message: dict[str, Any]


@dataclass(frozen=True)
class _Finished:
    """A partition's future completed (with a result or an error)."""

    future: Any  # distributed.Future (not imported until a run)


_Event = _Started | _Finished


class _Stopped(Exception):
    """SIGINT or SIGTERM stopped the partitions' wait; the run says so once its cluster is
    closed (:meth:`Driver._stopped`)."""

    def __init__(self, sig: int) -> None:
        super().__init__(sig)
        self.sig = sig


class Driver:
    """The driver's part of one run: folder, partitions, cluster, progress, manifest."""

    def __init__(self, p: Plan, env: Environment, stats: RunStats, ext: str) -> None:
        self.p = p
        self.env = env
        self.stats = stats
        self.settings = p.settings
        self.ext = ext
        self.folder = Path(p.output).absolute()
        self.input = os.path.abspath(input_path(p.settings))
        self.identity = {**plan_identity(p), "engine": "dask"}
        self.done: dict[str, Any] | None = None  # a completed run of this job, found
        self.earlier: str | None = None
        self._events: queue.Queue[_Event] = queue.Queue()
        self._pending: set[str] = set()  # the keys of the partitions' futures not finished
        self._running: set[int] = set()  # partitions started and not finished
        self._kept: set[int] = set()  # partitions whose part is committed and counted
        self._first_failures: dict[int, list[Any]] = {}
        # Per source, failed attempts in a row over the partitions, in the order they finished
        # (a partition counts from 0: a source down over many small partitions is down all
        # the same); and the finished parts in which a source never answered, set aside.
        self._streaks: dict[str, int] = {}
        self._dead: dict[int, PartResult] = {}

    def lock(self) -> RunLock:
        """The lock on the output folder (taken by the lifecycle around :meth:`run`)."""
        return RunLock(Path(self.p.output))

    # -- before anything is written ---------------------------------------------------------

    def run(self) -> None:
        previous = self._take_folder()
        if self.done is not None:
            self.stats.restore(manifest_counters(self.done))
            return
        # The input as a whole (header, first rows, --min-ids) and the sources, as a local run
        # checks them: here, once, before any worker starts.
        fmt = input_format(self.settings)
        fields = self._read_input(fmt)
        asyncio.run(self._check_sources())
        self._clean_staged()
        header_lines = idmod.header_lines(fmt, self.settings.input.header)
        skip_first = fmt in ("csv", "tsv") and header_lines == 1  # not under --no-header
        cluster = Cluster(self.settings, handle_signals=self.env.handle_signals)
        stopped: _Stopped | None = None
        try:
            cluster.start()  # before the folder: an unreachable scheduler leaves nothing behind
            self.folder.mkdir(exist_ok=True)
            size = self.settings.run.partition_size or (
                previous["partition_size"]
                if previous
                else choose_partition_size(
                    max(idmod.count_lines(self.input) - header_lines, 0), cluster.workers()
                )
            )
            if previous and previous["partition_size"] != size:
                raise LeftoverStateError(
                    f"the stopped run in {self.folder} used --partition-size "
                    f"{previous['partition_size']}, now {size}; rerun it with the same size, or "
                    "pass --overwrite to start over"
                )
            parts, lines = split_lines(self.input, size, skip_first)
            self.stats.total = max(lines - header_lines, 0)
            write_atomically(
                str(self.folder / MARKER),
                orjson.dumps(
                    {
                        "identity": self.identity,
                        "partition_size": size,
                        "partitions": len(parts),
                        "input_stamp": file_stamp(self.input),
                    }
                ),
            )
            todo = self._skip_complete(parts)
            try:
                self._score(
                    cluster,
                    todo,
                    fmt,
                    header=header_line(self.input) if skip_first else None,
                    header_at=text_header_at(self.input) if fmt == "text" and header_lines else 0,
                    fields=fields,
                )
            except _Stopped as exc:
                stopped = exc
        finally:
            cluster.close()
            if cluster.local:  # its workers are gone: what they were writing is garbage
                self._clean_staged()
        if stopped is not None:
            raise self._stopped(stopped.sig, parts, local=cluster.local)
        if self.settings.output.merge:
            merge_parts(self.folder, [part.index for part in parts], self.ext, self.p)
        write_success(
            self.folder,
            self.p,
            self.stats,
            parts,
            size=size,
            suffix=self.ext,
            input_file=self.input,
            identity=self.identity,
        )
        self._clean_staged()

    def _take_folder(self) -> dict[str, Any] | None:
        """Check the output folder; the stopped run's record when ``--resume`` continues one.

        Sets :attr:`done` when ``--resume`` finds this job complete (a no-op).
        """
        s = self.settings.output
        folder = self.folder
        if not folder.exists():
            return None
        success, marker = folder / SUCCESS, folder / MARKER
        if success.exists() and not s.overwrite:
            record = read_json(success)
            if not s.resume:
                raise OutputExistsError(
                    f"output folder {self.p.output} holds a completed run (its {SUCCESS}); pass "
                    "--overwrite to replace it or choose another -o"
                )
            self._same_job(record, "completed")
            self.done = record
            return None
        if marker.exists() and not s.overwrite:
            if not s.resume:
                raise LeftoverStateError(
                    f"a stopped run left parts in {self.p.output}; rerun with --resume to "
                    "continue it, or --overwrite to start over"
                )
            stopped: dict[str, Any] = read_json(marker)
            self._same_job(stopped, "stopped")
            return stopped
        ours = [f for f in folder.iterdir() if is_ours(f.name)]
        others = [f for f in folder.iterdir() if not is_ours(f.name)]
        if ours and not s.overwrite:  # parts without a marker: not a run we can continue
            raise OutputExistsError(
                f"output folder {self.p.output} holds part files; pass --overwrite to replace "
                "them or choose another -o"
            )
        if others and not s.overwrite and not s.resume:
            raise OutputExistsError(
                f"output folder {self.p.output} holds other files ({others[0].name}); name a "
                "new or empty folder"
            )
        for path in ours:
            path.unlink()
        return None

    def _same_job(self, record: dict[str, Any], what: str) -> None:
        """A continued or completed run must be this job, over the same input file."""
        stored, now = identity_text(record.get("identity")), identity_text(self.identity)
        error = OutputExistsError if what == "completed" else LeftoverStateError
        if stored != now:
            raise error(
                f"the {what} run in {self.p.output} used another {difference(stored, now)}; "
                "rerun it with the same arguments, or pass --overwrite to start over"
            )
        if record.get("input_stamp") != file_stamp(self.input):
            raise error(
                f"{self.input} has changed since the {what} run in {self.p.output}; pass "
                "--overwrite to start over"
            )

    def _read_input(self, fmt: str) -> tuple[str, ...] | None:
        """Read the input as a whole as a local run does (header, first rows, --min-ids, the
        columns of a source of kind input); the fields that source chose its columns from.

        Every partition is given those fields: a JSON-lines partition's own first line with an
        ID may have others, and its reader would choose them only once it reached that line.
        """
        settings = self.settings
        sources = self._probe_sources()
        id_name = idmod.id_key(fmt, settings.input.id_column, settings.input.id_field)
        choose = input_values(sources, id_name, self.p.models.feature_names)
        fields: list[tuple[str, ...]] = []

        def recording(header: Sequence[str], what: str) -> Sequence[str]:
            assert choose is not None
            fields.append(tuple(header))
            return choose(header, what)

        with open(self.input, "rb") as stream:
            read_input(settings, stream, None if choose is None else recording)
        return fields[0] if fields else None

    def _probe_sources(self) -> list[Source]:
        """The run's sources, one request at a time: what the driver reads the input with and
        checks the sources with before any partition starts."""
        limits = Limits(concurrency=1, rate_limit=0, observe=lambda name, seconds: None)
        return build_sources(self.settings.sources, limits, self.settings.fetch, RunStats())

    async def _check_sources(self) -> None:
        sources = self._probe_sources()
        async with contextlib.AsyncExitStack() as stack:
            await open_sources(self.p.models, sources, stack)

    def _clean_staged(self) -> None:
        """Temporary files of attempts that died (a worker killed, a driver stopped)."""
        if not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            if path.name.startswith(".") and path.name.endswith((".tmp", ".partial")):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _skip_complete(self, parts: list[Partition]) -> list[Partition]:
        """The partitions still to run; the counts of those a stopped run completed."""
        todo = []
        earlier = RunStats()
        for part in parts:
            done = self._committed(part)
            if done is None:
                todo.append(part)
            else:
                earlier.merge(done)
                self._kept.add(part.index)
        self.stats.merge(earlier)
        self.stats.resumed_from = earlier.done
        return todo

    def _committed(self, part: Partition) -> RunStats | None:
        """The counts of a partition whose part is committed in the folder (``--resume`` keeps
        it), or None: no part, or one written while a source was down (run again)."""
        name = part_name(part.index, self.ext)
        record = read_json(self.folder / done_name(name), missing_ok=True)
        if (
            (self.folder / name).exists()
            and record is not None
            and record.get("first_line") == part.first_line
            and record.get("last_line") == part.last_line
            and not record.get("dead")  # its last IDs failed because a source was down
        ):
            done = RunStats()
            done.restore(record["counters"])
            return done
        return None

    # -- the run --------------------------------------------------------------------------------

    def _score(
        self,
        cluster: Cluster,
        todo: list[Partition],
        fmt: str,
        *,
        header: bytes | None,
        header_at: int,
        fields: tuple[str, ...] | None,
    ) -> None:
        settings = self.settings
        p = self.p
        job = Job(
            run_id=p.run_id,
            settings=for_workers(settings),
            models=tuple(
                (m.name, Path(m.info.booster_file).read_bytes(), m.info.version)
                for m in p.models.members
            ),
            columns=p.columns,
            input_path=self.input,
            input_format=fmt,
            header=header,
            folder=str(self.folder),
            fmt=p.fmt,
            gzip=p.gzip,
            ext=self.ext,
            topic=f"batchscore-{p.run_id}",
            header_at=header_at,
            input_fields=fields,
        )
        progress = choose(
            self.env.stderr,
            quiet=settings.run.quiet,
            interval=settings.run.progress_interval,
            is_tty=self.env.stderr_isatty,
        )
        client = cluster.client
        plugin = JobPlugin(job)
        try:
            client.register_plugin(plugin, name=plugin.name)
            client.subscribe_topic(job.topic, lambda event: self._events.put(_Started(event[1])))
            futures = {}
            for part in todo:
                future = client.submit(
                    run_partition,
                    plugin.name,
                    part,
                    key=f"batchscore-{p.run_id}-part-{part.index:05d}",
                    pure=False,
                )
                future.add_done_callback(lambda f: self._events.put(_Finished(f)))
                futures[future.key] = (future, part)
            try:
                self._wait(cluster, futures, progress)
            except BaseException:
                self._drop_dead()
                raise
        except (KeyboardInterrupt, Terminated) as exc:
            sig = signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM
            if self.env.handle_signals:
                leave_on_second_signal()
            # The partitions that started before the stop, though their news was still queued
            # (those that finished meanwhile are counted from the folder: _stopped).
            with contextlib.suppress(queue.Empty):
                while True:
                    if isinstance(event := self._events.get_nowait(), _Started):
                        self._on_started(event.message)
            what = (
                # Dask's close gives a worker's task a few seconds to end (then kills it).
                "the running partitions have a few seconds to finish their parts"
                if cluster.local
                else "leaving the cluster, where the running partitions go on"
            )
            progress.stopping(f"batchscore: stopping: {what} (again to stop at once)")
            raise _Stopped(sig) from None
        finally:
            progress.close(self._view(cluster))
            with contextlib.suppress(Exception):
                client.unregister_worker_plugin(plugin.name)
            # The summary names the first failed IDs in input order, whatever order the
            # partitions finished in.
            self.stats.first_failures = [
                record
                for index in sorted(self._first_failures)
                for record in self._first_failures[index]
            ][:FIRST_FAILURES]

    def _wait(
        self,
        cluster: Cluster,
        futures: dict[str, tuple[Any, Partition]],
        progress: ProgressDisplay,
    ) -> None:
        from distributed import KilledWorker

        pending = self._pending = set(futures)
        while pending:
            stop = swallowed_stop()  # a Ctrl-C that Python dropped still stops the run
            if stop is not None:
                raise stop
            try:
                event = self._events.get(timeout=0.5)
            except queue.Empty:
                progress.update(self._view(cluster))
                continue
            if isinstance(event, _Started):
                self._on_started(event.message)
            elif event.future.key in pending:
                item = event.future
                pending.discard(item.key)
                part = futures[item.key][1]
                try:
                    result: PartResult = item.result()
                except KilledWorker:
                    raise SourceDownError(
                        f"Dask workers died {allowed_failures()} times running partition "
                        f"{part.index} (lines {part.first_line:,}-{part.last_line:,}): out of "
                        "memory, or killed; rerun with --resume"
                    ) from None
                except Exception as exc:
                    raise SourceDownError(
                        f"the Dask cluster lost partition {part.index} ({type(exc).__name__}: "
                        f"{exc}); rerun with --resume"
                    ) from None
                self._running.discard(part.index)
                if result.status != ExitStatus.OK:
                    raise with_status(result.message, result.status)
                self._accept(result)
            progress.update(self._view(cluster))
        # The run went through: parts that ended with a source failing are its outcome too.
        for result in self._dead.values():
            self._count(result)
        self._dead.clear()

    def _accept(self, result: PartResult) -> None:
        """A finished part: counted; or, when a source was failing as it ended, set aside until
        the run completes (a stopped run removes it, so that ``--resume`` fetches it again).
        Raises SourceDownError when a source's failures in a row reach ``down_after``."""
        if left_failing(result.health):
            self._dead[result.index] = result
        else:
            self._count(result)
        for name, (answers, failures, reason) in sorted(result.health.items()):
            streak = failures if answers else self._streaks.get(name, 0) + failures
            self._streaks[name] = streak
            if streak >= self.settings.fetch.down_after:
                raise SourceDownError(down_message(name, streak, reason))

    def _count(self, result: PartResult) -> None:
        self.stats.merge(result.stats)
        self._kept.add(result.index)
        self._first_failures[result.index] = result.stats.first_failures

    def _drop_dead(self) -> None:
        """The run stops: the parts set aside go (the part first: a part without its done
        record is run again), so that their IDs are fetched again by ``--resume``."""
        for index in sorted(self._dead):
            name = part_name(index, self.ext)
            for path in (name, errors_name(index), done_name(name)):
                with contextlib.suppress(FileNotFoundError):
                    (self.folder / path).unlink()
        self._dead.clear()

    def _on_started(self, msg: dict[str, Any]) -> None:
        index = int(msg["part"])
        if f"batchscore-{self.p.run_id}-part-{index:05d}" in self._pending:  # not a late event
            self._running.add(index)

    def _view(self, cluster: Cluster) -> RunStats:
        """The run's counts as the display shows them: the committed parts' alone (a running
        partition's rows are lost if the run stops now, so they are not shown as done)."""
        return replace(self.stats, workers=cluster.workers())

    def _stopped(self, sig: int, parts: list[Partition], *, local: bool) -> InterruptedRun:
        """The stop, said once the cluster is closed: what is kept, what ``--resume`` runs.

        A partition may have committed its part after the driver stopped listening (as its
        workers stopped): counted too, so that the summary is the folder's as ``--resume``
        reads it.
        """
        for part in parts:
            if part.index not in self._kept and (late := self._committed(part)) is not None:
                late.resumed_from = late.resumed_read = 0  # this run's work
                self.stats.merge(late)
                self._kept.add(part.index)
        kept, left = len(self._kept), len(parts) - len(self._kept)
        running = len(self._running - self._kept)
        if kept:
            outcome = f"{counted(self.stats.done, 'ID')} kept in {counted(kept, 'part')}; "
            redo = f"the other {counted(left, 'partition')}"
        else:
            outcome = "no part was complete, nothing kept; "
            redo = f"its {counted(left, 'partition')}"
        if running:
            that = f"the {running:,} that {'was' if running == 1 else 'were'} running"
            if local:
                redo += f" ({that} {'starts' if running == 1 else 'start'} over)"
            else:  # a task on an existing cluster runs to its end: its part may be kept
                redo += f" ({that} may still finish on the cluster)"
        return InterruptedRun(
            sig,
            self.stats.done,
            outcome + f"rerun the same command with --resume to run {redo}",
        )


__all__ = ["Driver", "refuse", "start"]
