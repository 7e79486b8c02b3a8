"""Feature sources: one module per kind, behind the small :class:`Source` protocol.

A source answers ``fetch(ids)`` with one entry per requested ID, in order: a mapping of feature
name (already renamed to the model's names) to raw value, or a :class:`Failure`.  Every request a
source makes goes through the shared :class:`~batchscore.sources.limits.Limits`, so the bound on
requests in flight and the rate limit hold over all sources together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Features = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a source could not give an ID's features."""

    reason: str  # not_found, timeout, connect_error, http_500, malformed, ...
    status: int | None = None
    attempts: int = 1
    retryable: bool = False


NOT_FOUND = "not_found"

FetchResult = Features | Failure


class Source(Protocol):
    """A feature source: open once, fetch batches of IDs, close once."""

    name: str
    batch_size: int
    """IDs per ``fetch`` call the source prefers (1 for per-ID HTTP)."""

    async def open(self) -> None:
        """Connect and validate (schema, reachability of config); raise ConfigError if unusable."""

    async def fetch(self, ids: Sequence[str]) -> list[FetchResult]:
        """Features or a Failure for each ID, in the order given."""

    async def close(self) -> None:
        """Release connections."""

    def provides(self) -> frozenset[str] | None:
        """Model feature names this source can give, if known before fetching (else None)."""


def apply_rename(features: Mapping[str, Any], rename: Mapping[str, str]) -> dict[str, Any]:
    """Rename source feature names to model names."""
    if not rename:
        return dict(features)
    return {rename.get(k, k): v for k, v in features.items()}


def build_sources(
    tables: Sequence[Mapping[str, Any]], limits: Any, policy: Any = None
) -> list[Source]:
    """Build every configured source (validated, not yet opened)."""
    from batchscore.errors import ConfigError

    sources: list[Source] = []
    for i, table in enumerate(tables):
        where = f"sources[{i}]"
        kind = table.get("kind")
        if kind == "sqlite":
            from batchscore.sources.sqlite import SqliteSource

            sources.append(SqliteSource.from_table(table, where, limits))
        else:
            raise ConfigError(f"{where}: kind '{kind}' is not supported by this build")
    return sources
