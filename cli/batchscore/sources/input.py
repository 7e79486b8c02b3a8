"""The input source: model features from the input file's own columns (CSV, TSV, JSON lines).

``kind = "input"`` scores a file an analyst already has, the way ``mlflow models predict``
takes feature rows: no service, no request.  The reader thread carries the chosen columns'
raw values into each chunk beside the IDs (:attr:`~batchscore.chunk.Chunk.inputs`, one
column per input column), and this source answers a chunk from them without any I/O: every
row is found, a missing value is missing (NaN) as elsewhere.  The values are the cells as read
(text from CSV and TSV, JSON values from JSON lines) and go through the model's one conversion
rule (:class:`~batchscore.model.Encoder`) like every other source's: ``"3.5"`` and ``3.5`` are
the same number, an empty cell and ``null`` are missing, a categorical's text is its category.

Which columns: ``columns`` names them; by default, every input column (but the ID column) whose
name, after ``rename``, is a model feature.  The header of a CSV or TSV decides; for JSON lines,
the fields of the first line that holds an ID.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from batchscore.configtools import suggest
from batchscore.sources import Fetched, check_columns
from batchscore.sources.configs import InputConfig

SHOWN_COLUMNS = 30


def _shown_columns(column: str, header: Collection[str]) -> str:
    """What a message about a column the input lacks adds: a near name, and the columns."""
    names = list(header)
    shown = ", ".join(names[:SHOWN_COLUMNS]) + (", ..." if len(names) > SHOWN_COLUMNS else "")
    return f"{suggest(column, names)} (its columns: {shown or 'none'})"


class InputSource:
    """Answers a chunk from the feature values the reader carried in it."""

    batch_size = 1  # no requests: never widens a chunk

    def __init__(self, config: InputConfig) -> None:
        self.config = config
        self.name = config.name
        self._chosen: tuple[str, ...] | None = None  # input columns, once the input is read
        self._position: dict[str, int] = {}  # model feature -> its column in Chunk.inputs
        self._sample: dict[str, tuple[Any, ...]] = {}  # ID -> values, for ``check``'s sample

    def choose(
        self, header: Sequence[str], id_column: str, model_features: Collection[str], what: str
    ) -> tuple[str, ...]:
        """The input columns to carry, given the input's columns (``what`` names them in a
        message: ``the input CSV``).  A ``columns`` or ``rename`` entry the input lacks is a
        ConfigError naming the columns it has."""
        config = self.config
        check_columns(config, header, f"source '{self.name}'", what, _shown_columns)
        rename = config.rename
        if config.columns:
            chosen = config.columns
        else:
            wanted = set(model_features)
            chosen = tuple(
                c for c in dict.fromkeys(header) if c != id_column and rename.get(c, c) in wanted
            )
        self._chosen = chosen
        self._position = {rename.get(c, c): i for i, c in enumerate(chosen)}
        return chosen

    @property
    def width(self) -> int:
        """Input columns carried in each chunk (0 until the input's columns are known)."""
        return len(self._chosen or ())

    @property
    def chosen(self) -> tuple[str, ...] | None:
        """The input columns carried, once the input's header (or first object) was read."""
        return self._chosen

    def provides(self) -> frozenset[str] | None:
        """The model names of the chosen columns; None while the input has not been read (an
        empty input: there is nothing to answer)."""
        if self._chosen is None:
            return None
        return frozenset(self._position)

    def answer(
        self,
        inputs: Sequence[Sequence[Any]],
        rows: npt.NDArray[np.intp],
        everything: bool,
        names: Sequence[str],
    ) -> Fetched:
        """The ``names`` features of a chunk's ``rows`` (all of them when ``everything``), from
        its carried ``inputs``: every row found."""
        n = len(rows)
        picked = None if everything else rows.tolist()
        columns: dict[str, Sequence[Any]] = {}
        for name in names:
            values = inputs[self._position[name]]
            columns[name] = values if picked is None else [values[r] for r in picked]
        return Fetched(np.ones(n, np.bool_), {}, columns)

    def preload(self, values: Mapping[str, tuple[Any, ...]]) -> None:
        """The carried values of some IDs, for :meth:`fetch` (``check`` fetches its sample)."""
        self._sample = dict(values)

    async def open(self) -> None:
        """Nothing to open."""

    async def fetch(self, ids: Sequence[str], names: Sequence[str]) -> Fetched:
        """The preloaded IDs' values (a run answers from the chunk instead: :meth:`answer`);
        an ID that was not preloaded is not found."""
        rows = [self._sample.get(i) for i in ids]
        found = np.array([r is not None for r in rows], dtype=np.bool_)
        columns: dict[str, Sequence[Any]] = {}
        for name in names:
            j = self._position.get(name)  # none: the input's columns are not known yet
            columns[name] = [None if r is None or j is None else r[j] for r in rows]
        return Fetched(found, {}, columns)

    async def close(self) -> None:
        """Nothing to close."""


def input_values(
    sources: Sequence[Any], id_name: str, model_features: Collection[str]
) -> Callable[[Sequence[str], str], Sequence[str]] | None:
    """What the input's reader needs to carry an input source's columns (``ChooseValues``
    of :mod:`batchscore.ids`), or None when no source is of kind input.  ``id_name`` is the
    ID's column (or JSON field), never a feature by default."""
    source = next((s for s in sources if isinstance(s, InputSource)), None)
    if source is None:
        return None

    def choose(header: Sequence[str], what: str) -> Sequence[str]:
        return source.choose(header, id_name, model_features, what)

    return choose


__all__ = ["InputSource", "input_values"]
