"""What reading a body through ``read_capped`` costs a normal answer, against ``response.read()``.

batchscore's http and feast sources read every answer with
:func:`batchscore.sources.httpclient.read_capped` (streamed, decompressed a block at a time, up
to the source's ``max_response_bytes``) instead of aiohttp's ``response.read()`` (whole, without
bound).  This measures the difference where it could cost: raw aiohttp against
``tests/featureserver.py`` in its own process (20 ms latency, 50 float features per ID), every
answer parsed with orjson, in two shapes:

``per_id``
    ``GET /features/{id}``, ~1 KB answers, 64 requests in flight (P1's shape).
``batch``
    ``POST /batch`` of 100 IDs, ~100 KB answers, 16 requests in flight (P2's shape).

Each cell runs for ``--seconds`` after a warm-up; the two readers alternate within every round
(the order flips each round) for ``--rounds`` rounds, and the median client CPU per request
(``time.process_time``) is reported.  The server is pinned to core 0 and this process to
core 1 when there are two cores.

Usage::

    .venv/bin/python bench/read_capped.py                  # prints a Markdown table
    .venv/bin/python bench/read_capped.py --rounds 7 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
from http_clients import IDS, feature_server

from batchscore.sources.httpclient import (
    MAX_PER_ID_RESPONSE_BYTES,
    MAX_RESPONSE_BYTES,
    read_capped,
)

Reader = Callable[[aiohttp.ClientResponse], Awaitable[bytes | None]]
SHAPES = {"per_id": 64, "batch": 16}  # requests in flight


def readers(shape: str) -> dict[str, Reader]:
    """The two ways to read a body, with the cap a source of ``shape`` has by default."""
    cap = MAX_PER_ID_RESPONSE_BYTES if shape == "per_id" else MAX_RESPONSE_BYTES

    async def whole(response: aiohttp.ClientResponse) -> bytes | None:
        return await response.read()

    async def capped(response: aiohttp.ClientResponse) -> bytes | None:
        return await read_capped(response, cap)

    return {"response.read()": whole, "read_capped": capped}


async def measure(url: str, shape: str, read: Reader, seconds: float) -> tuple[float, float]:
    """(requests per second, client CPU seconds per request) over ``seconds``."""
    concurrency = SHAPES[shape]
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        counter = iter(range(10**9))

        async def one() -> None:
            n = next(counter)
            if shape == "per_id":
                request = session.get(f"{url}/features/{IDS[n % len(IDS)]}")
            else:
                start = n * 100 % (len(IDS) - 100)
                body = orjson.dumps({"ids": IDS[start : start + 100]})
                request = session.post(f"{url}/batch", data=body)
            async with request as response:
                content = await read(response)
                assert content is not None
                orjson.loads(content)

        async def worker(until: float, done: list[int]) -> None:
            while time.perf_counter() < until:
                await one()
                done[0] += 1

        warm = [0]
        await asyncio.gather(*(worker(time.perf_counter() + 0.5, warm) for _ in range(concurrency)))
        done = [0]
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(wall + seconds, done) for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return done[0] / wall, cpu / max(done[0], 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per cell")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians kept")
    parser.add_argument("--latency", type=float, default=0.02, help="server latency (s)")
    args = parser.parse_args(argv)
    pin = (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity")
    cpu: dict[tuple[str, str], list[float]] = {}
    rate: dict[tuple[str, str], list[float]] = {}
    with feature_server(args.latency, pin) as url:
        if pin:
            os.sched_setaffinity(0, {1})
        for round_ in range(args.rounds):
            for shape in SHAPES:
                pairs = list(readers(shape).items())
                for name, read in pairs if round_ % 2 == 0 else pairs[::-1]:
                    rps, per = asyncio.run(measure(url, shape, read, args.seconds))
                    cpu.setdefault((shape, name), []).append(per * 1e6)
                    rate.setdefault((shape, name), []).append(rps)
                    print(
                        f"round {round_} {shape} {name}: {rps:,.0f} req/s, {per * 1e6:,.0f} µs",
                        file=sys.stderr,
                    )
    lines = [
        "| answer | reader | requests/s (median) | client CPU per request (median; each round) |",
        "|---|---|---:|---|",
    ]
    for (shape, name), values in cpu.items():
        rounds = ", ".join(f"{v:,.0f}" for v in values)
        lines.append(
            f"| {shape} | `{name}` | {statistics.median(rate[(shape, name)]):,.0f} | "
            f"{statistics.median(values):,.0f} µs ({rounds}) |"
        )
    lines += [
        "",
        f"- machine: {os.cpu_count()} cores, {platform.machine()}, {platform.system()} "
        f"{platform.release()}; python {platform.python_version()}, aiohttp {aiohttp.__version__}",
        f"- command: `.venv/bin/python bench/read_capped.py --rounds {args.rounds} --seconds "
        f"{args.seconds:g}` ({time.strftime('%Y-%m-%d')})",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
