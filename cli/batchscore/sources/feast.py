"""Feast feature source: ``POST {url}/get-online-features`` of a Feast feature server.

The request names ``features`` (``"view:feature"``) or a ``feature_service``, and the entity
values: ``{"<entity_key>": [ids]}``, at most ``batch_size`` (default 100) per request.  The answer
is column-major: ``results[i]`` holds ``values`` and ``statuses`` for
``metadata.feature_names[i]``, one entry per requested ID, in order (the entity key's own
column is skipped).  ``PRESENT`` is a value; ``NULL_VALUE``, ``NOT_FOUND`` and
``OUTSIDE_MAX_AGE`` are missing values, counted per status in the run's statistics; an ID whose
every feature is ``NOT_FOUND`` is not found.  A ``null`` value is missing whatever its status
says (Feast returns a stored NaN as ``null`` with status ``PRESENT``).  The entity key's column,
when the answer has it, must name the IDs asked, in order (as sent, or as strings: protobuf's
JSON writes int64 as strings): an answer about other IDs, or in another order, is malformed
rather than read as features of the wrong IDs.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import orjson

from batchscore.report import RunStats
from batchscore.sources import Failure, Fetched, inverse_rename, split
from batchscore.sources.configs import FeastConfig
from batchscore.sources.httpclient import (
    Endpoint,
    Malformed,
    parse_json,
)
from batchscore.sources.limits import Limits
from batchscore.sources.retry import RetryPolicy

PRESENT = "PRESENT"
FEAST_NOT_FOUND = "NOT_FOUND"


_INTEGER = re.compile(r"[+-]?[0-9]+")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def int64_key(id_: str) -> int | None:
    """An ID as an int64 entity key: ASCII digits with an optional sign, within int64.

    Not ``int()`` alone: it also takes ``1_0`` (10), other scripts' digits (``٣`` is 3) and
    surrounding whitespace, which would give such an ID another entity's features; and a
    number beyond int64 cannot be a key (nor be sent: orjson refuses it).
    """
    if not _INTEGER.fullmatch(id_):
        return None
    value = int(id_)
    return value if INT64_MIN <= value <= INT64_MAX else None


class FeastSource:
    """Features from a Feast feature server's online store."""

    def __init__(self, config: FeastConfig, endpoint: Endpoint, stats: RunStats) -> None:
        self.config = config
        self.name = config.name
        self.batch_size = config.batch_size
        self._endpoint = endpoint
        self.health = endpoint.health  # read by a cluster partition's driver
        self._url = config.url.rstrip("/") + "/get-online-features"
        self._source_names = inverse_rename(config.rename)
        self._stats = stats
        self._request: dict[str, Any] = (
            {"feature_service": config.feature_service}
            if config.feature_service
            else {"features": list(config.features)}
        )

    @classmethod
    def build(
        cls, config: FeastConfig, limits: Limits, policy: RetryPolicy, stats: RunStats
    ) -> FeastSource:
        """The source of a checked ``[[sources]]`` record (nothing is sent yet)."""
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
        """The entity key value of an ID, or None when it is no valid key (never sent)."""
        if self.config.entity_type == "string":
            return id_
        return int64_key(id_)

    async def fetch(self, ids: Sequence[str], names: Sequence[str]) -> Fetched:
        """The features of every ID, ``batch_size`` IDs per request (IDs that are no valid
        entity key are not found, and not sent)."""
        unique = [i for i in dict.fromkeys(ids) if self._entity(i) is not None]
        parts = await asyncio.gather(
            *(self._fetch_batch(p, names) for p in split(unique, self.batch_size))
        )
        if len(unique) == len(ids) and len(parts) == 1:
            return parts[0]
        answered = Fetched.concat(parts, names) if parts else None
        position = {ident: i for i, ident in enumerate(unique)}
        at = [position.get(i, -1) for i in ids]
        found = np.zeros(len(ids), np.bool_)
        failures: dict[int, Failure] = {}
        columns: dict[str, list[Any]] = {name: [None] * len(ids) for name in names}
        if answered is not None:
            for row, source_row in enumerate(at):
                if source_row < 0:
                    continue
                found[row] = answered.found[source_row]
                failure = answered.failures.get(source_row)
                if failure is not None:
                    failures[row] = failure
                for name in names:
                    columns[name][row] = answered.columns[name][source_row]
        return Fetched(found, failures, dict(columns))

    async def _fetch_batch(self, ids: Sequence[str], names: Sequence[str]) -> Fetched:
        entities = [self._entity(i) for i in ids]
        body = orjson.dumps({**self._request, "entities": {self.config.entity_key: entities}})
        answer = await self._endpoint.request(
            "POST", self._url, partial(self._parse, entities, names), body=body
        )
        if isinstance(answer, Failure):
            return Fetched.failed(len(ids), answer, names)
        return answer

    def _parse(
        self, entities: Sequence[str | int | None], names: Sequence[str], content: bytes
    ) -> Fetched:
        n = len(entities)
        body = parse_json(content)
        metadata = body.get("metadata") if isinstance(body, dict) else None
        feature_names = metadata.get("feature_names") if isinstance(metadata, dict) else None
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(feature_names, list) or not isinstance(results, list):
            raise Malformed("no metadata.feature_names or results in the Feast response")
        if len(feature_names) != len(results):
            raise Malformed("metadata.feature_names and results differ in length")
        not_found = np.zeros(n, np.int64)
        counts: Counter[str] = Counter()
        answered: dict[str, list[Any]] = {}
        for name, column in zip(feature_names, results, strict=True):
            values = column.get("values") if isinstance(column, dict) else None
            if name == self.config.entity_key:
                if isinstance(values, list) and not _same_ids(values, entities):
                    raise Malformed("the entity column names other IDs than were asked")
                continue
            statuses = column.get("statuses") if isinstance(column, dict) else None
            if not isinstance(values, list) or not isinstance(statuses, list):
                raise Malformed(f"column '{name}' has no values and statuses lists")
            if len(values) != n or len(statuses) != n:
                raise Malformed(f"column '{name}' does not have one entry per requested ID")
            tally = Counter(statuses) if all(type(s) is str for s in statuses) else None
            if tally is None:
                raise Malformed(f"column '{name}' has a status that is not a string")
            counts.update(tally)
            if tally.get(FEAST_NOT_FOUND):
                not_found += np.fromiter(map(FEAST_NOT_FOUND.__eq__, statuses), np.bool_, n)
            if tally.get(PRESENT) != n:  # a value counts only when PRESENT
                values = [
                    v if s == PRESENT else None for v, s in zip(values, statuses, strict=True)
                ]
            answered[str(name)] = values
        # Only answers that parsed are counted; a source that never answered shows no line.
        self._stats.statuses.setdefault(self.name, Counter()).update(counts)
        found = not_found < len(answered) if answered else np.ones(n, np.bool_)
        empty: list[Any] = [None] * n
        columns = {name: answered.get(self._source_names.get(name, name), empty) for name in names}
        return Fetched(np.asarray(found, dtype=np.bool_), {}, columns)


def _same_ids(echoed: list[Any], entities: Sequence[str | int | None]) -> bool:
    """Whether the entity column of an answer names the IDs asked, in order (as sent, or as
    strings: protobuf's JSON mapping writes int64 values as strings)."""
    return echoed == entities or (
        len(echoed) == len(entities) and list(map(str, echoed)) == list(map(str, entities))
    )


__all__ = ["FeastConfig", "FeastSource"]
