"""The errors file: one JSON line per ID that could not be scored, in input order; and read
back, the input of a retry (``--from-errors``)."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from typing import Any

import orjson

from batchscore.chunk import ErrorRecord
from batchscore.errors import UsageError
from batchscore.idrows import IdRow, InputItem, InputProblem
from batchscore.sinks.files import ByteTarget

RECORD_FIELDS = ("id", "line", "stage", "source", "reason")
"""Fields every errors-file record has (``status``, ``attempts`` and ``keep`` besides)."""


class ErrorLog:
    """Writes error records to a target, or only counts them when there is none."""

    def __init__(self, target: ByteTarget | None, keep: Sequence[str] = ()) -> None:
        self.target = target
        self.keep = tuple(keep)  # the --keep column names: a record's "keep" object

    async def open(self, resume_at: int | None = None) -> None:
        """Open the target (continuing a stopped run's file at ``resume_at``)."""
        if self.target is not None:
            await self.target.open(resume_at)

    async def sync(self) -> int:
        """Make the records written so far durable; return the file's length."""
        return await self.target.sync() if self.target is not None else 0

    async def write(self, records: Sequence[ErrorRecord]) -> None:
        """Append records as JSON lines."""
        if self.target is not None and records:
            await self.target.write(b"".join(map(self._line, records)))

    def _line(self, record: ErrorRecord) -> bytes:
        fields = asdict(record)
        kept = fields.pop("keep")
        if kept is not None and self.keep:
            fields["keep"] = dict(zip(self.keep, kept, strict=True))
        return orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)

    async def commit(self) -> None:
        """Make the errors file final."""
        if self.target is not None:
            await self.target.commit()

    async def abort(self) -> None:
        """Leave it for ``--resume``."""
        if self.target is not None:
            await self.target.abort()


def read_errors_file(
    stream: Iterable[bytes],
    keep: tuple[str, ...],
    reasons: tuple[str, ...] = (),
    left_out: Counter[str] | None = None,
) -> Iterator[InputItem]:
    """The input of ``--from-errors``: one row per record of an errors file, numbered by its
    line in that file (from 1, as an editor shows them), with the ``keep`` columns the record
    carries (its ``keep`` object, written when the failed run had ``--keep``).

    A record of stage ``input`` (an unreadable line, an ID too long) cannot be retried: it is
    an input problem again, with its reason, so the retry's errors file still lists it.  The
    first record is checked at once: a file that is not an errors file, or whose records do not
    carry a ``--keep`` column, is a usage error before anything is fetched.

    ``reasons`` (``--reason``): only records of those reasons are retried; the others are left
    out, counted by reason in ``left_out`` (the summary says so: nothing vanishes unsaid).
    """
    items = _error_items(stream, keep)
    if reasons:
        items = _of_reasons(items, frozenset(reasons), Counter() if left_out is None else left_out)
    first = next(items, None)
    if first is None:
        return iter(())
    item, record = first
    if record is None or not all(name in record for name in RECORD_FIELDS):
        raise UsageError(
            "the --from-errors file is not a batchscore errors file (its first record needs "
            f"the fields {', '.join(RECORD_FIELDS)}); pass the OUTPUT.errors.jsonl of a run"
        )
    carried = record.get("keep")
    carried = carried if isinstance(carried, dict) else {}
    missing = [name for name in keep if name not in carried]
    if missing and record.get("stage") != "input":
        shown = ", ".join(carried) or "none"
        raise UsageError(
            f"the --from-errors records carry no kept column '{missing[0]}' (they carry: "
            f"{shown}); a run keeps in its errors file the columns it was given with --keep"
        )
    return itertools.chain([item], (item for item, _ in items))


def _of_reasons(
    items: Iterator[tuple[InputItem, dict[str, Any] | None]],
    reasons: frozenset[str],
    left_out: Counter[str],
) -> Iterator[tuple[InputItem, dict[str, Any] | None]]:
    for item, record in items:
        reason = record.get("reason") if record is not None else None
        if record is not None and isinstance(reason, str) and reason not in reasons:
            left_out[reason] += 1
            continue
        yield item, record


def _error_items(
    stream: Iterable[bytes], keep: tuple[str, ...]
) -> Iterator[tuple[InputItem, dict[str, Any] | None]]:
    """Each non-blank line's input item, with its record (None for a line that is no record)."""
    for number, raw in enumerate(stream, start=1):
        if not raw.strip():
            continue
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            yield InputProblem(number, None, "invalid_json"), None
            continue
        if not isinstance(record, dict):
            yield InputProblem(number, None, "invalid_json"), None
            continue
        ident = record.get("id")
        if record.get("stage") == "input":  # an input problem again, with its reason
            shown = ident if isinstance(ident, str) and ident else None
            yield InputProblem(number, shown, str(record.get("reason", "input"))), record
        elif not isinstance(ident, str) or not ident:
            yield InputProblem(number, None, "missing_id"), record
        else:
            carried = record.get("keep")
            values = carried if isinstance(carried, dict) else {}
            yield IdRow(number, ident, tuple(values.get(name) for name in keep)), record
