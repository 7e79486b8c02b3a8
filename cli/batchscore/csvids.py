"""CSV and TSV input: records that may span lines (a quote left open is an input error, not
the rest of the file), the ID column by name under a header line or by number without one, and
what is said when a header lacks a column or is a data row.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Callable, Iterable, Iterator

from batchscore.configtools import suggest
from batchscore.errors import UsageError
from batchscore.idrows import (
    NOT_UTF8,
    ChooseValues,
    IdRow,
    InputItem,
    InputProblem,
    check_id,
    physical_lines,
    refuse_uniform_failure,
)

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
        self._lines = physical_lines(stream, start)
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
            yield check_id(number, value) or IdRow(
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
            "invalid_utf8": NOT_UTF8,
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
    shown = ", ".join(map(_one_line, header[:4])) + (", ..." if len(header) > 4 else "")
    return UsageError(
        f"the input {name}'s first line ({shown}) looks like data, not a header (it has the "
        f"shape of the line below it){why}; if the file has no header line, pass --no-header "
        f"--id-column {id_number} (its columns are then numbered from 1, as cut -f numbers "
        "them; --keep takes numbers too), or add a header line naming the columns"
    )


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
    names = [h for h in header if h.isprintable()]  # a name with a newline is never offered
    same_but_case = [h for h in names if h.casefold() == column.casefold()]
    nearest = f" (did you mean '{same_but_case[0]}'?)" if same_but_case else suggest(column, names)
    return UsageError(
        f"the input {name} has no column '{column}'{nearest} "
        f"(columns: {', '.join(map(_one_line, header))}); pass {flag} with one of those{hint}"
    )


def _one_line(cell: str) -> str:
    """A cell of the input as an error shows it: as written, or as a Python literal when it
    holds a newline (a quoted field), a tab or a control character, so that the error stays one
    line and the file's bytes never act on the terminal."""
    return cell if cell.isprintable() else repr(cell)


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
