"""HTTP client throughput: fetch-only requests/s and client CPU per request, per client stack.

Why batchscore's http and feast sources send on aiohttp directly (PERF-NOTES): this measures,
against ``tests/featureserver.py`` in its own process (20 ms latency, 50 float features per
answer), ``GET /features/{id}`` with each candidate at several concurrencies:

``httpx default``
    ``httpx.AsyncClient`` with its own (httpcore) pool of ``concurrency`` connections.
``httpx + AiohttpTransport``
    ``httpx.AsyncClient(transport=httpx_aiohttp.AiohttpTransport(...))`` (skipped when
    ``httpx-aiohttp`` is not installed: batchscore no longer depends on it).
``batchscore Endpoint``
    :meth:`batchscore.sources.httpclient.Endpoint.request` on its pooled aiohttp session: limits,
    per-attempt timeout, statuses and the retry policy, the URL passed pre-encoded, orjson.
``batchscore per_id source``
    The whole per-ID source path: URL template, the Endpoint above, features path, rename.
``raw aiohttp``
    ``aiohttp.ClientSession`` with a ``TCPConnector(limit=concurrency)``.

Each cell runs ``concurrency`` workers for ``--seconds`` after a warm-up and counts completed
requests (every answer is read and parsed with orjson); the best of ``--repeat`` interleaved
rounds is kept.  Client CPU is this process's CPU time (``time.process_time``) divided by the
requests.  On a machine with 2+ cores the server is pinned
to core 0 and the client to core 1.  The ideal rate is ``concurrency / latency``.

Usage::

    .venv/bin/python bench/http_clients.py                  # prints a Markdown table
    .venv/bin/python bench/http_clients.py --write          # also bench/results/http-clients.md
    .venv/bin/python bench/http_clients.py --concurrency 64 --clients endpoint "raw aiohttp"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson

from batchscore.report import RunStats
from batchscore.resolving import source_configs
from batchscore.settings import FetchSettings
from batchscore.sources import Failure
from batchscore.sources.build import build_sources
from batchscore.sources.httpclient import ClientOptions, Endpoint
from batchscore.sources.limits import Limits
from batchscore.sources.retry import RetryPolicy

try:
    from httpx_aiohttp import AiohttpTransport
except ImportError:  # the comparison row is skipped
    AiohttpTransport = None

ROOT = Path(__file__).resolve().parent.parent

SERVER = ROOT / "tests" / "featureserver.py"
RESULTS = ROOT / "bench" / "results" / "http-clients.md"
IDS = [f"C{i:06d}" for i in range(20_000)]

Fetch = Callable[[str], Awaitable[Any]]


@contextlib.contextmanager
def feature_server(latency: float, pin: bool) -> Any:
    """Run the feature server in its own process; yield its base URL."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.json"
        data.write_bytes(
            orjson.dumps(
                {i: {f"f{j}": (n * 31 + j) / 7.0 for j in range(50)} for n, i in enumerate(IDS)}
            )
        )
        command = [sys.executable, str(SERVER), "--json-data", str(data), "--latency", str(latency)]
        if pin:
            command = ["taskset", "-c", "0", *command]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if not line.startswith("READY "):
                raise RuntimeError(f"feature server did not start: {line!r}")
            yield line.split(" ", 1)[1]
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@contextlib.asynccontextmanager
async def httpx_default(url: str, concurrency: int) -> AsyncIterator[Fetch]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, trust_env=False, timeout=60) as client:

        async def fetch(id_: str) -> Any:
            response = await client.get(f"{url}/features/{id_}")
            return orjson.loads(response.content)

        yield fetch


@contextlib.asynccontextmanager
async def httpx_aiohttp_transport(url: str, concurrency: int) -> AsyncIterator[Fetch]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    transport = AiohttpTransport(limits=limits, trust_env=False)
    async with httpx.AsyncClient(transport=transport, trust_env=False, timeout=60) as client:

        async def fetch(id_: str) -> Any:
            response = await client.get(f"{url}/features/{id_}")
            return orjson.loads(response.content)

        yield fetch


