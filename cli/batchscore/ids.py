"""Streaming ID readers: plain text, CSV or TSV (with a header line, or columns numbered),
JSON lines.

Each reader yields, per input row, either an :class:`IdRow` or an :class:`InputProblem`, in
input order, never holding more than one row.  Line numbers count from 1, blank lines
included, as an editor shows them.  Reading is synchronous; the pipeline pulls chunks of rows
in a worker thread so the event loop never waits on a disk or a pipe.
"""

from __future__ import annotations

import csv
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from batchscore import jsontext
from batchscore.configtools import suggest
from batchscore.errors import UsageError

MAX_ID_LENGTH = 1024
_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_NOT_UTF8 = (
    "is not UTF-8 (a Latin-1 or Windows-1252 export?); convert the file, e.g. with "
    "iconv -f WINDOWS-1252 -t UTF-8"
)


class IdRow(NamedTuple):
    """One ID to score, with the input columns to carry through to the output (text from CSV;
    JSON values as parsed from JSON lines, so a JSON-lines output gives them back unchanged),
    and the raw feature values an input source reads from the row (``values``, likewise).

    (Named tuples, not dataclasses: one is made per input line, and a tuple is the cheapest
    typed object Python makes.)
    """

    line: int
    id: str
    keep: tuple[Any, ...] = ()
    values: tuple[Any, ...] = ()


ChooseValues = Callable[[Sequence[str], str], Sequence[str]]
"""Given an input's columns (a CSV header; a JSON-lines input's first object's fields) and how
to name them in a message (``the input CSV``), the columns whose values each :class:`IdRow`
carries in ``values`` (an input source's features); raises a UsageError for a column the input
lacks."""


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
    if lower.endswith(".tsv"):
        return "tsv"
    if lower.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    return "text"


def _check_id(line: int, value: str) -> InputItem | None:
    if len(value) > MAX_ID_LENGTH:
        return InputProblem(line, value[:64] + "...", "id_too_long")
    return None


def _physical_lines(stream: Iterable[bytes], start: int = 1) -> Iterator[tuple[int, bytes]]:
    """Number the raw lines of ``stream`` from ``start``, stripping a leading UTF-8 BOM.

    A UTF-16 input (Excel's "Unicode text") is refused at its first line: its ASCII IDs are
    valid UTF-8 with a NUL between characters, so no line would fail, and none would be found.
    ``start`` > 1: the stream is a later part of a file (a partition), which has no first line.
    A read that fails (a disk error, a descriptor that cannot be read) is a UsageError naming
    the line it was after.
    """
    number = start - 1
    try:
        for number, raw in enumerate(stream, start=start):
            if number == 1 and raw.startswith(_UTF16_BOMS):
                raise UsageError(
                    "the input is UTF-16 (it starts with a UTF-16 byte order mark); convert it "
                    "to UTF-8 first, e.g. iconv -f UTF-16 -t UTF-8"
                )
            yield number, (raw[3:] if number == 1 and raw.startswith(_BOM) else raw)
    except OSError as exc:
        raise UsageError(
            f"the input cannot be read after line {number:,}: {exc.strerror or exc}"
        ) from None


def read_text(
    stream: Iterable[bytes], header: bool = False, start: int = 1, whole: bool = True
) -> Iterator[InputItem]:
    """One ID per line; blanks skipped; whitespace, CRLF and a BOM stripped.

    ``header``: the first non-blank line is a header (``cut -d, -f1 file.csv``), not an ID; it
    is skipped, and the lines keep their numbers in the file.  ``start``, ``whole``: see
    :func:`read_ids`.
    """
    items = _text_items(stream, header, start)
    if not whole:
        return items
    return refuse_uniform_failure(
        items,
        "lines",
        {
            "invalid_utf8": _NOT_UTF8,
            "id_too_long": f"holds an ID over {MAX_ID_LENGTH:,} characters; is this a table? "
            "pass --input-format csv, tsv or jsonl",
        },
    )


def _text_items(stream: Iterable[bytes], header: bool, start: int = 1) -> Iterator[InputItem]:
    for number, raw in _physical_lines(stream, start):
        if header:
            if raw.strip():
                header = False
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield InputProblem(number, None, "invalid_utf8")
            continue
        value = text.strip()
        if not value:
            continue
        yield _check_id(number, value) or IdRow(number, value)


