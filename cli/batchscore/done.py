"""The record a completed ``--resume`` run leaves beside its output (``.NAME.done``), so that
the same job run again is a no-op instead of "already exists"; and what a usable record (or
committed counters) looks like.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any

import orjson

from batchscore.atomic import write_atomically
from batchscore.errors import (
    OutputExistsError,
)
from batchscore.identity import difference, identity_text

log = logging.getLogger("batchscore")


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
        if not _usable_record(record):
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


def _usable_record(record: Any) -> bool:
    """Whether a done record has every field, each of its type (a hand-edited or truncated one
    is refused as damaged, never half-read)."""
    if not isinstance(record, dict):
        return False
    stamps_ok = all(
        stamp is None
        or (isinstance(stamp, list) and len(stamp) == 2 and all(is_count(v) for v in stamp))
        for stamp in (record.get("input"), record.get("output"))
    )
    return (
        isinstance(record.get("identity"), str)
        and isinstance(record.get("config", ""), str)
        and isinstance(record.get("finished"), str)
        and usable_counters(record.get("counters"))
        and stamps_ok
    )


def is_count(value: Any) -> bool:
    """A non-negative integer (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def usable_counters(counters: Any) -> bool:
    """Counters as :meth:`~batchscore.report.RunStats.counters` writes them: counts, the
    failures by reason, and the histograms of the rows written."""
    if not isinstance(counters, dict):
        return False
    for key, value in counters.items():
        if key == "failed":
            if not isinstance(value, dict) or not all(map(is_count, value.values())):
                return False
        elif key == "distributions":
            if not _usable_distributions(value):
                return False
        elif not is_count(value):
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
