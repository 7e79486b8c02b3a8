"""Feature sources: one module per kind, behind the small :class:`Source` protocol.

A source answers ``fetch(ids)`` with one entry per requested ID, in order: a mapping of feature
name (already renamed to the model's names) to raw value, or a :class:`Failure`.  Every request a
source makes goes through the shared :class:`~batchscore.sources.limits.Limits`, so the bound on
requests in flight and the rate limit hold over all sources together.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from batchscore.report import RunStats
    from batchscore.settings import FetchSettings
    from batchscore.sources.limits import Limits

Features = Mapping[str, Any]


class Record(Mapping[str, Any]):
    """One ID's features as a row of a source's columns: a read-only view, not a dict.

    ``columns`` (name -> position in ``row``) is shared by every record of a source, so a
    record costs one small object, and a batch of records can be transposed column-wise at C
    speed (:meth:`batchscore.model.Encoder.matrix` does).
    """

    __slots__ = ("columns", "row")

    def __init__(self, columns: Mapping[str, int], row: Sequence[Any]) -> None:
        self.columns = columns
        self.row = row

    def __getitem__(self, name: str) -> Any:
        return self.row[self.columns[name]]

    def get(self, name: str, default: Any = None) -> Any:
        """The value of ``name``, or ``default`` when the source has no such column."""
        index = self.columns.get(name)
        return default if index is None else self.row[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self.columns)

    def __len__(self) -> int:
        return len(self.columns)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a source could not give an ID's features."""

    reason: str  # not_found, timeout, connect_error, http_500, malformed_response, ...
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


def apply_rename(features: dict[str, Any], rename: Mapping[str, str]) -> dict[str, Any]:
    """Rename source feature names to model names (the mapping itself when nothing renames:
    parsed answers are owned by the source, and a copy per ID costs on the event loop)."""
    if not rename:
        return features
    return {rename.get(k, k): v for k, v in features.items()}


def build_sources(
    tables: Sequence[Mapping[str, Any]],
    limits: Limits,
    fetch: FetchSettings,
    stats: RunStats,
) -> list[Source]:
    """Build every configured source (validated, not yet opened).

    The secrets in the tables (header values, URL credentials and query values) are registered
    with :mod:`batchscore.redact` first, so that no message about them can show them.
    """
    from batchscore.errors import ConfigError
    from batchscore.redact import register_sources

    register_sources(tables)
    sources: list[Source] = []
    for i, table in enumerate(tables):
        where = f"sources[{i}]"
        kind = table.get("kind")
        if kind == "sqlite":
            from batchscore.sources.sqlite import SqliteSource

            sources.append(SqliteSource.from_table(table, where, limits))
        elif kind == "http":
            from batchscore.sources.http import HttpSource

            sources.append(HttpSource.from_table(table, where, limits, _policy(fetch), stats))
        elif kind == "feast":
            from batchscore.sources.feast import FeastSource

            sources.append(FeastSource.from_table(table, where, limits, _policy(fetch), stats))
        else:
            raise ConfigError(f"{where}: kind '{kind}' is not supported by this build")
    return sources


def _policy(fetch: FetchSettings) -> Any:
    """The retry policy of HTTP sources (imported only when one is configured: it brings
    aiohttp, start-up time that a SQLite-only run does not need)."""
    from batchscore.sources.retry import RetryPolicy

    return RetryPolicy.from_settings(fetch)