MAX_RECORD_LINES = 1000
"""Physical lines one CSV record may span (a quoted field may hold newlines); a quote still open
after this many lines is taken for a quote that was never closed."""


class _CsvLines:
    """The decoded lines ``csv.reader`` reads, numbered, with the lines of the record being
    read held back (at most :data:`MAX_RECORD_LINES`), so that a record that cannot be read
    gives back the lines after its first to be read again: no line silently vanishes into a
    quote that was never closed.

    Each reader gets a :meth:`feed` of its own (a reader that met an unreadable record is
    dropped, with its state); the feeds share the input and the lines given back.
    """

    def __init__(self, stream: Iterable[bytes], start: int, problems: list[InputProblem]) -> None:
        self._lines = _physical_lines(stream, start)
        self._problems = problems
        self._again: list[tuple[int, str]] = []  # lines to read again, the next one last
        self.record: list[tuple[int, str]] = []  # the lines of the record being read
        self.ended = False  # the input ran out (a record still open then was never closed)
        self.too_long = False  # the record being read reached MAX_RECORD_LINES lines

    def feed(self) -> Iterator[str]:
        """The lines for one reader: those given back first, then the input's.  It ends early
        (the reader sees the end of its input) when a record reaches its last line allowed."""
        record, again = self.record, self._again
        while again:
            if len(record) >= MAX_RECORD_LINES:
                self.too_long = True
                return
            line = again.pop()
            record.append(line)
            yield line[1]
        for number, raw in self._lines:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                self._problems.append(InputProblem(number, None, "invalid_utf8"))
                continue
            if len(record) >= MAX_RECORD_LINES:
                again.append((number, text))
                self.too_long = True
                return
            record.append((number, text))
            yield text
        self.ended = True

    def well_formed(self) -> bool:
        """Whether the record just read, which spans lines, is one strict CSV record.

        Records on one line are read leniently (``"5" screen"`` is ``5 screen"``), but a stray
        quote that joined lines (``C1,"5 inch`` and, lines later, ``C9,"x" y``) is how IDs
        vanish into a note: a record that spans lines must be well formed, its quotes paired.
        """
        try:
            for _ in csv.reader([text for _, text in self.record], strict=True):
                pass
        except csv.Error:
            return False
        return True

    def give_back(self) -> None:
        """Give back every line of the record just read, to be read again (by a new reader:
        :meth:`feed`): a first record looked at to count its fields, then read as data."""
        self._again.extend(reversed(self.record))
        self.record.clear()
        self.ended = self.too_long = False

    def read_again(self) -> int:
        """Give back the lines of the record being read but its first, to be read again as
        records of their own (by a new reader: :meth:`feed`); return the first's number."""
        first = self.record[0][0]
        self._again.extend(reversed(self.record[1:]))
        self.record.clear()
        self.ended = self.too_long = False
        return first


