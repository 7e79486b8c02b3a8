"""The errors file: one JSON line per ID that could not be scored, in input order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import orjson

from batchscore.sinks.files import ByteTarget


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """Why one input row produced no score."""

    id: str | None
    line: int
    stage: str  # input | fetch | score
    source: str | None
    reason: str
    status: int | None = None
    attempts: int = 0


class ErrorLog:
    """Writes error records to a target, or only counts them when there is none."""

    def __init__(self, target: ByteTarget | None) -> None:
        self.target = target

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
            await self.target.write(
                b"".join(orjson.dumps(asdict(r), option=orjson.OPT_APPEND_NEWLINE) for r in records)
            )

    async def commit(self) -> None:
        """Make the errors file final."""
        if self.target is not None:
            await self.target.commit()

    async def abort(self) -> None:
        """Leave it for ``--resume``."""
        if self.target is not None:
            await self.target.abort()
