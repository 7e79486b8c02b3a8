"""HTTP feature source: one GET per ID (``mode = "per_id"``) or one POST per batch (``"batch"``).

per_id
    ``GET url`` with ``{id}`` replaced by the percent-encoded ID, so that an ID can never change
    the path or the host (``a/b c`` is sent as ``a%2Fb%20c``; an ID of only dots as ``%2E``s,
    which no client or server treats as a ``.``/``..`` segment).  200: a JSON object whose
    ``features_path`` (dotted; default empty, the whole body) is the feature mapping.  404: the
    ID is not found.
batch
    ``POST url`` with ``{"<ids_key>": [...]}``, at most ``batch_size`` IDs (duplicates sent once).
    The response's ``results_path`` (default ``results``) is a list of records, each with
    ``id_field`` and the features at ``features_path`` (default ``features``), or an object keyed
    by ID whose values are the features (or hold them at ``features_path`` when it is set).
    IDs absent from the response are not found; IDs not asked for are ignored.  An answer is
    malformed (every ID of its request fails, retried first) when its shape is wrong: no
    ``results_path``, a record that is no object or has no ``id_field``, features of an asked
    ID that are no object, or two different records for one ID.

Requests, limits, timeouts, statuses and retries are :class:`~batchscore.sources.httpclient.
Endpoint`'s business; this module only knows URLs, bodies and response shapes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import partial
from typing import Any
from urllib.parse import quote

import orjson

from batchscore.report import RunStats
from batchscore.sources import Failure, Fetched, inverse_rename, split
from batchscore.sources.configs import PLACEHOLDER, HttpConfig
from batchscore.sources.httpclient import (
    Endpoint,
    Malformed,
    dig,
    features_at,
    parse_json,
)
from batchscore.sources.limits import Limits
from batchscore.sources.retry import RetryPolicy

_UNSET = Failure("not_fetched")  # a placeholder; every one is replaced before use


def encode_id(id_: str) -> str:
    """``id_`` as one opaque path segment: percent-encoded, dots too if it is only dots."""
    encoded = quote(id_, safe="")
    if encoded and not encoded.strip("."):
        return "%2E" * len(encoded)
    return encoded


class HttpSource:
    """Features from an HTTP feature service, per ID or in batches."""

    def __init__(self, config: HttpConfig, endpoint: Endpoint) -> None:
        self.config = config
        self.name = config.name
        self.per_id = config.mode == "per_id"
        # per_id: one ID per fetch, so the pipeline's latency figures are per request.
        self.batch_size = 1 if self.per_id else (config.batch_size or 100)
        self._endpoint = endpoint
        self.health = endpoint.health  # read by a cluster partition's driver
        self._template = config.url.split(PLACEHOLDER)
        default_path = "" if self.per_id else "features"
        self._features_path = (
            config.features_path if config.features_path is not None else default_path
        )
        self._batch_url = config.url
        # Batch answers whose features sit under one key (the default "features") are read
        # by a fast path first.
        self._single_key_path = bool(self._features_path) and "." not in self._features_path
        self._source_names = inverse_rename(config.rename)

    @classmethod
    def build(
        cls, config: HttpConfig, limits: Limits, policy: RetryPolicy, stats: RunStats
    ) -> HttpSource:
        """The source of a checked ``[[sources]]`` record (nothing is sent yet)."""
        endpoint = Endpoint(
            source=config.name,
            options=config.client_options,
            limits=limits,
            policy=policy,
            stats=stats,
        )
        return cls(config, endpoint)

    async def open(self) -> None:
        """Create the connection pool (nothing is sent until the first fetch)."""
        self._endpoint.open()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._endpoint.close()

    def provides(self) -> None:
        """Unknown until a response arrives."""
        return None

    async def fetch(self, ids: Sequence[str], names: Sequence[str]) -> Fetched:
        """The features of every ID: one GET each, or one POST per ``batch_size`` IDs."""
        answers: Sequence[dict[str, Any] | Failure | None]
        if self.per_id:
            answers = await self._fetch_each(ids)
        else:
            found: dict[str, dict[str, Any] | Failure] = {}
            unique = list(dict.fromkeys(ids))  # duplicates are sent once
            for part in await asyncio.gather(
                *(self._fetch_batch(p) for p in split(unique, self.batch_size))
            ):
                found.update(part)
            answers = [found.get(i) for i in ids]
        return Fetched.of_mappings(answers, names, self._source_names)

    # -- per ID

    async def _fetch_each(self, ids: Sequence[str]) -> list[dict[str, Any] | Failure]:
        """One request per ID, made by at most ``concurrency`` workers pulling from the list.

        (Not a task per ID: a chunk's thousand tasks made at once would hold up the event loop
        for milliseconds, delaying every answer in flight; the workers cost a task each.)
        """
        answers: list[dict[str, Any] | Failure] = [_UNSET] * len(ids)
        todo = iter(enumerate(ids))

        async def worker() -> None:
            for i, id_ in todo:
                answers[i] = await self._fetch_one(id_)

        workers = min(len(ids), self._endpoint.connections)
        await asyncio.gather(*(worker() for _ in range(workers)))
        return answers

    async def _fetch_one(self, id_: str) -> dict[str, Any] | Failure:
        url = encode_id(id_).join(self._template)
        return await self._endpoint.request("GET", url, self._parse_one, per_id=True)

    def _parse_one(self, content: bytes) -> dict[str, Any]:
        return features_at(parse_json(content), self._features_path, "response")

    # -- batch

    async def _fetch_batch(self, ids: Sequence[str]) -> dict[str, dict[str, Any] | Failure]:
        """Features (or the request's Failure) for the IDs the answer has; absent: not found."""
        body = orjson.dumps({self.config.ids_key: list(ids)})
        answer = await self._endpoint.request(
            "POST", self._batch_url, partial(self._parse_batch, frozenset(ids)), body=body
        )
        if isinstance(answer, Failure):
            return dict.fromkeys(ids, answer)
        return answer

    def _parse_batch(
        self, asked: frozenset[str], content: bytes
    ) -> dict[str, dict[str, Any] | Failure]:
        results = dig(parse_json(content), self.config.results_path, "batch response")
        found: dict[str, dict[str, Any] | Failure] = {}
        if isinstance(results, list) and self._single_key_path:
            quick = _records_quickly(results, self.config.id_field, self._features_path, asked)
            if quick is not None:
                return quick
        if isinstance(results, list):
            id_field = self.config.id_field
            path = self._features_path
            for record in results:
                if not isinstance(record, dict) or id_field not in record:
                    raise Malformed(f"a result record has no '{id_field}'")
                key = _id_text(record[id_field])
                if key is None or key not in asked:
                    continue  # not an ID we asked for
                features = features_at(record, path, "batch response")
                if found.setdefault(key, features) != features:
                    raise Malformed("two different records for one ID")
        elif isinstance(results, dict):
            path = self.config.features_path or ""
            for key, value in results.items():
                if key in asked:
                    found[key] = features_at(value, path, "batch response")
        else:
            raise Malformed(f"'{self.config.results_path}' is neither a list nor an object")
        return found


def _records_quickly(
    results: list[Any], id_field: str, path: str, asked: frozenset[str]
) -> dict[str, dict[str, Any] | Failure] | None:
    """The common answer, ``[{id_field: "<asked id>", path: {...}}, ...]``, read with one
    comprehension and checked by type sets in C; None for anything else (read record by
    record then, with each problem named)."""
    try:
        found: dict[str, Any] = {record[id_field]: record[path] for record in results}
    except (TypeError, KeyError, IndexError):
        return None
    if (
        len(found) == len(results)
        and set(map(type, found)) <= {str}
        and set(map(type, found.values())) <= {dict}
        and found.keys() <= asked
    ):
        return found
    return None


def _id_text(value: Any) -> str | None:
    """An ID from a response as the string it was asked as (services may echo numbers), or
    None for a value that cannot be an ID we asked for (a float, a boolean, null, ...)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


__all__ = ["HttpConfig", "HttpSource", "encode_id"]
