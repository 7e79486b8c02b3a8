"""The part folder's last steps: ``--merge`` (the parts as one file, byte for byte a local
run's) and the ``_SUCCESS`` manifest that says the run is complete (and what a resumed no-op
reads back from it).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from batchscore.atomic import write_atomically
from batchscore.done import file_stamp
from batchscore.engines.dask.folder import MARKER, MERGED, SUCCESS, concatenate, read_json
from batchscore.engines.dask.task import Partition, done_name, errors_name, part_name
from batchscore.errors import OutputWriteError
from batchscore.plan import Plan
from batchscore.report import RunStats


def merge_parts(folder: Path, indexes: Sequence[int], ext: str, p: Plan) -> None:
    """``--merge``: the parts as one file in input order (and their errors files as one),
    byte for byte what a local run writes (a .gz: the same decompressed bytes)."""
    from batchscore.sinks.encoders import CsvEncoder

    header = CsvEncoder(p.columns).header() if p.fmt == "csv" else b""
    merged = folder / f"{MERGED}.{ext}"
    try:
        concatenate([folder / part_name(i, ext) for i in indexes], merged, header, gzip=p.gzip)
        concatenate(
            [folder / errors_name(i) for i in indexes],
            folder / f"{merged.name}.errors.jsonl",
            b"",
            gzip=False,
        )
    except OSError as exc:
        from batchscore.sinks.files import write_error

        raise write_error(merged, exc) from None


def write_success(
    folder: Path,
    p: Plan,
    s: RunStats,
    parts: Sequence[Partition],
    *,
    size: int,
    suffix: str,
    input_file: str,
    identity: dict[str, Any],
) -> None:
    """The manifest, last; then the records it replaces (each part's, the stopped run's)."""
    records = []
    for part in parts:
        name = part_name(part.index, suffix)
        record = read_json(folder / done_name(name))
        records.append(
            {
                "file": name,
                "errors": errors_name(part.index),
                "first_line": part.first_line,
                "last_line": part.last_line,
                # The run's histograms are in its own counters below, not per part.
                **{k: v for k, v in record["counters"].items() if k != "distributions"},
            }
        )
    manifest = {
        "run_id": p.run_id,
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model_version": p.models.version_label,
        "config_fingerprint": p.settings.fingerprint,
        "input": input_file,
        "input_stamp": file_stamp(input_file),
        "format": suffix,
        "partition_size": size,
        # The figures once (a resumed no-op reads them back: manifest_counters).
        "counts": {
            "read": s.read,
            "scored": s.scored,
            "failed": s.failed_total,
            "skipped": s.skipped,
            "failed_by_reason": dict(sorted(s.failed.items())),
        },
        "retries": s.retries,
        **{k: v for k, v in s.counters().items() if k == "distributions"},
        "merged": f"{MERGED}.{suffix}" if p.settings.output.merge else None,
        "partitions": records,
        "identity": identity,
    }
    try:
        write_atomically(str(folder / SUCCESS), orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    except OSError as exc:
        raise OutputWriteError(
            f"cannot write {folder / SUCCESS}: {exc.strerror}; rerun with --resume"
        ) from None
    for part in parts:
        with contextlib.suppress(FileNotFoundError):
            (folder / done_name(part_name(part.index, suffix))).unlink()
    with contextlib.suppress(FileNotFoundError):
        (folder / MARKER).unlink()


def manifest_counters(manifest: dict[str, Any]) -> dict[str, Any]:
    """The run's counters (:meth:`RunStats.counters`) from its ``_SUCCESS``: its ``counts``,
    ``retries`` and ``distributions`` (a manifest written before held them twice, as
    ``counters`` too: read as it is)."""
    if "counters" in manifest:
        return dict(manifest["counters"])
    counts = manifest["counts"]
    return {
        "read": counts["read"],
        "skipped": counts["skipped"],
        "scored": counts["scored"],
        "failed": counts["failed_by_reason"],
        "retries": manifest.get("retries", 0),
        **({"distributions": manifest["distributions"]} if "distributions" in manifest else {}),
    }


__all__ = ["manifest_counters", "merge_parts", "write_success"]