def read_csv(
    stream: Iterable[bytes],
    id_column: str,
    keep: tuple[str, ...],
    *,
    tsv: bool = False,
    values: ChooseValues | None = None,
    start: int = 1,
    whole: bool = True,
    header: bool = True,
) -> Iterator[InputItem]:
    """CSV (or TSV) with a header row; the ID from ``id_column``, ``keep`` columns carried
    through, and the cells of the columns ``values`` chooses from the header (as text).

    The header is read and checked at once (a missing column is a usage error before any
    output is written); the rows are then read lazily.  TSV is split on tabs and nothing
    else: a quote is data, as ``cut -f`` and PostgreSQL's ``COPY`` see it.

    ``header=False`` (``--no-header``): the first line is data, and the columns are named by
    their number from 1, as ``cut -f`` numbers them (``1``, ``2``, ...); the first record's
    fields say how many there are, and it is then read again as a row.

    A quoted field may hold newlines, as CSV allows, over at most :data:`MAX_RECORD_LINES`
    lines.  A record that cannot be read (a quote still open at the end of the input or after
    that many lines, a record over several lines whose quotes do not pair, a bare CR) is an
    ``invalid_csv`` problem at the line where it starts, and the lines after that one are read
    again as records of their own.
    """
    name = "TSV" if tsv else "CSV"
    problems: list[InputProblem] = []
    lines = _CsvLines(stream, start, problems)

    def new_reader() -> Iterator[list[str]]:
        if tsv:
            return csv.reader(lines.feed(), delimiter="\t", quoting=csv.QUOTE_NONE)
        return csv.reader(lines.feed())

    reader = new_reader()
    names: list[str] = []  # the columns' names (none known in a --no-header partition)
    if header or whole:  # a --no-header partition's columns were checked on the whole input
        first = _first_record(name, lines, reader, header)
        if first is None:
            return iter(()) if header else iter(list(problems))
        if header:
            lines.record.clear()
            names = [h.strip() for h in first]
        else:  # the first record is data: read again, by a new reader
            lines.give_back()
            reader = new_reader()
            names = [str(n) for n in range(1, len(first) + 1)]
        missing = [c for c in (id_column, *keep) if c not in names]
        if missing:
            if not header:
                raise _no_such_number(name, names, missing[0], missing[0] == id_column, first, tsv)
            raise _no_such_column(name, names, missing[0], missing[0] == id_column, tsv, reader)
    index: Callable[[str], int] = names.index if header else _column_number
    id_index = index(id_column)
    keep_index = [index(c) for c in keep]
    value_index = [index(c) for c in values(names, f"the input {name}")] if values else []
    last_index = max((id_index, *keep_index, *value_index))  # a shorter row is short

    def rows() -> Iterator[InputItem]:
        nonlocal reader
        record = lines.record
        while True:
            try:
                row = next(reader)
            except StopIteration:
                if not record:
                    break
                unreadable = True  # the input ended inside the record
            except csv.Error:  # a bare CR outside quotes
                unreadable = True
            else:  # a record ended by the end of its reader's input is a quote left open
                unreadable = (
                    lines.ended or lines.too_long or (len(record) > 1 and not lines.well_formed())
                )
            if problems:
                yield from problems
                problems.clear()
            if unreadable:
                yield InputProblem(lines.read_again(), None, "invalid_csv")
                reader = new_reader()
                continue
            number = record[0][0]
            record.clear()
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) <= last_index:
                yield InputProblem(number, None, "short_row")
                continue
            value = row[id_index].strip()
            if not value:
                yield InputProblem(number, None, "missing_id")
                continue
            yield _check_id(number, value) or IdRow(
                number,
                value,
                tuple(row[i] for i in keep_index),
                tuple(map(row.__getitem__, value_index)) if value_index else (),
            )
        yield from problems

    columns = f"{len(names)} ({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})"
    if not whole:
        return rows()
    items = refuse_uniform_failure(
        rows(),
        "rows",
        {
            "missing_id": f"has an empty '{id_column}' column; pass --id-column with the column "
            "that holds the ID",
            "short_row": f"has fewer fields than the {'header' if header else 'first line'}'s "
            f"{columns}; "
            + (
                "is the file tab-separated? (TSV is split on tabs only)"
                if tsv
                else "is the delimiter a comma? pass --input-format tsv for tabs"
            ),
            "invalid_csv": f"cannot be read as {name}; check the file and --input-format",
            "invalid_utf8": _NOT_UTF8,
        },
    )
    if not header:
        return items
    return _refuse_an_id_as_header(name, names, id_column, tsv, items)


def _column_number(column: str) -> int:
    """The index of a column named by its number from 1 (``--no-header``)."""
    return int(column) - 1


def _first_record(
    name: str, lines: _CsvLines, reader: Iterator[list[str]], header: bool
) -> list[str] | None:
    """The input's first record (its header, or under ``--no-header`` its first row that is
    not blank), read whole or refused: a usage error if it cannot be read."""
    what = "header" if header else "first line"
    while True:
        try:
            first = next(reader, None)
        except csv.Error as exc:
            raise UsageError(
                f"the input's {name} {what} cannot be read ({exc}); check the file"
            ) from None
        if first is not None and (lines.ended or lines.too_long):
            raise UsageError(
                f"the input's {name} {what} opens a quote that is never closed; check the file"
            )
        if header or first is None or any(cell.strip() for cell in first):
            return first
        lines.record.clear()  # a blank line before the first row: nothing to read again


