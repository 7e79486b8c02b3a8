"""Feature sources: one module per kind, behind the small :class:`Source` protocol.

A source answers ``fetch(ids, names)`` column-wise, with one :class:`Fetched`: which IDs it
found, why it failed for others, and for each requested feature name (the model's names, after
``rename``) one raw value per ID.  The pipeline turns those columns into the chunk's float
matrix; a source never sees the model.  Every request a source makes goes through the shared
:class:`~batchscore.sources.limits.Limits`, so the bound on requests in flight and the rate
limit hold over all sources together.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a source could not give an ID's features."""

    reason: str  # not_found, timeout, connect_error, http_500, malformed_response, ...
    status: int | None = None
    attempts: int = 1
    retryable: bool = False


NOT_FOUND = "not_found"


@dataclass(slots=True)
class Fetched:
    """One source's answer for ``n`` IDs, column-wise.

    A row is found (``found[i]``), failed (``failures[i]``), or else not found (a source may
    say why in ``failures[i]`` with reason ``not_found``, e.g. its 404).  ``columns`` holds, for
    each requested feature name, ``n`` raw values (None where missing: rows not found or
    failed, and features a found row lacks).
    """

    found: npt.NDArray[np.bool_]
    failures: dict[int, Failure] = field(default_factory=dict)
    columns: Mapping[str, Sequence[Any]] = field(default_factory=dict)

    @classmethod
    def of_mappings(
        cls,
        answers: Sequence[Mapping[str, Any] | Failure | None],
        names: Sequence[str],
        source_names: Mapping[str, str] | None = None,
    ) -> Fetched:
        """From one answer per ID: a feature mapping, a Failure, or None (not found).

        ``source_names`` maps a model name to the name the source uses (``rename`` inverted).
        """
        n = len(answers)
        failures: dict[int, Failure] = {}
        rows: Sequence[Mapping[str, Any]]
        if set(map(type, answers)) == {dict}:  # the common case: every ID answered
            found = np.ones(n, np.bool_)
            rows = answers  # type: ignore[assignment]  # all dicts, checked above
        else:
            found = np.zeros(n, np.bool_)
            empty: dict[str, Any] = {}
            rows = []
            for i, answer in enumerate(answers):
                if isinstance(answer, Failure):
                    failures[i] = answer
                    rows.append(empty)
                elif answer is None:
                    rows.append(empty)
                else:
                    found[i] = True
                    rows.append(answer)
        lookup = source_names or {}
        keys = [lookup.get(name, name) for name in names]
        return cls(found, failures, _columns_of(rows, names, keys))

    @classmethod
    def of_rows(
        cls,
        ids: Sequence[str],
        rows: Mapping[str, Sequence[Any]],
        names: Sequence[str],
        provided: Sequence[str],
        failures: dict[int, Failure] | None = None,
    ) -> Fetched:
        """From a database's rows keyed by the asked ID, each ``(asked, *values)`` with one
        value per name of ``provided`` (the requested ``names`` the table has)."""
        ordered = list(map(rows.get, ids))
        found = np.fromiter(map(operator.is_not, ordered, repeat(None)), np.bool_, len(ordered))
        columns: dict[str, Sequence[Any]] = dict.fromkeys(names, [None] * len(ids))
        if ordered and provided:
            blank = (None,) * (1 + len(provided))
            # Rows to columns with zip, in C: no Python work per value.
            transposed = list(zip(*(row or blank for row in ordered), strict=True))
            columns.update(zip(provided, transposed[1:], strict=True))
        return cls(found, failures or {}, columns)

    @classmethod
    def failed(cls, n: int, failure: Failure, names: Sequence[str]) -> Fetched:
        """The same failure (or not found) for all ``n`` IDs."""
        failures = dict.fromkeys(range(n), failure)
        return cls(np.zeros(n, np.bool_), failures, {name: [None] * n for name in names})

    @classmethod
    def concat(cls, parts: Sequence[Fetched], names: Sequence[str]) -> Fetched:
        """The answers of consecutive parts of an ID list, as one."""
        if len(parts) == 1:
            return parts[0]
        failures: dict[int, Failure] = {}
        offset = 0
        for part in parts:
            failures.update((offset + i, f) for i, f in part.failures.items())
            offset += len(part.found)
        columns: dict[str, Sequence[Any]] = {}
        for name in names:
            column: list[Any] = []
            for part in parts:
                column.extend(part.columns[name])
            columns[name] = column
        found = np.concatenate([p.found for p in parts]) if parts else np.zeros(0, np.bool_)
        return cls(found, failures, columns)


def _columns_of(
    rows: Sequence[Mapping[str, Any]], names: Sequence[str], keys: Sequence[str]
) -> dict[str, Sequence[Any]]:
    """``names[k]`` -> the value of ``keys[k]`` in every row (None where a row lacks it)."""
    if rows:
        # Look keys up with the key objects of the answers themselves: orjson reuses one str
        # object per key name, and a lookup by the same object skips comparing the text.
        own = {key: key for key in rows[0]}
        keys = [own.get(key, key) for key in keys]
    if len(keys) > 1 and rows:
        try:  # rows that have every key: tuples by itemgetter, transposed by zip, all in C
            tuples = map(operator.itemgetter(*keys), rows)
            return dict(zip(names, zip(*tuples, strict=True), strict=True))
        except KeyError:
            pass
    return {name: [row.get(key) for row in rows] for name, key in zip(names, keys, strict=True)}


def check_columns(
    config: Any,
    schema: Collection[str],
    where: str,
    what: str,
    hint: Callable[[str, Collection[str]], str],
) -> None:
    """The ``columns`` and ``rename`` of a database source's config name columns that ``what``
    (a table, a query) has; else a ConfigError with ``hint``'s suggestion."""
    from batchscore.errors import ConfigError

    for column in config.columns:
        if column not in schema:
            raise ConfigError(f"{where}: {what} has no column '{column}'{hint(column, schema)}")
    for column in config.rename:
        if column not in schema:
            raise ConfigError(
                f"{where}: rename names column '{column}', which {what} does not have"
                f"{hint(column, schema)}"
            )


def split(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` in consecutive parts of at most ``size``: the one place requests are cut."""
    if len(items) <= size:
        return [items]
    return [items[i : i + size] for i in range(0, len(items), size)]


class Source(Protocol):
    """A feature source: open once, fetch lists of IDs, close once."""

    name: str
    batch_size: int
    """IDs per request (1 for per-ID HTTP)."""

    async def open(self) -> None:
        """Connect and validate (schema, reachability of config); raise ConfigError if unusable."""

    async def fetch(self, ids: Sequence[str], names: Sequence[str]) -> Fetched:
        """The ``names`` features (model names) of every ID, split into requests as needed."""

    async def close(self) -> None:
        """Release connections."""

    def provides(self) -> frozenset[str] | None:
        """Model feature names this source can give, if known before fetching (else None)."""


def inverse_rename(rename: Mapping[str, str]) -> dict[str, str]:
    """Model name -> the source's name, from a source's ``rename`` (source name -> model name)."""
    return {model: source for source, model in rename.items()}
