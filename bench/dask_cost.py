"""What ``--engine dask`` costs and gives on one machine: P1 and P2 beside the local run.

    .venv/bin/python bench/dask_cost.py [--work bench/work] [--rounds 2] [--out FILE.md]

Runs the installed command against the benchmark feature server (``tests/featureserver.py``,
20 ms latency, its own process, nothing pinned), alternately with the local engine and with
``--engine dask`` (a local cluster: one single-threaded worker process per core), and reports
the median wall time of each:

- start-up: ``score`` of one ID (the cluster's start and stop are most of a tiny run);
- P1 (per-ID GET, concurrency 64 per process) and P2 (POST of 100 IDs, concurrency 16 per
  process) on 10,000 IDs and on the full inputs (16,000 and 200,000 IDs).

Every dask run's parts are checked against the local run's output (the same IDs and scores).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data import ensure
from harness import BIN, ROOT, FeatureServer, run_against, run_measured

BATCHSCORE = str(BIN / "batchscore")


def config(path: Path, model: Path, url: str, batch: bool, concurrency: int) -> Path:
    source = (
        f'mode = "batch"\nurl = "{url}/batch"\nresults_path = "results"\nid_field = "id"\n'
        'features_path = "features"\nbatch_size = 100\n'
        if batch
        else f'url = "{url}/features/{{id}}"\nfeatures_path = "features"\n'
    )
    path.write_text(
        f'[model]\npath = "{model}"\n\n[[sources]]\nname = "features"\nkind = "http"\n{source}'
        f"\n[fetch]\nconcurrency = {concurrency}\n"
    )
    return path


def head(source: Path, count: int, target: Path) -> Path:
    with open(source) as f, open(target, "w") as out:
        for _, line in zip(range(count), f, strict=False):
            out.write(line)
    return target


def scores(path: Path) -> dict[str, str]:
    files = sorted(path.glob("part-*.csv")) if path.is_dir() else [path]
    found: dict[str, str] = {}
    for file in files:
        with open(file, newline="") as f:
            for row in csv.DictReader(f):
                assert row["id"] not in found, f"{row['id']} twice"
                found[row["id"]] = row["score"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    paths = ensure(args.work)
    scratch = Path(tempfile.mkdtemp(prefix="dask-cost-"))
    server = FeatureServer(paths.db_http, latency=0.02, cpus=None)
    lines: list[str] = []
    try:
        url = server.wait_ready()
        inputs = {
            "one": paths.ids_one,
            "P1 10k": head(paths.ids_p1, 10_000, scratch / "p1_10k.txt"),
            "P1 16k": paths.ids_p1,
            "P2 10k": head(paths.ids_p2, 10_000, scratch / "p2_10k.txt"),
            "P2 200k": paths.ids_p2,
        }
        configs = {
            "P1": config(scratch / "p1.toml", paths.model_300, url, False, 64),
            "P2": config(scratch / "p2.toml", paths.model_300, url, True, 16),
        }
        # Warm the server's per-ID answer cache (untimed), as bench/run.py does.
        for name in ("P1 16k", "P2 200k"):
            cmd = [BATCHSCORE, "score", str(inputs[name]), "-c", str(configs[name[:2]])]
            cmd += ["-o", str(scratch / "warm.csv"), "--overwrite", "-q", "--max-failed-rate", "1"]
            run_measured(cmd, cpus=None, log=scratch / "warm.log")
        results: dict[tuple[str, str], list[float]] = {}
        for rnd in range(args.rounds):
            for name, ids in inputs.items():
                cfg = configs["P1" if name in ("one", "P1 10k", "P1 16k") else "P2"]
                for engine in ("local", "dask"):
                    out = scratch / (
                        f"{engine}-{name.replace(' ', '_')}" + (".csv" if engine == "local" else "")
                    )
                    if out.is_dir():
                        shutil.rmtree(out)
                    cmd = [BATCHSCORE, "score", str(ids), "-c", str(cfg), "-o", str(out)]
                    cmd += ["--overwrite", "-q", "--max-failed-rate", "1"]
                    if engine == "dask":
                        cmd += ["--engine", "dask"]
                    m = run_against(server, cmd, cpus=None, log=scratch / f"{engine}.log")
                    assert m.ok, m.stderr_tail
                    results.setdefault((name, engine), []).append(m.wall)
                    print(f"round {rnd + 1} {name:8} {engine:5} {m.wall:7.2f} s", file=sys.stderr)
                local_out = scratch / f"local-{name.replace(' ', '_')}.csv"
                assert scores(scratch / f"dask-{name.replace(' ', '_')}") == scores(local_out)
        lines.append(
            f"machine: {platform.platform()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}"
        )
        lines.append(f"command: .venv/bin/python bench/dask_cost.py --rounds {args.rounds}")
        lines.append("")
        lines.append("| input | local s | dask s (2 workers) | dask / local |")
        lines.append("|---|---:|---:|---:|")
        for name in inputs:
            local = statistics.median(results[(name, "local")])
            dask = statistics.median(results[(name, "dask")])
            lines.append(f"| {name} | {local:.2f} | {dask:.2f} | {dask / local:.2f}x |")
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