def _refuse_an_id_as_header(
    name: str, header: list[str], id_column: str, tsv: bool, items: Iterator[InputItem]
) -> Iterator[InputItem]:
    """A header whose ID column is named like the IDs below it (``--id-column C000858`` over
    ``C000859``) is a first row of data: read as a header it would vanish unscored.  Refused
    (exit 2) before anything is fetched."""
    first = next(items, None)
    if first is None:
        return iter(())
    if isinstance(first, IdRow) and _same_shape([id_column], [first.id]):
        raise _data_as_header(
            name,
            header,
            header.index(id_column) + 1,
            f": --id-column {id_column} is one of its values, and that row would not be scored",
        )
    return itertools.chain([first], items)


def _data_as_header(name: str, header: list[str], id_number: int, why: str) -> UsageError:
    """A first line that is data, not a header: said so, with the way to read it as data
    (``--no-header``, the IDs' column by its number: ``id_number``, the likeliest one)."""
    shown = ", ".join(header[:4]) + (", ..." if len(header) > 4 else "")
    return UsageError(
        f"the input {name}'s first line ({shown}) looks like data, not a header (it has the "
        f"shape of the line below it){why}; if the file has no header line, pass --no-header "
        f"--id-column {id_number} (its columns are then numbered from 1, as cut -f numbers "
        "them; --keep takes numbers too), or add a header line naming the columns"
    )


ID_FIELD_PROBE = 100
"""Non-blank JSON lines read before a wrong ``--id-field`` is told from missing IDs."""


def read_jsonl(
    stream: Iterable[bytes],
    id_field: str,
    keep: tuple[str, ...],
    values: ChooseValues | None = None,
    start: int = 1,
    whole: bool = True,
) -> Iterator[InputItem]:
    """One JSON object per line; the ID from ``id_field`` (a string or an integer).  The
    fields ``values`` chooses from the first line that has ``id_field`` are carried as parsed
    (a line without one of them carries None: missing).

    Like the CSV header, the field is checked at once (before any output is written): the
    lines are read up to the first one that has ``id_field``.  If the first
    :data:`ID_FIELD_PROBE` non-blank lines (or all, if fewer) are objects none of which has it,
    the field is wrong, not the data: a UsageError naming the fields seen, instead of a
    ``missing_id`` record for every line of the file.  The rest is read lazily.
    """
    items = _jsonl_items(stream, id_field, keep, values, start)
    if not whole:
        return (item for item, _ in items)
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
    if values is not None and not found and len(held) >= ID_FIELD_PROBE:
        # The input source's columns are the fields of the first line with an ID: they must
        # be known before the first chunk is read.
        raise UsageError(
            f"none of the first {len(held)} non-blank lines of the input is a JSON object with "
            f"the field '{id_field}', so the input source cannot tell its columns; is the "
            "input JSON lines? (--input-format, --id-field)"
        )
    return refuse_uniform_failure(
        itertools.chain(held, (item for item, _ in items)),
        "non-blank lines",
        {
            "invalid_json": "is not a JSON object; is the input JSON lines? (--input-format)",
            "missing_id": f"has no usable ID in '{id_field}' (null, empty, or neither a string "
            "nor an integer); pass --id-field with the field that holds the ID",
            "invalid_utf8": _NOT_UTF8,
        },
    )


UNIFORM_PROBE = 1000
"""Input rows read before an input whose every row fails the same way is refused."""
UNIFORM_MIN = 20
"""Fewer rows than this, all failing alike, are a small bad input, not a wrong option."""


def refuse_uniform_failure(
    items: Iterator[InputItem], unit: str, causes: dict[str, str]
) -> Iterator[InputItem]:
    """``items``, unless the first :data:`UNIFORM_PROBE` of them (or all, if fewer, but at
    least :data:`UNIFORM_MIN`) are input problems with one and the same reason: then the file
    or an option is wrong, not the data (UTF-16, a wrong delimiter, an empty ID column), and a
    UsageError names the likely cause before any output is written, instead of an errors-file
    line per row.  ``causes`` says, per reason, what it means and what to do; a reason not in
    it is never refused.  Reading stops at the first row that differs, so a good input is not
    held back.
    """
    held: list[InputItem] = []
    ended = True
    for item in items:
        held.append(item)
        if (
            isinstance(item, IdRow)
            or item.reason != held[0].reason  # type: ignore[union-attr]
            or len(held) >= UNIFORM_PROBE
        ):
            ended = False
            break
    first = held[0] if held else None
    if (
        isinstance(first, InputProblem)
        and first.reason in causes
        and len(held) >= UNIFORM_MIN
        and all(isinstance(i, InputProblem) and i.reason == first.reason for i in held)
    ):
        span = (
            f"the {len(held):,} {unit} of the input" if ended else f"the first {len(held):,} {unit}"
        )
        raise UsageError(f"every one of {span} {causes[first.reason]}")
    return itertools.chain(held, items)


