"""Feast feature source: ``POST {url}/get-online-features`` of a Feast feature server.

The request names ``features`` (``"view:feature"``) or a ``feature_service``, and the entity
values: ``{"<entity_key>": [ids]}``, at most ``batch_size`` (default 100) per request.  The answer
is column-major: ``results[i]`` holds ``values`` and ``statuses`` for
``metadata.feature_names[i]``, one entry per requested ID, in order (the entity key's own
column is skipped).  ``PRESENT`` is a value; ``NULL_VALUE``, ``NOT_FOUND`` and
``OUTSIDE_MAX_AGE`` are missing values, counted per status in the run's statistics; an ID whose
every feature is ``NOT_FOUND`` is not found.  A ``null`` value is missing whatever its status
says (Feast returns a stored NaN as ``null`` with status ``PRESENT``).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson

from batchscore.configtools import build, suggest
from batchscore.errors import ConfigError
from batchscore.report import RunStats
from batchscore.sources import NOT_FOUND, Failure, FetchResult
from batchscore.sources.httpclient import (
    ClientOptions,
    Endpoint,
    Malformed,
    check_options,
    check_url,
)
from batchscore.sources.limits import Limits
from batchscore.sources.retry import RetryPolicy

MAX_BATCH = 10_000
ENTITY_TYPES = ("string", "int")
PRESENT = "PRESENT"
FEAST_NOT_FOUND = "NOT_FOUND"


@dataclass(frozen=True)
class FeastConfig:
    """``[[sources]]`` keys for ``kind = "feast"``."""

    name: str
    kind: str
    url: str  # the feature server's base URL; /get-online-features is appended
    entity_key: str
    features: tuple[str, ...] = ()  # "view:feature" references
    feature_service: str | None = None
    entity_type: str = "string"  # "int" sends IDs as JSON integers (int64 entity keys)
    batch_size: int = 100
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 10.0
    ca_bundle: str | None = None
    insecure: bool = False
    proxy: str | None = None
    rename: dict[str, str] = field(default_factory=dict)
    wins: tuple[str, ...] = ()

    @property
    def client_options(self) -> ClientOptions:
        """The connection settings."""
        return ClientOptions.of(self)


class FeastSource:
    """Features from a Feast feature server's online store."""

    def __init__(self, config: FeastConfig, endpoint: Endpoint, stats: RunStats) -> None:
        self.config = config
        self.name = config.name
        self.batch_size = config.batch_size
        self._endpoint = endpoint
        self._url = config.url.rstrip("/") + "/get-online-features"
        self._stats = stats
        self._request: dict[str, Any] = (
            {"feature_service": config.feature_service}
            if config.feature_service
            else {"features": list(config.features)}
        )

    @classmethod
    def from_table(
        cls,
        table: Mapping[str, Any],
        where: str,
        limits: Limits,
        policy: RetryPolicy,
        stats: RunStats,
    ) -> FeastSource:
        """Validate a ``[[sources]]`` table and build the source."""
        config = build(FeastConfig, {"name": "feast", **table}, where)
        check_url(config.url, f"{where}.url")
        check_options(config.client_options, where)
        if bool(config.features) == bool(config.feature_service):
            raise ConfigError(
                f'{where} needs either features = ["view:feature", ...] or feature_service, '
                "exactly one of them"
            )
        for ref in config.features:
            view, _, name = ref.rpartition(":")
            if not view or not name:
                raise ConfigError(f"{where}.features: '{ref}' must be a \"view:feature\" reference")
        if config.entity_type not in ENTITY_TYPES:
            raise ConfigError(
                f"{where}.entity_type must be string or int, not '{config.entity_type}'"
                + suggest(config.entity_type, ENTITY_TYPES)
            )
        if not 1 <= config.batch_size <= MAX_BATCH:
            raise ConfigError(f"{where}.batch_size must be between 1 and {MAX_BATCH}")
        endpoint = Endpoint(
            source=config.name,
            options=config.client_options,
            limits=limits,
            policy=policy,
            stats=stats,
        )
        return cls(config, endpoint, stats)

    async def open(self) -> None:
        """Create the connection pool."""
        self._endpoint.open()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._endpoint.close()

    def provides(self) -> frozenset[str] | None:
        """The named features (renamed); unknown for a feature service."""
        if not self.config.features:
            return None
        rename = self.config.rename
        names = (ref.rpartition(":")[2] for ref in self.config.features)
        return frozenset(rename.get(n, n) for n in names)

    def _entity(self, id_: str) -> str | int | None:
        if self.config.entity_type == "string":
            return id_
        try:
            return int(id_)
        except ValueError:
            return None

    async def fetch(self, ids: Sequence[str]) -> list[FetchResult]:
        """Features or a Failure per ID, in order (IDs that are no valid key: not found)."""
        unique = [i for i in dict.fromkeys(ids) if self._entity(i) is not None]
        size = self.batch_size
        parts = await asyncio.gather(
            *(self._fetch_batch(unique[i : i + size]) for i in range(0, len(unique), size))
        )
        answers: dict[str, FetchResult] = {}
        for part in parts:
            answers.update(part)
        missing = Failure(NOT_FOUND)
        return [answers.get(i, missing) for i in ids]

    async def _fetch_batch(self, ids: list[str]) -> dict[str, FetchResult]:
        entities = [self._entity(i) for i in ids]
        body = orjson.dumps({**self._request, "entities": {self.config.entity_key: entities}})
        answer = await self._endpoint.request(
            "POST", self._url, partial(self._parse, len(ids)), body=body
        )
        if isinstance(answer, Failure):
            return dict.fromkeys(ids, answer)
        return dict(zip(ids, answer, strict=True))

    def _parse(self, n: int, content: bytes) -> list[FetchResult]:
        body = orjson.loads(content)
        names = body.get("metadata", {}).get("feature_names") if isinstance(body, dict) else None
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(names, list) or not isinstance(results, list):
            raise Malformed("no metadata.feature_names or results in the Feast response")
        if len(names) != len(results):
            raise Malformed("metadata.feature_names and results differ in length")
        rows: list[dict[str, Any]] = [{} for _ in range(n)]
        not_found = [0] * n
        counts: Counter[str] = Counter()
        rename = self.config.rename
        columns = 0
        for name, column in zip(names, results, strict=True):
            if name == self.config.entity_key:
                continue
            values = column.get("values") if isinstance(column, dict) else None
            statuses = column.get("statuses") if isinstance(column, dict) else None
            if not isinstance(values, list) or not isinstance(statuses, list):
                raise Malformed(f"column '{name}' has no values and statuses lists")
            if len(values) != n or len(statuses) != n:
                raise Malformed(f"column '{name}' does not have one entry per requested ID")
            if not all(isinstance(status, str) for status in statuses):
                raise Malformed(f"column '{name}' has a status that is not a string")
            feature = rename.get(name, name) if isinstance(name, str) else str(name)
            columns += 1
            counts.update(statuses)
            for i, (value, status) in enumerate(zip(values, statuses, strict=True)):
                if status == PRESENT:
                    rows[i][feature] = value
                else:
                    rows[i][feature] = None
                    if status == FEAST_NOT_FOUND:
                        not_found[i] += 1
        # Only answers that parsed are counted; a source that never answered shows no line.
        self._stats.statuses.setdefault(self.name, Counter()).update(counts)
        missing = Failure(NOT_FOUND)
        return [missing if columns and not_found[i] == columns else rows[i] for i in range(n)]


__all__ = ["FeastConfig", "FeastSource"]
