"""Live sources from the checked ``[[sources]]`` records (:mod:`batchscore.sources.configs`).

Each kind's module is imported only when a source of that kind is configured: aiohttp and
asyncpg cost start-up that a SQLite-only run does not need.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from batchscore.report import RunStats
from batchscore.settings import FetchSettings
from batchscore.sources import Source
from batchscore.sources.configs import (
    FeastConfig,
    HttpConfig,
    InputConfig,
    PostgresConfig,
    SourceConfig,
    SqliteConfig,
)
from batchscore.sources.limits import Limits

if TYPE_CHECKING:
    from batchscore.sources.retry import RetryPolicy


def build_sources(
    configs: Sequence[SourceConfig],
    limits: Limits,
    fetch: FetchSettings,
    stats: RunStats,
) -> list[Source]:
    """Build every configured source (not yet opened).

    Their secrets (header values, URL credentials and query values, DSN passwords) are
    registered with :mod:`batchscore.redact` already: by the settings that made the records
    (:func:`batchscore.resolving.source_configs`), and on a Dask worker by its job's setup.
    """
    sources: list[Source] = []
    for config in configs:
        if isinstance(config, SqliteConfig):
            from batchscore.sources.sqlite import SqliteSource

            sources.append(SqliteSource(config, limits))
        elif isinstance(config, HttpConfig):
            from batchscore.sources.http import HttpSource

            sources.append(HttpSource.build(config, limits, _policy(fetch), stats))
        elif isinstance(config, FeastConfig):
            from batchscore.sources.feast import FeastSource

            sources.append(FeastSource.build(config, limits, _policy(fetch), stats))
        elif isinstance(config, PostgresConfig):
            from batchscore.sources.postgres import PostgresSource

            sources.append(PostgresSource(config, limits, _policy(fetch), stats))
        else:
            assert isinstance(config, InputConfig)
            from batchscore.sources.input import InputSource

            sources.append(InputSource(config))
    return sources


def _policy(fetch: FetchSettings) -> RetryPolicy:
    """The retry policy of HTTP and PostgreSQL sources (imported only when one is configured)."""
    from batchscore.sources.retry import RetryPolicy

    return RetryPolicy.from_settings(fetch)


__all__ = ["build_sources"]