def _jsonl_items(
    stream: Iterable[bytes],
    id_field: str,
    keep: tuple[str, ...],
    values: ChooseValues | None,
    start: int = 1,
) -> Iterator[tuple[InputItem, tuple[str, ...] | None]]:
    """Each non-blank line's item, with the keys of its object when it lacks ``id_field``
    (None when it has it; empty for a line that is no object)."""
    fields: tuple[str, ...] | None = None if values else ()  # chosen at the first ID line
    for number, raw in _physical_lines(stream, start):
        if not raw.strip():
            continue
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            yield InputProblem(number, None, "invalid_utf8"), ()
            continue
        try:
            obj = jsontext.loads(raw)
        except ValueError:
            yield InputProblem(number, None, "invalid_json"), ()
            continue
        if not isinstance(obj, dict):
            yield InputProblem(number, None, "invalid_json"), ()
            continue
        if id_field not in obj:
            yield InputProblem(number, None, "missing_id"), tuple(obj)
            continue
        if fields is None:
            assert values is not None
            fields = tuple(values(list(obj), "the first JSON line with an ID"))
        yield _jsonl_item(number, obj, id_field, keep, fields), None


def _jsonl_item(
    number: int,
    obj: dict[str, object],
    id_field: str,
    keep: tuple[str, ...],
    fields: tuple[str, ...],
) -> InputItem:
    """The item of one JSON object that has ``id_field``."""
    value = obj.get(id_field)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return InputProblem(number, None, "missing_id")
    text = str(value).strip()
    if not text:
        return InputProblem(number, None, "missing_id")
    return _check_id(number, text) or IdRow(
        number,
        text,
        tuple(obj.get(k) for k in keep),
        tuple(map(obj.get, fields)) if fields else (),
    )


def read_ids(
    stream: Iterable[bytes],
    fmt: str,
    id_column: str,
    id_field: str,
    keep: tuple[str, ...],
    header: bool | None = None,
    values: ChooseValues | None = None,
    *,
    start: int = 1,
    whole: bool = True,
) -> Iterator[InputItem]:
    """Dispatch to the reader for ``fmt``.  ``header`` (``--header``/``--no-header``; None:
    the format's own way) says whether the first line is a header: a text input has none
    unless True (its first non-blank line is then skipped), a CSV or TSV has one unless False
    (its columns are then numbered from 1); JSON lines have none (settings refuse True).
    ``values`` chooses the columns whose values every row carries (an input source's
    features).

    ``start``: the number of the stream's first line (a partition of a file begins inside it;
    a CSV or TSV partition is given the file's header line first, numbered ``start``).
    ``whole=False``: the stream is a partition of an input already checked as a whole, so the
    checks that judge a whole input by its first rows (all failing alike, a JSON-lines field
    never seen) are not made again on a part of it.
    """
    if fmt in ("csv", "tsv"):
        return read_csv(
            stream,
            id_column,
            keep,
            tsv=fmt == "tsv",
            values=values,
            start=start,
            whole=whole,
            header=header is not False,
        )
    if fmt == "jsonl":
        return read_jsonl(stream, id_field, keep, values, start, whole)
    if keep:
        raise UsageError("--keep needs a CSV, TSV or JSON-lines input; plain text has only IDs")
    if values:
        raise UsageError(TEXT_HAS_NO_FEATURES)
    return read_text(stream, bool(header), start, whole)


TEXT_HAS_NO_FEATURES = (
    "a source of kind input takes features from the input's columns, and a plain text input "
    "has only IDs; pass a CSV, TSV or JSON-lines input (--input-format), or drop that source"
)

_HEADER_WORD = re.compile(r"[A-Za-z][A-Za-z _-]*")
_WORD_BREAK = re.compile(r"[ _-]+|(?<=[a-z])(?=[A-Z])")