@contextlib.asynccontextmanager
async def batchscore_endpoint(url: str, concurrency: int) -> AsyncIterator[Fetch]:
    stats = RunStats()
    endpoint = Endpoint(
        source="bench",
        options=ClientOptions(timeout=60, headers={}),
        limits=Limits(concurrency=concurrency, observe=stats.observe),
        policy=RetryPolicy(retries=0),
        stats=stats,
    )
    endpoint.open()
    try:

        async def fetch(id_: str) -> Any:
            answer = await endpoint.request(
                "GET", f"{url}/features/{id_}", orjson.loads, per_id=True
            )
            if isinstance(answer, Failure):
                raise RuntimeError(f"fetch failed: {answer}")
            return answer

        yield fetch
    finally:
        await endpoint.close()


@contextlib.asynccontextmanager
async def batchscore_source(url: str, concurrency: int) -> AsyncIterator[Fetch]:
    stats = RunStats()
    limits = Limits(concurrency=concurrency, observe=stats.observe)
    table = {
        "name": "bench",
        "kind": "http",
        "url": f"{url}/features/{{id}}",
        "features_path": "features",
        "timeout": 60.0,
    }
    [source] = build_sources(source_configs([table]), limits, FetchSettings(retries=0), stats)
    await source.open()
    try:

        async def fetch(id_: str) -> Any:
            [result] = await source.fetch([id_])
            if not isinstance(result, dict):
                raise RuntimeError(f"fetch failed: {result}")
            return result

        yield fetch
    finally:
        await source.close()


@contextlib.asynccontextmanager
async def raw_aiohttp(url: str, concurrency: int) -> AsyncIterator[Fetch]:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def fetch(id_: str) -> Any:
            async with session.get(f"{url}/features/{id_}") as response:
                return orjson.loads(await response.read())

        yield fetch


CLIENTS: dict[str, Callable[[str, int], contextlib.AbstractAsyncContextManager[Fetch]]] = {
    "httpx default (httpcore pool)": httpx_default,
    "httpx + httpx_aiohttp.AiohttpTransport": httpx_aiohttp_transport,
    "batchscore Endpoint (aiohttp direct)": batchscore_endpoint,
    "batchscore per_id source (whole path)": batchscore_source,
    "raw aiohttp": raw_aiohttp,
}
if AiohttpTransport is None:
    del CLIENTS["httpx + httpx_aiohttp.AiohttpTransport"]


