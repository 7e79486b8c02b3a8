"""What an input row is, and the rules every ID reader shares: numbered physical lines (a BOM
stripped, UTF-16 refused), the ID length limit, a first line that reads like a column name, and
an input whose every row fails the same way (a wrong format, not bad rows).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from batchscore.errors import UsageError

MAX_ID_LENGTH = 1024


_BOM = b"\xef\xbb\xbf"


_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


NOT_UTF8 = (
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


def check_id(line: int, value: str) -> InputItem | None:
    if len(value) > MAX_ID_LENGTH:
        return InputProblem(line, value[:64] + "...", "id_too_long")
    return None


def physical_lines(stream: Iterable[bytes], start: int = 1) -> Iterator[tuple[int, bytes]]:
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


_HEADER_WORD = re.compile(r"[A-Za-z][A-Za-z _-]*")


_WORD_BREAK = re.compile(r"[ _-]+|(?<=[a-z])(?=[A-Z])")


def looks_like_header(value: str, names: Iterable[str] = ()) -> bool:
    """Whether a text input's first value reads like a column name rather than an ID: one of
    ``names`` (the --id-column / --id-field), or letters only ending in the word id, key or
    uuid (``id``, ``customer_id``, ``Account ID``, ``customerId``).  Digits make it an ID."""
    if value in names:
        return True
    if not _HEADER_WORD.fullmatch(value):
        return False
    return _WORD_BREAK.split(value)[-1].lower() in {"id", "ids", "key", "uuid"}
