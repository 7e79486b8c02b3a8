"""Streaming ID readers: plain text, CSV or TSV (with a header line, or columns numbered),
JSON lines.

Each reader yields, per input row, either an :class:`IdRow` or an :class:`InputProblem`, in
input order, never holding more than one row.  Line numbers count from 1, blank lines
included, as an editor shows them.  Reading is synchronous; the pipeline pulls chunks of rows
in a worker thread so the event loop never waits on a disk or a pipe.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from batchscore.csvids import read_csv
from batchscore.errors import UsageError
from batchscore.idrows import (
    MAX_ID_LENGTH,
    NOT_UTF8,
    ChooseValues,
    IdRow,
    InputItem,
    InputProblem,
    check_id,
    physical_lines,
    refuse_uniform_failure,
)
from batchscore.jsonlids import read_jsonl


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
            "invalid_utf8": NOT_UTF8,
            "id_too_long": f"holds an ID over {MAX_ID_LENGTH:,} characters; is this a table? "
            "pass --input-format csv, tsv or jsonl",
        },
    )


def _text_items(stream: Iterable[bytes], header: bool, start: int = 1) -> Iterator[InputItem]:
    for number, raw in physical_lines(stream, start):
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
        yield check_id(number, value) or IdRow(number, value)


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
    "count_lines",
    "detect_format",
    "header_lines",
    "id_key",
    "read_ids",
    "read_text",
    "stable_hash",
]