async def measure(
    make: Callable[[str, int], contextlib.AbstractAsyncContextManager[Fetch]],
    url: str,
    concurrency: int,
    seconds: float,
) -> tuple[float, float]:
    """(requests per second, client CPU seconds per request) over ``seconds``."""
    async with make(url, concurrency) as fetch:
        counter = iter(range(10**9))

        async def worker(until: float, done: list[int]) -> None:
            while time.perf_counter() < until:
                await fetch(IDS[next(counter) % len(IDS)])
                done[0] += 1

        warm: list[int] = [0]
        await asyncio.gather(*(worker(time.perf_counter() + 0.5, warm) for _ in range(concurrency)))
        done = [0]
        cpu, wall = time.process_time(), time.perf_counter()
        until = wall + seconds
        await asyncio.gather(*(worker(until, done) for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return done[0] / wall, cpu / max(done[0], 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 64, 256])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per cell")
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds over every cell; the best round is kept"
    )
    parser.add_argument("--latency", type=float, default=0.02, help="server latency (s)")
    parser.add_argument(
        "--clients",
        nargs="+",
        metavar="TEXT",
        help="only the clients whose name contains one of these (case-insensitive)",
    )
    parser.add_argument("--write", action="store_true", help=f"write {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    clients = {
        name: make
        for name, make in CLIENTS.items()
        if not args.clients or any(t.lower() in name.lower() for t in args.clients)
    }
    pin = (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity")
    results: dict[str, dict[int, tuple[float, float]]] = {}
    with feature_server(args.latency, pin) as url:
        if pin:
            os.sched_setaffinity(0, {1})
        # Rounds interleave the clients, so a burst of load elsewhere on a shared machine hits
        # one round of each, not every cell of one client; the fastest round of a cell is kept.
        for round_ in range(args.repeat):
            for name, make in clients.items():
                for c in args.concurrency:
                    rate, cpu = asyncio.run(measure(make, url, c, args.seconds))
                    best = results.setdefault(name, {}).get(c)
                    if best is None or rate > best[0]:
                        results[name][c] = (rate, cpu)
                    record = {
                        "round": round_,
                        "client": name,
                        "concurrency": c,
                        "rps": round(rate),
                        "cpu_us": round(cpu * 1e6),
                    }
                    print(json.dumps(record), file=sys.stderr)
    table = render(results, args)
    print(table)
    if args.write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(table, encoding="utf-8")
    return 0


def render(results: dict[str, dict[int, tuple[float, float]]], args: argparse.Namespace) -> str:
    """The results as Markdown, with the machine and the command."""
    cs = args.concurrency
    ideal = " | ".join(f"c={c} (ideal {c / args.latency:,.0f}/s)" for c in cs)
    lines = [
        "# HTTP client stacks: fetch-only throughput and client CPU",
        "",
        "`GET /features/{id}` against `tests/featureserver.py` in its own process "
        f"({args.latency * 1000:.0f} ms latency, 50 floats per answer); every answer read and "
        "parsed with orjson. Cells: requests/s, client CPU per request.",
        "",
        f"| client | {ideal} |",
        "|---|" + "---|" * len(cs),
    ]
    for name, row in results.items():
        cells = " | ".join(f"{row[c][0]:,.0f} req/s, {row[c][1] * 1e6:,.0f} µs" for c in cs)
        lines.append(f"| {name} | {cells} |")
    lines += [
        "",
        f"- machine: {os.cpu_count()} cores (`nproc`), {platform.machine()}, "
        f"{platform.system()} {platform.release()}; server pinned to core 0, client to core 1",
        f"- python {platform.python_version()}, "
        + ", ".join(
            f"{name} {_version(name)}"
            for name in ("aiohttp", "httpx", "httpcore", "httpx-aiohttp", "orjson")
        ),
        f"- command: `.venv/bin/python bench/http_clients.py --concurrency "
        f"{' '.join(map(str, cs))} --seconds {args.seconds:g} --repeat {args.repeat}"
        + (" --clients " + " ".join(repr(t) for t in args.clients) if args.clients else "")
        + (" --write" if args.write else "")
        + "`",
        f"- measured {time.strftime('%Y-%m-%d')}: {args.seconds:g} s per cell after a 0.5 s "
        f"warm-up, the best of {args.repeat} interleaved rounds; the machine is shared, so "
        "absolute figures move by tens of percent between runs (the ranking has held in every "
        "run)",
        "",
        "Reading it:",
        "",
        "- httpx's own pool gets *slower* as concurrency rises (encode/httpx#3215: the pool does "
        "work proportional to its connections on every request); at 64 connections it is barely "
        "above a synchronous loop (44 requests/s in PERF-NOTES). It is not an option here.",
        "- httpx on aiohttp's pool scales with concurrency until the client's CPU is the limit; "
        "the httpx layer (request and response objects) costs 0.3-0.5 ms of client CPU per "
        "request over raw aiohttp, and a per-ID run is bound by the event loop's CPU.",
        "- So batchscore sends on aiohttp directly (`Endpoint`): URL passed pre-encoded (IDs like "
        "`..` stay one segment), headers built once per source, aiohttp's hidden second attempt "
        "turned into an ordinary counted failure by a client middleware. What it adds over raw "
        "aiohttp is the retry policy, limits, per-attempt timeout and status handling.",
        "- Per-ID fetching stays client-CPU-bound on one core. "
        'Where the service has a batch endpoint, `mode = "batch"` (100 IDs per request) '
        "cuts the client's CPU per ID about twentyfold (PERF-NOTES).",
    ]
    return "\n".join(lines) + "\n"


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    sys.exit(main())
