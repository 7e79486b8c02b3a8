"""The feature server as its own process, for tests that run real scoring jobs against it.

An in-process job checks its model in a forked child, which is only safe (and fast) while the
test process has a single thread; a :class:`~featureserver.FeatureServer` in a thread would push
every job onto the slow subprocess path.  So jobs talk to ``tests/featureserver.py`` run as a
process, configured with its command-line fault flags, and read its statistics from
``GET /_stats``.  Tests of a source alone use the in-thread server directly.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from batchscore.report import RunStats
from batchscore.resolving import source_configs
from batchscore.settings import FetchSettings
from batchscore.sources import NOT_FOUND, Failure, Fetched, retry
from batchscore.sources.build import build_sources
from batchscore.sources.limits import Limits
from conftest import ScoreInProcess, TrainedModel, read_output
from conftest import write_config as write_config_file

SERVER_SCRIPT = Path(__file__).resolve().parent / "featureserver.py"


def rows_as_data(ids: Sequence[str], matrix: np.ndarray) -> dict[str, dict[str, Any]]:
    """Feature records ``id -> {f0: value, ...}`` for the server; NaN becomes JSON null."""
    return {
        ident: {f"f{j}": None if math.isnan(value) else float(value) for j, value in enumerate(row)}
        for ident, row in zip(ids, matrix.tolist(), strict=True)
    }


class ServerProcess:
    """A running ``tests/featureserver.py``: its base URL and its statistics."""

    def __init__(self, url: str, proc: subprocess.Popen[str]) -> None:
        self.url = url
        self.proc = proc

    def stats(self) -> dict[str, Any]:
        """``GET /_stats`` (never counted by the server itself)."""
        with httpx.Client(trust_env=False, timeout=10) as client:
            body: dict[str, Any] = client.get(f"{self.url}/_stats").json()
        return body

    def raw_body(
        self, route: str, body: bytes | None, *, encoding: str | None = None, padding: int = 0
    ) -> None:
        """Answer ``route`` (features, batch, feast) 200 with ``body`` from now on (None:
        normal answers again): sent with ``Content-Encoding: encoding`` if given (``body`` is
        then compressed), and ``padding`` spaces streamed after it."""
        params = {"route": route, **({"clear": "1"} if body is None else {})}
        if encoding is not None:
            params["encoding"] = encoding
        if padding:
            params["padding"] = str(padding)
        with httpx.Client(trust_env=False, timeout=10) as client:
            client.post(f"{self.url}/_raw-body", params=params, content=body or b"")


@contextmanager
def server_process(
    tmp_path: Path, data: dict[str, dict[str, Any]], *flags: str
) -> Iterator[ServerProcess]:
    """Run the feature server over ``data`` with fault ``flags`` (e.g. ``--p-500 0.1``)."""
    path = tmp_path / f"server-data-{len(list(tmp_path.glob('server-data-*')))}.json"
    path.write_bytes(orjson.dumps(data))
    proc = subprocess.Popen(
        [sys.executable, str(SERVER_SCRIPT), "--json-data", str(path), *flags],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("READY "):
            raise RuntimeError(f"feature server did not start: {line!r}")
        yield ServerProcess(line.split(" ", 1)[1], proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run_scoring(
    score_in_process: ScoreInProcess,
    tmp_path: Path,
    model: TrainedModel,
    sources: Sequence[dict[str, Any]],
    ids: Sequence[str] | None = None,
    fetch: dict[str, Any] | None = None,
    **flags: Any,
) -> tuple[Any, list[dict[str, Any]], Path]:
    """Score ``ids`` (default: all the model's IDs); return the run, output rows, errors path."""
    config = write_config_file(
        tmp_path / "config.toml", model=model.model_path, sources=sources, fetch=fetch or {}
    )
    id_file = tmp_path / "ids.txt"
    id_file.write_text("".join(f"{i}\n" for i in (ids or model.ids)), encoding="utf-8")
    out = tmp_path / "scores.jsonl"
    run = score_in_process(config=config, ids=str(id_file), output=str(out), **flags)
    return run, read_output(out), Path(f"{out}.errors.jsonl")


FetchResult = dict[str, Any] | Failure


def per_id(fetched: Fetched, names: Sequence[str]) -> list[FetchResult]:
    """A source's column-wise answer as one result per ID: its features (every name asked,
    None where missing), or why not."""
    results: list[FetchResult] = []
    for i, found in enumerate(fetched.found.tolist()):
        if i in fetched.failures:
            results.append(fetched.failures[i])
        elif not found:
            results.append(Failure(NOT_FOUND))
        else:
            results.append({name: fetched.columns[name][i] for name in names})
    return results


def fetch_all(
    sources: Sequence[dict[str, Any]],
    ids: Sequence[str],
    *,
    concurrency: int = 8,
    fetch: FetchSettings | None = None,
    names: Sequence[str] = ("f0",),
) -> tuple[list[list[FetchResult]], RunStats]:
    """Build, open and fetch ``ids`` from each source directly, as a run would; results per
    source and ID (the features asked are the source's own when it names them, else
    ``names``)."""
    stats = RunStats()

    async def main() -> list[list[FetchResult]]:
        limits = Limits(concurrency=concurrency, observe=stats.observe)
        built = build_sources(source_configs(sources), limits, fetch or FetchSettings(), stats)
        for source in built:
            await source.open()
        try:
            results = []
            for source in built:
                asked = sorted(source.provides() or names)
                results.append(per_id(await source.fetch(list(ids), asked), asked))
            return results
        finally:
            for source in built:
                await source.close()

    return asyncio.run(main()), stats


@pytest.fixture
def no_backoff_waits() -> Iterator[None]:
    """Attempts still count, but nobody waits between them (the retry policy's testing switch)."""
    retry.set_testing(True)
    try:
        yield
    finally:
        retry.set_testing(False)
