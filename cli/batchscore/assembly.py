"""From the sources' answers to the model's matrix: which source gives which feature, and
the columns of a chunk's answers placed straight into its float64 matrix in model order."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from batchscore.chunk import Chunk, Status
from batchscore.errors import ConfigError
from batchscore.model import ModelSet
from batchscore.sources import NOT_FOUND, Fetched, Source
from batchscore.sources.input import InputSource


def feature_owners(
    sources: Sequence[Source], model_features: Sequence[str]
) -> dict[str, frozenset[str]]:
    """Per source, the model features it must NOT contribute because another source wins them.

    A model feature provided by two sources is a config error unless exactly one of them lists it
    in ``wins``.  A source that names its features only in its answers (``provides()`` is None)
    counts as providing what it wins, and loses whatever another source wins.
    """
    wanted = set(model_features)
    wins = {s.name: set(getattr(getattr(s, "config", None), "wins", ())) for s in sources}
    providers: dict[str, list[str]] = {}
    drop: dict[str, set[str]] = {s.name: set() for s in sources}
    for source in sources:
        provided = source.provides()
        if provided is None:
            provided = frozenset(wins[source.name])
            drop[source.name].update(*(v for k, v in wins.items() if k != source.name))
        for name in provided & wanted:
            providers.setdefault(name, []).append(source.name)
    order = {name: j for j, name in enumerate(model_features)}
    # In model order, so that a conflict is always named by the same (first) feature.
    for name, owners in sorted(providers.items(), key=lambda item: order[item[0]]):
        if len(owners) < 2:
            continue
        winners = [source for source, won in wins.items() if name in won]
        if len(winners) != 1:
            from_input = [s.name for s in sources if isinstance(s, InputSource)]
            raise ConfigError(
                f"feature '{name}' comes from sources {', '.join(owners)}; "
                f"add it to `wins` of exactly one of them"
                + (
                    f" (or list the input columns to use in `columns` of source '{from_input[0]}')"
                    if from_input and from_input[0] in owners
                    else ""
                )
            )
        for owner in owners:
            if owner != winners[0]:
                drop[owner].add(name)
    return {k: frozenset(v) for k, v in drop.items()}


def source_columns(sources: Sequence[Source], model_features: Sequence[str]) -> list[list[str]]:
    """Per source, the model features it fills, in model order (see :func:`feature_owners`)."""
    drop = feature_owners(sources, model_features)
    columns = []
    for source in sources:
        provided = source.provides()
        columns.append(
            [
                name
                for name in model_features
                if name not in drop[source.name] and (provided is None or name in provided)
            ]
        )
    return columns


class Assembler:
    """Merges the sources' answers for a chunk: row statuses and the feature matrix."""

    def __init__(self, sources: Sequence[Source], models: ModelSet) -> None:
        self.sources = list(sources)
        self.encoder = models.encoder
        self.width = len(models.features)
        self.columns = source_columns(self.sources, models.feature_names)
        owners: dict[str, int] = {}
        for columns in self.columns:
            for name in columns:
                owners[name] = owners.get(name, 0) + 1
        # A column that more than one source may fill (sources that name their features only
        # in answers): later sources fill it only where they have a value.
        self.shared = frozenset(name for name, count in owners.items() if count > 1)

    def assemble(
        self, chunk: Chunk, rows: npt.NDArray[np.intp], answers: Sequence[Fetched]
    ) -> None:
        """Fill ``chunk.matrix`` at ``rows`` (the rows fetched) and mark rows that failed."""
        matrix = np.full((len(chunk), self.width), np.nan, dtype=np.float64)
        everything = len(rows) == len(chunk)
        found = np.zeros(len(rows), dtype=np.bool_)
        for source, names, fetched in zip(self.sources, self.columns, answers, strict=True):
            found |= fetched.found
            for position in sorted(fetched.failures):
                row = int(rows[position])
                failure = fetched.failures[position]
                if failure.reason == NOT_FOUND or chunk.status[row] != Status.OK:
                    continue
                record = chunk.record(
                    row, "fetch", source.name, failure.reason, failure.status, failure.attempts
                )
                chunk.fail(row, Status.FAILED, record)
            for name in names:
                for j in self.encoder.slots[name]:  # one column per encoding of the feature
                    values = self.encoder.column(j, fetched.columns[name])
                    if name in self.shared:
                        current = matrix[:, j] if everything else matrix[rows, j]
                        values = np.where(np.isnan(values), current, values)
                    if everything:
                        matrix[:, j] = values
                    else:
                        matrix[rows, j] = values
        missing = rows[~found]
        single = self.sources[0].name if len(self.sources) == 1 else None
        for row in missing.tolist():
            if chunk.status[row] == Status.OK:
                record = chunk.record(row, "fetch", single, NOT_FOUND, None, 1)
                chunk.fail(row, Status.NOT_FOUND, record)
        chunk.matrix = matrix


def merge_answers(
    sources: Sequence[Source], models: ModelSet, ids: list[str], answers: Sequence[Fetched]
) -> Chunk:
    """The chunk ``batchscore check`` sees: the sample's rows assembled as a run would."""
    chunk = Chunk(
        index=0,
        first_line=1,
        last_line=len(ids),
        lines=np.arange(1, len(ids) + 1, dtype=np.int64),
        ids=ids,
        keep=None,
        status=np.zeros(len(ids), np.uint8),
    )
    Assembler(sources, models).assemble(chunk, np.arange(len(ids)), answers)
    return chunk
