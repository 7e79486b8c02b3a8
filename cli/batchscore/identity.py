"""A run's identity: what must match for a stopped or completed run to be this job's, and how a
mismatch is said.

The local engine keeps it in the run's state and done record, the Dask engine in its part
folder's run record; both compare it here, so a resume refused for another ``--shard`` says so
in the same words whichever engine wrote the run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from batchscore.model import ModelSet
    from batchscore.settings import Settings
    from batchscore.sinks import Columns

_NAMES = {
    "input": "input file",
    "model": "model",
    "columns": "set of output columns",
    "format": "output format",
    "unordered": "ordering (--unordered)",
    "shard": "--shard",
    "dedupe": "--dedupe",
    "errors": "errors file (--errors)",
    "input_format": "--input-format",
    "header": "--header",
    "id_column": "--id-column",
    "id_field": "--id-field",
    "raw_score": "--raw-score",
    "allow_empty": "allow_empty",
}


def run_identity(
    s: Settings,
    *,
    input_path: str,
    input_format: str,
    models: ModelSet,
    columns: Columns,
    fmt: str,
    gzip: bool,
    errors_path: str | None,
) -> dict[str, Any]:
    """What must match for a stopped run's state to be resumed by this one."""
    return {
        "input": os.path.abspath(input_path) if input_path != "-" else "-",
        "model": models.members[0].info.version
        if models.plain
        else [[m.name, m.info.version] for m in models.members],
        "columns": list(columns.names),
        "format": [fmt, gzip],
        "unordered": s.output.unordered,
        "shard": s.input.shard,
        "dedupe": s.input.dedupe,
        # Which lines are IDs, and where the ID is in them: only what differs from plain text
        # with the default column, so a plain text run's state reads as it always did.
        **_reading(s, input_format),
        # What changes the scores written, when set (so a state from before reads the same).
        **({"raw_score": True} if s.score.raw_score else {}),
        **({"allow_empty": True} if s.score.allow_empty else {}),
        "errors": os.path.abspath(errors_path) if errors_path else None,
    }


def _reading(s: Settings, fmt: str) -> dict[str, Any]:
    """The input options that change which lines are IDs, as far as they differ from the
    defaults (a plain text input without --header, a CSV with its header line, add
    nothing)."""
    reading: dict[str, Any] = {}
    if fmt != "text":
        reading["input_format"] = fmt
    if fmt in ("csv", "tsv") and s.input.id_column != "id":
        reading["id_column"] = s.input.id_column
    if fmt == "jsonl" and s.input.id_field != "id":
        reading["id_field"] = s.input.id_field
    if fmt == "text" and s.input.header:
        reading["header"] = True
    if fmt in ("csv", "tsv") and s.input.header is False:  # its first line is a row
        reading["header"] = False
    return reading


def identity_text(identity: Mapping[str, Any] | None) -> str:
    """An identity as it is stored and compared: JSON with its keys sorted."""
    return orjson.dumps(identity, option=orjson.OPT_SORT_KEYS).decode()


def difference(stored: str, current: str) -> str:
    """What differs between a stopped run's identity and this run's, in words."""
    try:
        before, now = orjson.loads(stored), orjson.loads(current)
    except orjson.JSONDecodeError:
        return "set of arguments"
    if not isinstance(before, dict) or not isinstance(now, dict):
        return "set of arguments"
    keys = sorted(k for k in {*before, *now} if before.get(k) != now.get(k))
    if not keys:
        return "set of arguments"
    shown = [
        f"{_NAMES.get(k, k)} ({before.get(k)!r}, now {now.get(k)!r})"
        if k not in ("model", "columns")
        else f"{_NAMES['columns']} ({_columns_change(before.get(k), now.get(k))})"
        if k == "columns"
        else _NAMES.get(k, k)
        for k in keys
    ]
    return " and ".join(shown)


def _columns_change(before: Any, now: Any) -> str:
    """Old and new output columns: what this run adds and drops, or both lists in full."""
    old = [str(c) for c in before] if isinstance(before, list) else []
    new = [str(c) for c in now] if isinstance(now, list) else []

    def listed(names: list[str]) -> str:
        return ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")

    added = [c for c in new if c not in old]
    dropped = [c for c in old if c not in new]
    change = "; ".join(
        part
        for part in (
            f"this run adds {listed(added)}" if added else "",
            f"drops {listed(dropped)}" if dropped else "",
        )
        if part
    )
    return f"was {listed(old)}, now {listed(new)}" + (f": {change}" if change else "")


__all__ = ["difference", "identity_text", "run_identity"]
