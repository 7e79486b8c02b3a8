"""Issue 21's bench: what the score and feature histograms cost a run, on P2 and P3.

The scenarios are ``bench/run.py``'s own (its data, configs and command line): P2, POSTs of
100 IDs to the test feature server (20 ms latency, not pinned: P2's *shared* layout, warmed up
before timing), concurrency 16, 200,000 shuffled IDs, the 300-tree model; P3, 1,000,000 IDs
from the 1,000,000-row SQLite table, the sample model.  Two variants per scenario, alternated
in the same session (round 1: a b, round 2: b a, ...), medians:

* **with**: the installed command, as every run is (histograms of the score and of each of the
  28 features, per chunk, in the scoring threads);
* **without**: the same command through ``bench/no_histograms.py``, which makes the per-chunk
  histogram a no-op (nothing else differs).

Round 1 checks the scores of both variants bit for bit (``run.verify``).  Besides the end-to-end
ratios, the per-chunk cost is measured in-process: ``Distribution.observe`` on 1,024-row chunks
of each scenario's model and features, which gives the cost as a share of the run's wall time
without the machine's noise; and ``compare`` of two such runs (the end-of-run cost of
``--baseline``).  Usage::

    .venv/bin/python bench/drift_cost.py                  # -> bench/results/drift-cost.md
    .venv/bin/python bench/drift_cost.py --rounds 1 --p2 20000 --p3 100000 --out /tmp/d.md
    PYTHONPATH=$PWD/cli .venv/bin/python bench/drift_cost.py   # this checkout's code
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import data
import harness
import run
from harness import FeatureServer
from second_model import measured_code

ROOT = harness.ROOT
OUT = ROOT / "bench" / "results" / "drift-cost.md"
WITHOUT = [run.PY, "bench/no_histograms.py"]


def without(variant: run.Variant) -> run.Variant:
    """The same command with the histograms off, writing its own output."""
    target = variant.output.with_name(variant.output.stem + "-nohist.csv")
    cmd = [WITHOUT[0], WITHOUT[1], *variant.cmd[1:]]
    cmd[cmd.index(str(variant.output))] = str(target)
    report = str(run.report_path(variant.output))
    cmd[cmd.index(report)] = str(run.report_path(target))
    return replace(variant, key="without histograms", cmd=cmd, output=target, measures=[])


def observe_cost(model: Path, db: Path, rows: int = 20_480) -> tuple[float, float]:
    """Microseconds per 1,024-row chunk of ``Distribution.observe`` (best of 5) on the first
    ``rows`` rows of ``db`` scored by ``model``, and of ``compare`` of two such runs."""
    import sqlite3

    import lightgbm as lgb

    from batchscore.drift import Baseline, compare
    from batchscore.edges import layout_of
    from batchscore.histograms import Distribution
    from batchscore.model import Encoder, read_info

    info = read_info(str(model))
    names = info.feature_names
    with sqlite3.connect(db) as con:
        cells = con.execute(f"SELECT {', '.join(names)} FROM {data.TABLE} LIMIT {rows}").fetchall()
    encoder = Encoder(info.features)
    x = encoder.matrix([dict(zip(names, row, strict=True)) for row in cells])
    scores = lgb.Booster(model_file=str(model)).predict(x).reshape(len(x), -1)
    layout = layout_of("", info.version, str(model), ("score",), names, raw=False)
    chunks = [(scores[i : i + 1024], x[i : i + 1024]) for i in range(0, len(x), 1024)]
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        total = Distribution(layout)
        for s, f in chunks:
            total.add(Distribution.observe(layout, s, f))
        best = min(best, time.perf_counter() - started)
    started = time.perf_counter()
    compare([total], Baseline("b", (total.copy(),)))
    compared = time.perf_counter() - started
    return best / len(chunks) * 1e6, compared * 1e6


def ratio_line(name: str, a: run.Variant, b: run.Variant, attr: str) -> str:
    values = [getattr(m, attr) for m in a.measures], [getattr(m, attr) for m in b.measures]
    per_round = [x / y for x, y in zip(*values, strict=True) if x and y]
    median = a.median(attr) / b.median(attr)
    return (
        f"| {name} | {attr} | {median:.3f}x ({(median - 1) * 100:+.1f}%) | "
        f"{min(per_round):.3f}-{max(per_round):.3f} |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--p2", type=int, default=run.Sizes().p2)
    parser.add_argument("--p3", type=int, default=run.Sizes().p3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    started = time.monotonic()
    machine = harness.machine()
    machine["batchscore measured"] = measured_code()
    p = data.ensure()
    sizes = replace(run.Sizes(), p2=args.p2, p3=args.p3)
    ids = {"p1": p.ids_p1, "p2": p.ids_p2, "p3": p.ids_p3, "p4_small": p.ids_p4_small}
    if args.p2 != run.Sizes().p2:
        ids["p2"] = data.take_ids(p.ids_p2, args.p2, p.work / "ids_drift_p2.txt")
    if args.p3 != run.Sizes().p3:
        ids["p3"] = data.take_ids(p.ids_p3, args.p3, p.work / "ids_drift_p3.txt")
    for db in (p.db_http, p.db_1m):  # a warm page cache, as run.py
        with db.open("rb") as f:
            while f.read(1 << 24):
                pass
    log_dir = p.work / "logs"
    server = FeatureServer(p.db_http, latency=run.LATENCY, cpus=None)
    scenarios: list[run.Scenario] = []
    try:
        server.wait_ready()
        run.warm_up(
            server, {"p2": p.ids_p2, "p1": p.ids_p1}, p.out / "warm-up-drift.csv", p.model_300
        )
        ctx = run.Context(p, sizes, args.rounds, {"shared": server, "split": server}, ids)
        p2 = run.p2(ctx)
        p3 = run.p3(ctx, sizes.p3, threads=False)
        for scenario in (p2, p3):
            mine = next(v for v in scenario.variants if v.key == "batchscore")
            scenario.variants = [replace(mine, key="with histograms"), without(mine)]
            run.say(f"{scenario.name}: {scenario.title}")
            run.run_scenario(scenario, args.rounds, log_dir)
            scenarios.append(scenario)
    finally:
        server.stop()
    costs = {
        "P2": (observe_cost(p.model_300, p.db_http), sizes.p2, p.model_300),
        "P3": (observe_cost(p.model_sample, p.db_1m), sizes.p3, p.model_sample),
    }
    minutes = (time.monotonic() - started) / 60
    lines = [
        "# What the score and feature histograms cost (issue 21)",
        "",
        f"Generated by `.venv/bin/python bench/drift_cost.py {' '.join(argv or [])}`".rstrip()
        + f"` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in {minutes:.1f} min; "
        f"{args.rounds} round(s), the two variants alternated (the order rotates each round); "
        "figures are medians over rounds, a ratio compares two medians of the same run, "
        "*rounds* is the range of the per-round ratios.  The machine is shared and noisy: "
        "end-to-end differences under a few percent are within its noise, which is why the "
        "per-chunk cost is measured in-process as well.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in machine.items()),
        "",
        "## Commands",
        "",
    ]
    for scenario in scenarios:
        for v in scenario.variants:
            lines.append(f"- {scenario.name} {v.key}: `{harness.display(v.cmd)}`")
    lines += [
        "",
        "## End to end",
        "",
        "| scenario | variant | wall s | CPU s | in-run s | IDs/s | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for scenario in scenarios:
        for v in scenario.variants:
            lines.append(
                f"| {scenario.name} | {v.key} | {v.median('wall'):.2f} | {v.median('cpu'):.2f} "
                f"| {v.median('inner'):.2f} | {v.rate:,.0f} | {v.median('max_rss_mb'):.0f} |"
            )
    lines += ["", "| scenario | of | with / without | rounds |", "|---|---|---:|---:|"]
    for scenario in scenarios:
        a, b = scenario.variants
        for attr in ("wall", "cpu", "inner"):
            lines.append(ratio_line(scenario.name, a, b, attr))
    lines += [
        "",
        "## Per chunk, in-process",
        "",
        "| scenario | model | `observe` µs per 1,024-row chunk | chunks | their seconds "
        "| share of the run's wall (with) | `compare` of two runs, µs |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for scenario in scenarios:
        (per_chunk, compared), count, model = costs[scenario.name]
        chunks = -(-count // 1000)  # P2's chunks are 1,000 rows (10 requests of 100)
        seconds = per_chunk * chunks / 1e6
        wall = scenario.variants[0].median("wall")
        lines.append(
            f"| {scenario.name} | `{model.name}` | {per_chunk:,.0f} | {chunks:,} | "
            f"{seconds:.2f} | {seconds / wall:.2%} | {compared:,.0f} |"
        )
    lines += ["", "## Checks (round 1)", ""]
    for scenario in scenarios:
        lines += [f"- {scenario.name}: {check}" for check in scenario.checks]
        for v in scenario.variants:
            short = [m.extra.get("short") for m in v.measures if m.extra.get("short")]
            failed = [m for m in v.measures if not m.ok]
            if short or failed:
                lines.append(f"- {scenario.name} {v.key}: {short or failed[-1].stderr_tail}")
    loads = [m.load for s in scenarios for v in s.variants for m in v.measures if m.load]
    if loads:
        lines.append(f"- 1-min load average after runs: median {statistics.median(loads):.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    run.say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
