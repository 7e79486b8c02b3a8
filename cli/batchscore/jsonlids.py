"""JSON-lines input: the ID field of each object (by the one rule for JSON text), the fields
carried with --keep, and a wrong --id-field told from missing IDs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

from batchscore import jsontext
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
            "invalid_utf8": NOT_UTF8,
        },
    )


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
    for number, raw in physical_lines(stream, start):
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
    return check_id(number, text) or IdRow(
        number,
        text,
        tuple(obj.get(k) for k in keep),
        tuple(map(obj.get, fields)) if fields else (),
    )
