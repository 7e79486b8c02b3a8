"""Streaming ID readers: plain text, CSV with a header, JSON lines.

Each reader yields, per input row, either an :class:`IdRow` or an :class:`InputProblem`, in
input order, never holding more than one row.  Line numbers count from 1, blank lines
included, as an editor shows them.  Reading is synchronous; the pipeline pulls chunks of rows
in a worker thread so the event loop never waits on a disk or a pipe.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import orjson

from batchscore.errors import UsageError

MAX_ID_LENGTH = 1024
_BOM = b"\xef\xbb\xbf"


class IdRow(NamedTuple):
    """One ID to score, with the input columns to carry through to the output (text from CSV;
    JSON values as parsed from JSON lines, so a JSON-lines output gives them back unchanged).

    (Named tuples, not dataclasses: one is made per input line, and a tuple is the cheapest
    typed object Python makes.)
    """

    line: int
    id: str
    keep: tuple[Any, ...] = ()


class InputProblem(NamedTuple):
    """An input row that cannot be scored (invalid UTF-8, an over-long or missing ID)."""

    line: int
    id: str | None
    reason: str


InputItem = IdRow | InputProblem


def detect_format(path: str, given: str | None) -> str:
    """The input format: ``given`` if set, else from the extension, else plain text."""
    if given:
        return given
    lower = path.lower()
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    return "text"


def _check_id(line: int, value: str) -> InputItem | None:
    if len(value) > MAX_ID_LENGTH:
        return InputProblem(line, value[:64] + "...", "id_too_long")
    return None


def _physical_lines(stream: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """Number the raw lines of ``stream``, stripping a leading UTF-8 BOM."""
    for number, raw in enumerate(stream, start=1):
        yield number, (raw[3:] if number == 1 and raw.startswith(_BOM) else raw)


def read_text(stream: Iterable[bytes]) -> Iterator[InputItem]:
    """One ID per line; blanks skipped; whitespace, CRLF and a BOM stripped."""
    for number, raw in _physical_lines(stream):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield InputProblem(number, None, "invalid_utf8")
            continue
        value = text.strip()
        if not value:
            continue
        yield _check_id(number, value) or IdRow(number, value)


def read_csv(stream: Iterable[bytes], id_column: str, keep: tuple[str, ...]) -> Iterator[InputItem]:
    """CSV with a header row; the ID from ``id_column``, ``keep`` columns carried through.

    The header is read and checked at once (a missing column is a usage error before any
    output is written); the rows are then read lazily.
    """
    problems: list[InputProblem] = []
    first_line: list[int | None] = [None]  # where the record being read starts (it may span lines)

    def decoded() -> Iterator[str]:
        for number, raw in _physical_lines(stream):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                problems.append(InputProblem(number, None, "invalid_utf8"))
                continue
            if first_line[0] is None:
                first_line[0] = number
            yield text

    reader = csv.reader(decoded())
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise UsageError(f"the input's CSV header cannot be read ({exc}); check the file") from None
    if header is None:
        return iter(())
    first_line[0] = None
    header = [h.strip() for h in header]
    missing = [c for c in (id_column, *keep) if c not in header]
    if missing:
        raise UsageError(
            f"the input CSV has no column '{missing[0]}' (columns: {', '.join(header)}); "
            f"pass --id-column / --keep with one of those"
        )
    id_index = header.index(id_column)
    keep_index = [header.index(c) for c in keep]

    def rows() -> Iterator[InputItem]:
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error:  # a bare CR outside quotes, a NUL: this record is unreadable
                yield from problems
                problems.clear()
                number, first_line[0] = first_line[0] or 0, None
                yield InputProblem(number, None, "invalid_csv")
                continue
            yield from problems
            problems.clear()
            number, first_line[0] = first_line[0] or 0, None
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) <= max((id_index, *keep_index)):
                yield InputProblem(number, None, "short_row")
                continue
            value = row[id_index].strip()
            if not value:
                yield InputProblem(number, None, "missing_id")
                continue
            yield _check_id(number, value) or IdRow(
                number, value, tuple(row[i] for i in keep_index)
            )
        yield from problems

    return rows()


ID_FIELD_PROBE = 100
"""Non-blank JSON lines read before a wrong ``--id-field`` is told from missing IDs."""


def read_jsonl(
    stream: Iterable[bytes], id_field: str, keep: tuple[str, ...]
) -> Iterator[InputItem]:
    """One JSON object per line; the ID from ``id_field`` (a string or an integer).

    Like the CSV header, the field is checked at once (before any output is written): the
    lines are read up to the first one that has ``id_field``.  If the first
    :data:`ID_FIELD_PROBE` non-blank lines (or all, if fewer) are objects none of which has it,
    the field is wrong, not the data: a UsageError naming the fields seen, instead of a
    ``missing_id`` record for every line of the file.  The rest is read lazily.
    """
    items = _jsonl_items(stream, id_field, keep)
    held: list[InputItem] = []
    objects = 0
    fields: dict[str, None] = {}  # the keys seen, in order
    found = False
    for item, keys in items:
        held.append(item)
        if keys is None:  # a line with the field: the field is right
            found = True
            break
        if isinstance(item, InputProblem) and item.reason == "missing_id":
            objects += 1
            fields.update(dict.fromkeys(keys))
        if len(held) >= ID_FIELD_PROBE:
            break
    if not found and objects:  # objects were read (not only bad lines), none with the field
        names = list(fields)
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "") or "no fields"
        raise UsageError(
            f"no line of the input has the field '{id_field}' (the first {len(held)} non-blank "
            f"lines have: {shown}); pass --id-field with the field that holds the ID"
        )
    return itertools.chain(held, (item for item, _ in items))


def _jsonl_items(
    stream: Iterable[bytes], id_field: str, keep: tuple[str, ...]
) -> Iterator[tuple[InputItem, tuple[str, ...] | None]]:
    """Each non-blank line's item, with the keys of its object when it lacks ``id_field``
    (None when it has it; empty for a line that is no object)."""
    for number, raw in _physical_lines(stream):
        if not raw.strip():
            continue
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            yield InputProblem(number, None, "invalid_utf8"), ()
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            yield InputProblem(number, None, "invalid_json"), ()
            continue
        if not isinstance(obj, dict):
            yield InputProblem(number, None, "invalid_json"), ()
            continue
        if id_field not in obj:
            yield InputProblem(number, None, "missing_id"), tuple(obj)
            continue
        yield _jsonl_item(number, obj, id_field, keep), None


def _jsonl_item(
    number: int, obj: dict[str, object], id_field: str, keep: tuple[str, ...]
) -> InputItem:
    """The item of one JSON object that has ``id_field``."""
    value = obj.get(id_field)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return InputProblem(number, None, "missing_id")
    text = str(value).strip()
    if not text:
        return InputProblem(number, None, "missing_id")
    return _check_id(number, text) or IdRow(number, text, tuple(obj.get(k) for k in keep))


def read_ids(
    stream: Iterable[bytes], fmt: str, id_column: str, id_field: str, keep: tuple[str, ...]
) -> Iterator[InputItem]:
    """Dispatch to the reader for ``fmt``."""
    if fmt == "csv":
        return read_csv(stream, id_column, keep)
    if fmt == "jsonl":
        return read_jsonl(stream, id_field, keep)
    if keep:
        raise UsageError("--keep needs a CSV or JSON-lines input; plain text has only IDs")
    return read_text(stream)


def count_lines(path: str) -> int:
    """A fast count of newline-terminated lines (the progress bar's total); blank lines included."""
    count = 0
    last = b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (0 if last == b"\n" else 1)


def stable_hash(value: str) -> int:
    """A hash of an ID that is the same on every machine and run (for ``--shard``)."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "big")


__all__ = [
    "IdRow",
    "InputItem",
    "InputProblem",
    "count_lines",
    "detect_format",
    "read_ids",
    "stable_hash",
]
