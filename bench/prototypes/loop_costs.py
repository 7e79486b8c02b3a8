"""Prototype: two event-loop costs of the pipeline removed (``PATCHES=csv,sem``).

``csv``: ``CsvEncoder.encode`` writes ``id,score`` rows with one f-string join per batch when the
output has no kept or explanation columns, one score column and no ID that needs CSV quoting
(the bytes are identical to ``csv.writer``'s: floats via ``repr``).  ``sem``: the pipeline's
window semaphore takes a free slot without Python 3.11's ``Semaphore.locked()`` scan of the
waiters.  Measurement only (see README.md here).
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

from batchscore import pipeline
from batchscore.__main__ import main
from batchscore.sinks import encoders

PATCHES = set(os.environ.get("PATCHES", "").split(","))
_ORIGINAL = encoders.CsvEncoder.encode
_NEEDS_QUOTES = re.compile(r'[,"\r\n]')


def encode(self: Any, batch: Any) -> bytes:
    """The fast path, else the original."""
    columns = self.columns
    if (
        columns.keep
        or columns.explain
        or batch.scores.shape[1] != 1
        or _NEEDS_QUOTES.search("".join(batch.ids))
    ):
        return _ORIGINAL(self, batch)
    scores = batch.scores[:, 0].tolist()
    return "".join([f"{i},{s!r}\n" for i, s in zip(batch.ids, scores, strict=True)]).encode()


class FastSemaphore(asyncio.Semaphore):
    """``acquire`` without the waiter scan when a slot is free and nobody waits."""

    async def acquire(self) -> bool:
        if self._value > 0 and not self._waiters:  # type: ignore[attr-defined]
            self._value -= 1  # type: ignore[attr-defined]
            return True
        return await super().acquire()


class _Asyncio:
    """``asyncio`` as pipeline.py sees it, with the faster semaphore."""

    Semaphore = FastSemaphore

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)


if "csv" in PATCHES:
    encoders.CsvEncoder.encode = encode  # type: ignore[method-assign]
if "sem" in PATCHES:
    pipeline.asyncio = _Asyncio()  # type: ignore[assignment]

if __name__ == "__main__":
    main()
