"""What ``--engine dask`` costs and gives on one machine: P1 and P2 beside the local run.

    .venv/bin/python bench/dask_cost.py [--work bench/work] [--rounds 2] [--out FILE.md]
    .venv/bin/python bench/dask_cost.py --partition-sizes 500,1000,2000,5000,10000,25000

Runs the installed command against the benchmark feature server (``tests/featureserver.py``,
20 ms latency, its own process, nothing pinned), alternately with the local engine and with
``--engine dask`` (a local cluster: one single-threaded worker process per core), and reports
the median wall time of each:

- start-up: ``score`` of one ID (the cluster's start and stop are most of a tiny run);
- P1 (per-ID GET, concurrency 64 per process) and P2 (POST of 100 IDs, concurrency 16 per
  process) on 10,000 IDs and on the full inputs (16,000 and 200,000 IDs).

Every dask run's parts are checked against the local run's output (the same IDs and scores).

``--partition-sizes A,B,...`` measures instead what a partition costs (issue 22: the default
size bounds what a stop loses, since a stop keeps whole parts): ``--engine dask`` alone on P1
(16,000 IDs) and P2 (200,000 IDs) with each ``--partition-size``, the sizes in another order
each round, beside the one-ID run (start-up).  Per size: the partitions, the median wall time
and CPU time (the driver's and its workers': ``wait4`` of the command), the seconds a
partition takes on its worker (wall time past start-up x workers / partitions: the most work
a stop can throw away per running partition), and the wall and CPU time against the fewest
partitions' (the per-partition overhead; CPU time shows it on a loaded machine too, where wall
times mostly show the other work).
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
    parser.add_argument(
        "--partition-sizes", default=None, help="comma-separated sizes: the partition sweep"
    )
    args = parser.parse_args()
    if args.partition_sizes:
        sizes = [int(size) for size in args.partition_sizes.split(",")]
        text = sweep(args.work, args.rounds, sizes)
        print(text)
        if args.out:
            args.out.write_text(text)
        return
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


def sweep(work: Path, rounds: int, sizes: list[int]) -> str:
    """The partition-size sweep (see the module); its report as Markdown."""
    paths = ensure(work)
    scratch = Path(tempfile.mkdtemp(prefix="dask-sweep-"))
    server = FeatureServer(paths.db_http, latency=0.02, cpus=None)
    workers = os.cpu_count() or 1
    lines: list[str] = []
    try:
        url = server.wait_ready()
        inputs = {"P1 16k": paths.ids_p1, "P2 200k": paths.ids_p2}
        configs = {
            "P1 16k": config(scratch / "p1.toml", paths.model_300, url, False, 64),
            "P2 200k": config(scratch / "p2.toml", paths.model_300, url, True, 16),
        }
        common = ["--overwrite", "-q", "--max-failed-rate", "1"]
        expected = {}
        for name, ids in inputs.items():  # also warms the server's answers (untimed)
            out = scratch / f"local-{name[:2]}.csv"
            cmd = [BATCHSCORE, "score", str(ids), "-c", str(configs[name]), "-o", str(out)]
            run_measured([*cmd, *common], cpus=None, log=scratch / "warm.log")
            expected[name] = scores(out)
        walls: dict[tuple[str, int], list[float]] = {}
        cpus: dict[tuple[str, int], list[float]] = {}
        startup: list[float] = []
        for rnd in range(rounds):
            order = sizes[rnd % len(sizes) :] + sizes[: rnd % len(sizes)]
            cmd = [BATCHSCORE, "score", str(paths.ids_one), "-c", str(configs["P1 16k"])]
            cmd += ["-o", str(scratch / "one"), "--engine", "dask", *common]
            m = run_against(server, cmd, cpus=None, log=scratch / "one.log")
            assert m.ok, m.stderr_tail
            startup.append(m.wall)
            for name, ids in inputs.items():
                for size in order:
                    out = scratch / f"dask-{name[:2]}-{size}"
                    cmd = [BATCHSCORE, "score", str(ids), "-c", str(configs[name])]
                    cmd += ["-o", str(out), "--engine", "dask", "--partition-size", str(size)]
                    m = run_against(server, [*cmd, *common], cpus=None, log=scratch / "d.log")
                    assert m.ok, m.stderr_tail
                    assert scores(out) == expected[name], f"{name} {size}: other scores"
                    walls.setdefault((name, size), []).append(m.wall)
                    cpus.setdefault((name, size), []).append(m.cpu)
                    shutil.rmtree(out)
                    print(
                        f"round {rnd + 1} {name} {size:>7} {m.wall:6.2f} s {m.cpu:6.2f} CPU s",
                        file=sys.stderr,
                    )
        start = statistics.median(startup)
        lines.append(
            f"machine: {platform.platform()}, {workers} cores, Python "
            f"{platform.python_version()}, 1-min load at the end {os.getloadavg()[0]:.2f}"
        )
        lines.append(
            "command: PYTHONPATH=cli .venv/bin/python bench/dask_cost.py --rounds "
            f"{rounds} --partition-sizes {','.join(map(str, sizes))}"
        )
        lines.append(f"start-up (one ID, --engine dask): {start:.2f} s; {workers} workers")
        lines.append("")
        lines.append(
            "| input | partition size | partitions | wall s | s per partition | CPU s | "
            "wall / fewest | CPU / fewest |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, ids in inputs.items():
            count = sum(1 for _ in open(ids))  # noqa: SIM115
            base = (statistics.median(walls[(name, max(sizes))]), cpus[(name, max(sizes))])
            for size in sizes:
                wall, cpu = statistics.median(walls[(name, size)]), cpus[(name, size)]
                parts = -(-count // size)
                each = max(wall - start, 0.0) * workers / parts
                lines.append(
                    f"| {name} | {size:,} | {parts:,} | {wall:.2f} | {each:.2f} | "
                    f"{statistics.median(cpu):.2f} | {wall / base[0]:.2f}x | "
                    f"{statistics.median(cpu) / statistics.median(base[1]):.2f}x |"
                )
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