def _no_such_column(
    name: str, header: list[str], column: str, is_id: bool, tsv: bool, rows: Iterator[list[str]]
) -> UsageError:
    """The error for a ``--id-column`` / ``--keep`` the header lacks: the nearest column name;
    a header that is a data row (a file without one) said as such, never suggested as names."""
    flag = "--id-column" if is_id else "--keep"
    hint = _delimiter_hint(tsv, header, "header")
    if not hint:
        try:
            below = next(rows, None)
        except csv.Error:
            below = None
        if below is not None and _same_shape(header, below):
            return _data_as_header(
                name,
                header,
                _first_same_shape(header, below),
                f", so it has no column '{column}'",
            )
    same_but_case = [h for h in header if h.casefold() == column.casefold()]
    nearest = f" (did you mean '{same_but_case[0]}'?)" if same_but_case else suggest(column, header)
    return UsageError(
        f"the input {name} has no column '{column}'{nearest} "
        f"(columns: {', '.join(header)}); pass {flag} with one of those{hint}"
    )


def _no_such_number(
    name: str, numbers: list[str], column: str, is_id: bool, first: list[str], tsv: bool
) -> UsageError:
    """The error for a ``--id-column`` / ``--keep`` that is not the number of a column of the
    first line, under ``--no-header``."""
    flag = "--id-column" if is_id else "--keep"
    return UsageError(
        f"the input {name} has no column '{column}': with --no-header its columns are numbered "
        f"1 to {len(numbers)} (as cut -f numbers them; its first line has {len(numbers)} "
        f"field{'s' if len(numbers) != 1 else ''}); pass {flag} with one of those"
        + _delimiter_hint(tsv, first, "first line")
    )


def _delimiter_hint(tsv: bool, first: list[str], what: str) -> str:
    """A hint when a first line read as one field holds the other delimiter."""
    if not tsv and len(first) == 1 and "\t" in first[0]:
        return f" (the {what} has tabs: pass --input-format tsv)"
    if tsv and len(first) == 1 and "," in first[0]:
        return f" (the {what} has commas: pass --input-format csv)"
    return ""


_SHAPE = str.maketrans(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", "a" * 52 + "9" * 10
)


def _same_shape(header: list[str], row: list[str]) -> bool:
    """Whether a header reads like the row below it: some cell holds digits and has the same
    shape (letters as ``a``, digits as ``9``) as the cell under it, ``C000858`` over ``C000859``."""
    return any(
        any(ch.isdigit() for ch in head)
        and head.translate(_SHAPE) == cell.strip().translate(_SHAPE)
        for head, cell in zip(header, row, strict=False)
    )


def _first_same_shape(header: list[str], row: list[str]) -> int:
    """The number (from 1) of the first column whose header reads like the cell below it: the
    likeliest ID column of a file without a header line."""
    for number, (head, cell) in enumerate(zip(header, row, strict=False), start=1):
        if _same_shape([head], [cell]):
            return number
    return 1


def looks_like_header(value: str, names: Iterable[str] = ()) -> bool:
    """Whether a text input's first value reads like a column name rather than an ID: one of
    ``names`` (the --id-column / --id-field), or letters only ending in the word id, key or
    uuid (``id``, ``customer_id``, ``Account ID``, ``customerId``).  Digits make it an ID."""
    if value in names:
        return True
    if not _HEADER_WORD.fullmatch(value):
        return False
    return _WORD_BREAK.split(value)[-1].lower() in {"id", "ids", "key", "uuid"}


def id_key(fmt: str, id_column: str, id_field: str) -> str:
    """Where a row's ID is: the JSON-lines field (``jsonl``), else the CSV/TSV column."""
    return id_field if fmt == "jsonl" else id_column


def header_lines(fmt: str, header: bool | None) -> int:
    """Lines of an input before its first ID: a CSV or TSV header (unless ``--no-header``),
    or a text input's header line (``--header``); what the progress total leaves out of the
    line count."""
    if fmt in ("csv", "tsv"):
        return 0 if header is False else 1
    return 1 if fmt == "text" and header else 0


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
    "TEXT_HAS_NO_FEATURES",
    "ChooseValues",
    "IdRow",
    "InputItem",
    "InputProblem",
    "count_lines",
    "detect_format",
    "header_lines",
    "id_key",
    "looks_like_header",
    "read_ids",
    "stable_hash",
]
