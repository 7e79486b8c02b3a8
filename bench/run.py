"""``make bench``: batchscore against an expert's scripts and a sync loop, side by side.

Generates the data (``bench/data.py``, cached in ``bench/work/``), starts the feature server
(``tests/featureserver.py``) in its own processes, runs every scenario's variants alternately
(round 1: A B C, round 2: B C A, ...) so that drift of a noisy machine hits them alike, verifies
that every variant wrote the same scores, and writes ``bench/RESULTS.md`` (machine, versions,
exact commands, medians, ratios, targets).  Scenarios (issues 5, 9 and 12):

* P1 per-ID HTTP GET, 20 ms latency, concurrency 64, 16,000 IDs, 300-tree model
  (vs ``baseline_expert.py get`` and ``baseline_sync.py``)
* P2 batch HTTP POST of 100 IDs, 20 ms, concurrency 16, 200,000 IDs
  (vs ``baseline_expert.py batch`` and ``scoring_only.py``); LightGBM threads 0 / 1 / 2
* P3 SQLite, 1,000,000 IDs, sample model (vs ``baseline_sqlite.py``); threads 0 / 1 / 2
* P4 peak RSS of P3 at 100,000 and 1,000,000 IDs
* P5 start-up: ``batchscore --help`` and scoring one ID from SQLite (hyperfine if installed)
* P6 input order vs ``--unordered`` (from P1 and P2)
* P7 PostgreSQL, 1,000,000 IDs from a 1,000,000-row table on a local server started for the run
  (``tests/pgserver.py``), sample model (vs ``baseline_asyncpg.py``; issue 12)

Usage::

    .venv/bin/python bench/run.py                  # everything, 3 rounds -> bench/RESULTS.md
    .venv/bin/python bench/run.py --quick          # 1 round, small: bench/work/RESULTS-quick.md
    .venv/bin/python bench/run.py --only P1,P3     # some scenarios (not written to RESULTS.md)
    .venv/bin/python bench/run.py --only P2 --profile   # also a py-spy profile of batchscore
    .venv/bin/python bench/run.py --quick --only P1,P2,P3 --compare-to REV   # this tree vs REV

``--compare-to REV`` runs every scenario's headline batchscore variant a second time with
another commit's code, as the variant ``batchscore @REV`` placed right after it: a git
worktree of REV under ``bench/work/`` (made once, reused; ``harness.tree_at``) with this venv
(``env PYTHONPATH=TREE/cli .venv/bin/batchscore ...``).  Its scores are checked like every
variant's, its output file is compared byte for byte, and the report gets a table of this tree /
REV per scenario (throughput, CPU per ID, each with the range of its per-round ratios).
``--compare-only`` leaves out every other variant: the pair runs A B, B A, A B ..., so a
loaded machine's noise shrinks with more rounds in the same time.
"""

from __future__ import annotations

import argparse
import asyncio
import filecmp
import importlib.util
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import data
import harness
from harness import CLIENT_CPUS, SERVER_CPUS, FeatureServer, Measure

ROOT = harness.ROOT
PY = str(harness.BIN / "python")
BATCHSCORE = str(harness.BIN / "batchscore")
RESULTS = ROOT / "bench" / "RESULTS.md"
ANALYSIS_MARK = "<!-- everything below this line is hand-written and kept by bench/run.py -->"
LATENCY = 0.02
IDEAL_P1 = 64 / LATENCY  # concurrency / latency = 3,200 IDs/s


@dataclass(frozen=True)
class Sizes:
    """How many IDs each scenario scores."""

    p1: int = 16_000
    sync: int = 500
    p2: int = 200_000
    p3: int = 1_000_000
    p4_small: int = 100_000
    p7: int = 1_000_000


QUICK = Sizes(p1=4_000, sync=100, p2=40_000, p3=200_000, p4_small=20_000, p7=200_000)


@dataclass
class Variant:
    """One way of doing a scenario's job: a command, its CPUs, its server."""

    key: str
    tool: str  # batchscore | expert | sync
    cmd: list[str]
    ids: int
    output: Path
    cpus: str | None = None
    server: FeatureServer | None = None
    postgres: PostgresBench | None = None  # P7: the database server whose CPU is measured
    layout: str = "-"  # split: server CPU 1, client CPU 0; shared: no pinning
    measures: list[Measure] = field(default_factory=list)

    def median(self, attr: str) -> float:
        """Median of a Measure attribute over the successful runs (NaN if none)."""
        values = [getattr(m, attr) for m in self.measures if m.ok]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else math.nan

    @property
    def rate(self) -> float:
        """IDs per second from the median wall time."""
        return self.ids / self.median("wall")

    @property
    def failed(self) -> str:
        """Why the runs failed, if they all did."""
        if any(m.ok for m in self.measures) or not self.measures:
            return ""
        last = self.measures[-1]
        return f"exit {last.returncode}: {last.stderr_tail}"


@dataclass
class Scenario:
    """A named set of variants run alternately."""

    name: str
    title: str
    variants: list[Variant]
    notes: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)

    def get(self, key: str) -> Variant | None:
        """The variant called ``key``."""
        return next((v for v in self.variants if v.key == key), None)


# ------------------------------------------------------------------------------ commands


def bs_cmd(ids: Path, config: Path, out: Path, *extra: str) -> list[str]:
    """The real installed command, quiet, overwriting its output."""
    return [
        BATCHSCORE,
        "score",
        str(ids),
        "-c",
        str(config),
        "-o",
        str(out),
        "--overwrite",
        "--quiet",
        "--max-failed",
        "1000000000",
        "--report",
        str(report_path(out)),
        *extra,
    ]


def report_path(out: Path) -> Path:
    """Where a batchscore run writing ``out`` leaves its ``--report`` JSON."""
    return out.with_name(out.name + ".report.json")


def http_config(work: Path, name: str, model: Path, url: str, *, batch: bool) -> Path:
    """A batchscore config for the feature server at ``url``."""
    if batch:
        source = (
            'mode = "batch"\n'
            f'url = "{url}/batch"\n'
            'results_path = "results"\n'
            'id_field = "id"\n'
            'features_path = "features"\n'
            "batch_size = 100\n"
        )
    else:
        source = f'mode = "per_id"\nurl = "{url}/features/{{id}}"\nfeatures_path = "features"\n'
    path = work / f"{name}.toml"
    path.write_text(
        f'[model]\npath = "{model}"\n\n[[sources]]\nname = "features"\nkind = "http"\n{source}'
    )
    return path


def postgres_config(work: Path, dsn: str, model: Path) -> Path:
    """A batchscore config for the 1M-row PostgreSQL table (as ``configs/postgres.toml``)."""
    path = work / "p7.toml"
    path.write_text(
        f'[model]\npath = "{model}"\n\n[[sources]]\nname = "features"\nkind = "postgres"\n'
        f'dsn = "{dsn}"\ntable = "{data.TABLE}"\nkey = "{data.KEY}"\nbatch_size = 1000\n\n'
        "[fetch]\nconcurrency = 8\n"
    )
    return path


def sqlite_config(work: Path, db: Path, model: Path) -> Path:
    """A batchscore config for the 1M-row SQLite table (as ``configs/sample.toml``)."""
    path = work / "p3.toml"
    path.write_text(
        f'[model]\npath = "{model}"\n\n[[sources]]\nname = "features"\nkind = "sqlite"\n'
        f'path = "{db}"\ntable = "{data.TABLE}"\nkey = "{data.KEY}"\n\n'
        "[fetch]\nconcurrency = 8\n"
    )
    return path


# ------------------------------------------------------------------------------ running


def count_rows(path: Path) -> int:
    """Data rows of a CSV with a header (0 if missing)."""
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return max(sum(1 for _ in f) - 1, 0)


def read_scores(path: Path) -> dict[str, float]:
    """``id -> score`` from an ``id,score`` CSV."""
    scores: dict[str, float] = {}
    with path.open() as f:
        next(f, None)
        for line in f:
            ident, _, score = line.rstrip("\n").partition(",")
            scores[ident] = float(score)
    return scores


def verify(scenario: Scenario, reference: Variant) -> None:
    """Every variant's scores equal the reference's, bit for bit, on the IDs both scored."""
    if not reference.output.exists() or not any(m.ok for m in reference.measures):
        scenario.checks.append(f"scores not verified: {reference.key} produced no output")
        return
    ref = read_scores(reference.output)
    for variant in scenario.variants:
        if variant is reference or not variant.output.exists():
            continue
        if not any(m.ok for m in variant.measures):
            continue
        other = read_scores(variant.output)
        common = ref.keys() & other.keys()
        diff = max((abs(ref[k] - other[k]) for k in common), default=0.0)
        same = sum(1 for k in common if ref[k] == other[k])
        verdict = "identical" if same == len(common) and common else "DIFFERENT"
        scenario.checks.append(
            f"{variant.key} vs {reference.key}: {len(common):,} common IDs, "
            f"{same:,} bit-identical, max |diff| {diff:.3g} -> {verdict}"
        )


def with_revision(scenario: Scenario, rev: str, prefix: Sequence[str]) -> Variant | None:
    """The scenario's headline variant (``batchscore``) once more, run by ``prefix`` (another
    commit's code) into its own output, placed right after it so each round runs them back to
    back."""
    base = scenario.get("batchscore")
    if base is None:
        return None
    target = base.output.with_name(f"{base.output.stem}-{rev}{base.output.suffix}")
    swap = {str(base.output): str(target), str(report_path(base.output)): str(report_path(target))}
    cmd = [*prefix, *(swap.get(arg, arg) for arg in base.cmd)]
    variant = replace(base, key=f"batchscore @{rev}", cmd=cmd, output=target, measures=[])
    scenario.variants.insert(scenario.variants.index(base) + 1, variant)
    return variant


def run_variant(variant: Variant, log_dir: Path, label: str) -> Measure:
    """One timed run; the row count of its output is kept in ``extra``."""
    log = log_dir / f"{label}.log"
    if variant.server is not None:
        m = harness.run_against(variant.server, variant.cmd, cpus=variant.cpus, log=log)
    elif variant.postgres is not None:
        before = variant.postgres.cpu()
        m = harness.run_measured(variant.cmd, cpus=variant.cpus, log=log)
        m.server_cpu = variant.postgres.cpu(settle=True) - before
    else:
        m = harness.run_measured(variant.cmd, cpus=variant.cpus, log=log)
    m.extra["rows"] = count_rows(variant.output)
    if m.ok and m.extra["rows"] != variant.ids:
        m.extra["short"] = f"{m.extra['rows']} rows written for {variant.ids} IDs"
    m.inner = inner_seconds(variant, m)
    return m


def inner_seconds(variant: Variant, m: Measure) -> float | None:
    """Seconds of the run proper, without interpreter start-up and imports.

    batchscore: ``elapsed_seconds`` of its ``--report``; the scripts print ``seconds``.
    """
    if not m.ok:
        return None
    try:
        if variant.tool == "batchscore":
            report = report_path(variant.output)
            value = json.loads(report.read_text())["elapsed_seconds"]
        else:
            value = json.loads(m.stdout.strip().splitlines()[-1])["seconds"]
    except (OSError, ValueError, KeyError, IndexError):
        return None
    return float(value)


def run_scenario(scenario: Scenario, rounds: int, log_dir: Path) -> None:
    """Run every variant ``rounds`` times, rotating the order each round; verify round 1."""
    variants = scenario.variants
    for r in range(rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for variant in order:
            label = f"{scenario.name}-{slug(variant.key)}-r{r + 1}"
            m = run_variant(variant, log_dir, label)
            variant.measures.append(m)
            status = "ok" if m.ok else f"FAILED ({m.stderr_tail[-200:]})"
            rate = variant.ids / m.wall
            say(
                f"  {scenario.name} r{r + 1} {variant.key:<34} {m.wall:7.2f} s "
                f"{rate:9,.0f} IDs/s  cpu {m.cpu:6.2f} s  rss {m.max_rss_mb:6.0f} MB  {status}"
            )
        if r == 0:
            reference = next(
                (v for v in variants if v.tool == "batchscore" and any(m.ok for m in v.measures)),
                variants[0],
            )
            verify(scenario, reference)


def warm_up(server: FeatureServer, ids: dict[str, Path], out: Path, model: Path) -> None:
    """One untimed pass of every ID over both endpoints: the server encodes an ID's answer
    the first time it is asked and caches it, so without this the first variant measured
    against a server pays for the server's own warm-up (5 s of server CPU in P2)."""
    for mode, path, url in (
        ("batch", ids["p2"], server.url + "/batch"),
        ("get", ids["p1"], server.url + "/features/{id}"),
    ):
        cmd = [PY, "bench/baseline_expert.py", mode, str(path), url, str(model), str(out)]
        subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True)
    say(f"  warmed up the server at {server.url}")


def slug(text: str) -> str:
    """A file-name-safe version of a variant key."""
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


def say(text: str) -> None:
    """Progress on stderr."""
    print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ scenarios


class PostgresBench:
    """A PostgreSQL server for P7 (``tests/pgserver.py``) holding the 1M-row table."""

    USER = "scorer"  # SELECT only, as a feature store would grant; the password is in the env

    def __init__(self, db: Path) -> None:
        sys.path.insert(0, str(ROOT / "tests"))
        import pgserver

        self.server = pgserver.start_server()
        self.password = pgserver.PASSWORD
        self.dsn = f"postgresql://{self.USER}@127.0.0.1:{self.server.port}/{pgserver.DATABASE}"
        owner = (
            f"postgresql://{pgserver.SUPERUSER}:{pgserver.PASSWORD}@127.0.0.1:"
            f"{self.server.port}/{pgserver.DATABASE}"
        )
        spec = importlib.util.spec_from_file_location(
            "load_postgres", ROOT / "sample_data" / "load_postgres.py"
        )
        assert spec is not None and spec.loader is not None
        loader = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loader)
        started = time.monotonic()
        rows = asyncio.run(loader.load(owner, db, data.TABLE, data.KEY, False, 50_000))
        self.version = str(self.server.execute("SHOW server_version")[0][0])
        self.command = harness.display(
            [
                PY,
                "sample_data/load_postgres.py",
                owner.replace(self.password, "PASSWORD"),
                "--db",
                str(db),
            ]
        )
        say(
            f"PostgreSQL {self.version} at 127.0.0.1:{self.server.port} "
            f"({self.server.bindir}): {rows:,} rows loaded in {time.monotonic() - started:.1f} s"
        )
        harness.CHILD_ENV["PGPASSWORD"] = self.password  # asyncpg reads it: no secret in argv

    def cpu(self, *, settle: bool = False) -> float:
        """CPU seconds of the server: the postmaster and the backends it has reaped."""
        if settle:
            time.sleep(0.2)  # the client's backends exit just after it does
        pid = int((self.server.data / "postmaster.pid").read_text().split()[0])
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """Stop the server and remove its files."""
        self.server.close()


@dataclass
class Context:
    """What the scenarios share."""

    paths: data.Paths
    sizes: Sizes
    rounds: int
    servers: dict[str, FeatureServer]
    ids: dict[str, Path]
    postgres: PostgresBench | None = None


def p1(ctx: Context) -> Scenario:
    """Per-ID GET; headline layout: server on CPU 1, client on CPU 0."""
    p, out, ids = ctx.paths, ctx.paths.out, ctx.ids
    variants: list[Variant] = []
    for layout in ("split", "shared"):
        server = ctx.servers[layout]
        cpus = CLIENT_CPUS if layout == "split" else None
        config = http_config(p.work, f"p1-{layout}", p.model_300, server.url, batch=False)
        suffix = "" if layout == "split" else " [shared]"
        get_url = server.url + "/features/{id}"
        variants.append(
            Variant(
                "batchscore" + suffix,
                "batchscore",
                bs_cmd(ids["p1"], config, out / f"p1-bs-{layout}.csv", "--concurrency", "64"),
                ctx.sizes.p1,
                out / f"p1-bs-{layout}.csv",
                cpus,
                server,
                layout,
            )
        )
        if layout == "split":
            variants.append(
                Variant(
                    "batchscore --unordered",
                    "batchscore",
                    bs_cmd(
                        ids["p1"],
                        config,
                        out / "p1-bs-unordered.csv",
                        "--concurrency",
                        "64",
                        "--unordered",
                    ),
                    ctx.sizes.p1,
                    out / "p1-bs-unordered.csv",
                    cpus,
                    server,
                    layout,
                )
            )
        variants.append(
            Variant(
                "expert" + suffix,
                "expert",
                [
                    PY,
                    "bench/baseline_expert.py",
                    "get",
                    str(ids["p1"]),
                    get_url,
                    str(p.model_300),
                    str(out / f"p1-expert-{layout}.csv"),
                    "--concurrency",
                    "64",
                ],
                ctx.sizes.p1,
                out / f"p1-expert-{layout}.csv",
                cpus,
                server,
                layout,
            )
        )
        if layout == "split":
            variants.append(
                Variant(
                    f"sync loop ({ctx.sizes.sync} IDs)",
                    "sync",
                    [
                        PY,
                        "bench/baseline_sync.py",
                        str(ids["sync"]),
                        get_url,
                        str(p.model_300),
                        str(out / "p1-sync.csv"),
                    ],
                    ctx.sizes.sync,
                    out / "p1-sync.csv",
                    cpus,
                    server,
                    layout,
                )
            )
    return Scenario(
        "P1",
        f"per-ID HTTP GET, {LATENCY * 1000:.0f} ms, concurrency 64, {ctx.sizes.p1:,} IDs, "
        "300-tree model",
        variants,
    )


def p2(ctx: Context) -> Scenario:
    """Batch POST; headline layout: shared (the client needs both cores to score)."""
    p, out, ids = ctx.paths, ctx.paths.out, ctx.ids
    variants: list[Variant] = []
    for layout in ("shared", "split"):
        server = ctx.servers[layout]
        cpus = CLIENT_CPUS if layout == "split" else None
        config = http_config(p.work, f"p2-{layout}", p.model_300, server.url, batch=True)
        suffix = "" if layout == "shared" else " [split]"
        bs_runs: list[tuple[str, tuple[str, ...]]] = [("batchscore", ())]
        if layout == "shared":
            bs_runs += [
                ("batchscore --unordered", ("--unordered",)),
                ("batchscore --threads 1", ("--threads", "1")),
                ("batchscore --threads 2", ("--threads", "2")),
            ]
        for key, extra in bs_runs:
            target = out / f"p2-{slug(key)}-{layout}.csv"
            variants.append(
                Variant(
                    key + suffix,
                    "batchscore",
                    bs_cmd(ids["p2"], config, target, "--concurrency", "16", *extra),
                    ctx.sizes.p2,
                    target,
                    cpus,
                    server,
                    layout,
                )
            )
        experts = [
            ("expert --threads 0", "0", "1"),
            ("expert --threads 1", "1", "1"),
            ("expert --threads 1 --workers 2", "1", "2"),
        ]
        for key, threads, workers in experts if layout == "shared" else experts[:1]:
            target = out / f"p2-{slug(key)}-{layout}.csv"
            variants.append(
                Variant(
                    key + suffix,
                    "expert",
                    [
                        PY,
                        "bench/baseline_expert.py",
                        "batch",
                        str(ids["p2"]),
                        server.url + "/batch",
                        str(p.model_300),
                        str(target),
                        "--concurrency",
                        "16",
                        "--batch-size",
                        "100",
                        "--threads",
                        threads,
                        "--workers",
                        workers,
                    ],
                    ctx.sizes.p2,
                    target,
                    cpus,
                    server,
                    layout,
                )
            )
    return Scenario(
        "P2",
        f"batch HTTP POST of 100 IDs, {LATENCY * 1000:.0f} ms, concurrency 16, "
        f"{ctx.sizes.p2:,} IDs, 300-tree model",
        variants,
    )


def p3(ctx: Context, count: int, name: str = "P3", threads: bool = True) -> Scenario:
    """SQLite, sample model; both cores for the client (no server)."""
    p, out = ctx.paths, ctx.paths.out
    ids = ctx.ids["p3"] if count == ctx.sizes.p3 else ctx.ids["p4_small"]
    config = sqlite_config(p.work, p.db_1m, p.model_sample)
    runs: list[tuple[str, tuple[str, ...]]] = [("batchscore", ())]
    if threads:
        runs += [("batchscore --threads 1", ("--threads", "1"))]
        runs += [("batchscore --threads 2", ("--threads", "2"))]
    variants = []
    for key, extra in runs:
        target = out / f"{name.lower()}-{slug(key)}.csv"
        variants.append(
            Variant(key, "batchscore", bs_cmd(ids, config, target, *extra), count, target)
        )
    target = out / f"{name.lower()}-expert.csv"
    variants.append(
        Variant(
            "expert (sqlite3)",
            "expert",
            [
                PY,
                "bench/baseline_sqlite.py",
                str(ids),
                str(p.db_1m),
                data.TABLE,
                data.KEY,
                str(p.model_sample),
                str(target),
            ],
            count,
            target,
        )
    )
    return Scenario(
        name, f"SQLite, {count:,} IDs from a 1,000,000-row table, sample model", variants
    )


def p7(ctx: Context) -> Scenario:
    """PostgreSQL, sample model: batchscore against the asyncpg expert script."""
    p, out, pg = ctx.paths, ctx.paths.out, ctx.postgres
    assert pg is not None
    count = ctx.sizes.p7
    ids = ctx.ids["p7"]
    config = postgres_config(p.work, pg.dsn, p.model_sample)
    target = out / "p7-batchscore.csv"
    variants = [
        Variant(
            "batchscore",
            "batchscore",
            bs_cmd(ids, config, target),
            count,
            target,
            postgres=pg,
            layout="shared",
        )
    ]
    target = out / "p7-expert.csv"
    expert = [PY, "bench/baseline_asyncpg.py", str(ids), pg.dsn, data.TABLE, data.KEY]
    variants.append(
        Variant(
            "expert (asyncpg)",
            "expert",
            [*expert, str(p.model_sample), str(target)],
            count,
            target,
            postgres=pg,
            layout="shared",
        )
    )
    return Scenario(
        "P7",
        f"PostgreSQL {pg.version} on this machine, {count:,} IDs from a 1,000,000-row table, "
        "sample model, concurrency 8, 1,000 IDs per query",
        variants,
        notes=[
            "the server runs on the same 2 cores as the client (no pinning); *server CPU s* is "
            "the postmaster's and its reaped backends' CPU during the run",
            f"table loaded with `{pg.command}`",
        ],
    )


def scoring_only(ctx: Context) -> dict[str, Any]:
    """``predict`` on the prebuilt 200,000-row matrix of the HTTP table: all cores and one."""
    result: dict[str, Any] = {}
    for threads in ("0", "1"):
        cmd = [
            PY,
            "bench/scoring_only.py",
            str(ctx.paths.model_300),
            str(ctx.paths.db_http),
            data.TABLE,
            data.KEY,
            "--threads",
            threads,
        ]
        m = harness.run_measured(cmd, cpus=None, log=ctx.paths.out / f"scoring-{threads}.log")
        parsed = json.loads(m.stdout.strip().splitlines()[-1]) if m.ok else {}
        result[threads] = {**parsed, "command": harness.display(cmd)}
        say(f"  scoring-only threads={threads}: {parsed.get('rows_per_s', math.nan):,.0f} rows/s")
    return result


def startup(ctx: Context) -> dict[str, Any]:
    """P5: wall time of ``--help`` and of scoring one ID (hyperfine, else repeated timing)."""
    one_out = ctx.paths.out / "p5-one.csv"
    commands = {
        "batchscore --help": [BATCHSCORE, "--help"],
        "batchscore score (1 ID, SQLite)": [
            BATCHSCORE,
            "score",
            str(ctx.paths.ids_one),
            "-c",
            "configs/sample.toml",
            "-o",
            str(one_out),
            "--overwrite",
            "--quiet",
        ],
        "python -c 'import lightgbm, aiohttp, orjson' (expert's imports)": [
            PY,
            "-c",
            "import lightgbm, aiohttp, orjson",
        ],
    }
    runs = 5 if ctx.rounds == 1 else 20
    results: dict[str, Any] = {}
    hyperfine = shutil.which("hyperfine")
    for name, cmd in commands.items():
        text = harness.display(cmd)
        if hyperfine:
            export = ctx.paths.out / f"p5-{slug(name)}.json"
            subprocess.run(
                [
                    hyperfine,
                    "--warmup",
                    "3",
                    "--runs",
                    str(runs),
                    "-N",
                    "--export-json",
                    str(export),
                    harness.shlex.join(cmd),
                ],
                cwd=ROOT,
                env=harness.CHILD_ENV,
                check=True,
                capture_output=True,
            )
            res = json.loads(export.read_text())["results"][0]
            results[name] = {
                "median": res["median"],
                "mean": res["mean"],
                "stddev": res["stddev"],
                "min": res["min"],
                "max": res["max"],
                "runs": runs,
                "tool": "hyperfine",
                "command": text,
            }
        else:
            walls = []
            for i in range(runs + 3):
                m = harness.run_measured(cmd, cpus=None, log=ctx.paths.out / "p5.log")
                if i >= 3:
                    walls.append(m.wall)
            results[name] = {
                "median": statistics.median(walls),
                "mean": statistics.fmean(walls),
                "stddev": statistics.pstdev(walls),
                "min": min(walls),
                "max": max(walls),
                "runs": runs,
                "tool": "repeated timing",
                "command": text,
            }
        say(f"  P5 {name}: median {results[name]['median'] * 1000:.0f} ms")
    return results


# ------------------------------------------------------------------------------ profiling


def profile(scenario: Scenario, work: Path, variant: Variant | None = None) -> Path | None:
    """Run the scenario's default batchscore variant (or ``variant``) under py-spy; summarise
    where time goes.

    Three runs: a speedscope file of every thread; raw samples of every active thread; raw
    samples of only the thread holding the GIL (``--gil``).  The pipeline is one process, so the
    GIL profile is the one that shows what limits it when the GIL is saturated.
    """
    spy = shutil.which("py-spy") or str(harness.BIN / "py-spy")
    if not Path(spy).exists():
        say("  py-spy is not installed (pip install -e '.[bench]'); no profile")
        return None
    base = work / f"profile-{scenario.name}"
    if variant is not None and variant is not scenario.variants[0]:
        base = work / f"profile-{scenario.name}-{slug(variant.key)}"
    variant = variant or scenario.variants[0]
    runs = (
        ("speedscope", Path(f"{base}.speedscope.json"), ()),
        ("raw", Path(f"{base}.txt"), ()),
        ("raw", Path(f"{base}.gil.txt"), ("--gil",)),
    )
    for fmt, target, extra in runs:
        cmd = [spy, "record", "--format", fmt, "-o", str(target), "-r", "250", "--threads"]
        cmd += [*extra, "--", *variant.cmd]
        time.sleep(1.0)  # the previous run's output lock is released when its process is reaped
        m = harness.run_measured(cmd, cpus=variant.cpus, log=Path(f"{base}.log"))
        if not m.ok:
            say(f"  py-spy failed: {m.stderr_tail}")
            return None
    summary = Path(f"{base}.summary.txt")
    summary.write_text(
        f"{harness.display(variant.cmd)}\n\n== active threads ==\n"
        + summarise_profile(Path(f"{base}.txt"), rate=250)
        + "\n== GIL holder ==\n"
        + summarise_profile(Path(f"{base}.gil.txt"), rate=250)
    )
    say(f"  profile of {scenario.name}: {summary} (speedscope: {base}.speedscope.json)")
    return summary


def summarise_profile(raw: Path, rate: int, top: int = 25) -> str:
    """Per thread: busy seconds; overall: top functions by self and by inclusive samples."""
    threads: dict[str, int] = {}
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    loop: dict[str, int] = {}  # event-loop time by the task or callback running
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        thread = frames[0].split("(")[0].strip() + " " + frames[0].rpartition(":")[2].strip()
        threads[thread] = threads.get(thread, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames[1:]):
            inclusive[frame] = inclusive.get(frame, 0) + count
        runs = [i for i, frame in enumerate(frames) if frame.startswith("Handle._run ")]
        if runs and runs[-1] + 1 < len(frames):
            task = frames[runs[-1] + 1].rsplit(":", 1)[0] + ")"  # the function, any line
            loop[task] = loop.get(task, 0) + count
    lines = [f"{total} samples at {rate} Hz = {total / rate:.2f} busy seconds (all threads)", ""]
    lines.append("busy seconds per thread:")
    for name, count in sorted(threads.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {count / rate:7.2f} s  {name}")
    tables = (
        ("self time", own),
        ("inclusive time", inclusive),
        ("event-loop time, by the task or callback running", loop),
    )
    for title, table in tables:
        lines += ["", f"top {top} by {title}:"]
        for frame, count in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"  {count / rate:7.2f} s  {100 * count / total:5.1f}%  {frame}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ report


def fmt_rate(value: float) -> str:
    """IDs per second."""
    return "n/a" if math.isnan(value) else f"{value:,.0f}"


def fmt_ratio(value: float) -> str:
    """A ratio like 1.07x."""
    return "n/a" if math.isnan(value) else f"{value:.2f}x"


def ratio(a: Variant | None, b: Variant | None) -> float:
    """Throughput of ``a`` over ``b`` (medians of the same run)."""
    if a is None or b is None:
        return math.nan
    return a.rate / b.rate


def round_ratios(a: Variant, b: Variant, attr: str) -> list[float]:
    """Per round: ``a``'s ``attr`` (wall, cpu) per ID over ``b``'s, in rounds both succeeded."""
    return [
        (getattr(ma, attr) / a.ids) / (getattr(mb, attr) / b.ids)
        for ma, mb in zip(a.measures, b.measures, strict=False)
        if ma.ok and mb.ok
    ]


def paired(a: Variant | None, b: Variant | None) -> str:
    """The range of per-round throughput ratios (the rounds alternate, so pairs are fair)."""
    if a is None or b is None:
        return ""
    pairs = [1 / r for r in round_ratios(a, b, "wall")]
    if len(pairs) < 2:
        return ""
    return f" (rounds {min(pairs):.2f}-{max(pairs):.2f})"


def compare_table(scenarios: dict[str, Scenario], compare: dict[str, str]) -> list[str]:
    """``--compare-to``: each scenario's headline batchscore against the same at REV."""
    rev = compare["rev"]
    lines = [
        "",
        f"## This tree against {rev} (`--compare-to`)",
        "",
        f"- this tree: `{harness.display([BATCHSCORE])}` importing {compare['this']}",
        f"- {rev}: `{compare['prefix']} {harness.display([BATCHSCORE])}` importing "
        f"{compare['other']}",
        f"- ratios are this tree / {rev} from the same run, medians, and in brackets the range "
        "of the per-round ratios (REV runs next to this tree's in the alternation); "
        "throughput > 1: "
        "this tree is faster; CPU per ID > 1: this tree costs more",
        "",
        f"| scenario | IDs/s this / {rev} | throughput ratio | in-run throughput ratio | "
        "CPU per ID ratio | every round | output files |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for scenario in scenarios.values():
        base, other = scenario.get("batchscore"), scenario.get(f"batchscore @{rev}")
        if base is None or other is None:
            continue
        if base.failed or other.failed or not base.measures:
            lines.append(f"| {scenario.name} | failed: {base.failed or other.failed} ||||||")
            continue
        walls = [1 / r for r in round_ratios(base, other, "wall")]
        cpus = round_ratios(base, other, "cpu")
        if len(walls) < 2:
            every = "one round: no spread"
        elif min(walls) <= 1 <= max(walls):
            every = "within noise (rounds on both sides of 1)"
        else:
            every = "faster every round" if min(walls) > 1 else "**slower every round**"
        inner = (other.median("inner") / other.ids) / (base.median("inner") / base.ids)
        cpu = (base.median("cpu") / base.ids) / (other.median("cpu") / other.ids)
        same = base.output.exists() and other.output.exists()
        same = same and filecmp.cmp(base.output, other.output, shallow=False)
        lines.append(
            f"| {scenario.name} | {fmt_rate(base.rate)} / {fmt_rate(other.rate)} | "
            f"{fmt_ratio(ratio(base, other))} ({min(walls):.2f}-{max(walls):.2f}) | "
            f"{fmt_ratio(inner)} | {fmt_ratio(cpu)} ({min(cpus):.2f}-{max(cpus):.2f}) | "
            f"{every} | {'byte-identical' if same else '**differ**'} |"
        )
    return lines


def order_cost(ordered: Variant | None, unordered: Variant | None) -> float:
    """How much longer the run in input order takes than ``--unordered`` (0.03 = 3%)."""
    if ordered is None or unordered is None:
        return math.nan
    return ordered.median("wall") / unordered.median("wall") - 1


def variant_table(scenario: Scenario, against: Variant | None) -> list[str]:
    """The per-variant table of a scenario."""
    rows = [
        "| variant | CPUs | IDs | median wall s | IDs/s | vs "
        + (against.key if against else "-")
        + " | in-run IDs/s | CPU s (user+sys) | CPU µs/ID | main thread share | peak RSS MB"
        + " | server CPU s | server max in flight |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in scenario.variants:
        if v.failed:
            rows.append(f"| {v.key} | {v.layout} | {v.ids:,} | failed: {v.failed} |||||||||")
            continue
        cpu = v.median("cpu")
        server = v.median("server_cpu")
        inflight = v.median("server_max_inflight")
        main = v.median("main_thread_cpu")
        rows.append(
            f"| {v.key} | {v.layout} | {v.ids:,} | {v.median('wall'):.2f} | {fmt_rate(v.rate)} | "
            f"{fmt_ratio(ratio(v, against))} | {fmt_rate(v.ids / v.median('inner'))} | "
            f"{cpu:.2f} | {cpu / v.ids * 1e6:,.0f} | "
            f"{'-' if math.isnan(main) else f'{main / cpu:.0%}'} | "
            f"{v.median('max_rss_mb'):.0f} | "
            f"{'-' if math.isnan(server) else f'{server:.2f}'} | "
            f"{'-' if math.isnan(inflight) else f'{inflight:.0f}'} |"
        )
    return rows


def verdict(ok: bool | None) -> str:
    """Met / NOT met / not measured."""
    if ok is None:
        return "not measured"
    return "met" if ok else "**NOT met**"


def at_least(value: float, bound: float) -> bool | None:
    """``value >= bound``, or None when unmeasured."""
    return None if math.isnan(value) else value >= bound


def at_most(value: float, bound: float) -> bool | None:
    """``value <= bound``, or None when unmeasured."""
    return None if math.isnan(value) else value <= bound


def best(scenario: Scenario | None, tool: str, prefix: str = "") -> Variant | None:
    """The fastest successful variant of a tool (for the expert: its best thread setting)."""
    if scenario is None:
        return None
    candidates = [
        v
        for v in scenario.variants
        if v.tool == tool and v.key.startswith(prefix) and not v.failed and v.measures
    ]
    return max(candidates, key=lambda v: v.rate, default=None)


def write_report(
    target: Path,
    scenarios: dict[str, Scenario],
    extras: dict[str, Any],
    meta: dict[str, Any],
) -> None:
    """Write the markdown report (keeping the hand-written analysis of an existing file)."""
    s1, s2, s3, s4, s7 = (scenarios.get(k) for k in ("P1", "P2", "P3", "P4", "P7"))
    get = lambda s, k: s.get(k) if s else None  # noqa: E731
    bs1, ex1, sync = get(s1, "batchscore"), get(s1, "expert"), best(s1, "sync")
    bs1u = get(s1, "batchscore --unordered")
    bs2, bs2u = get(s2, "batchscore"), get(s2, "batchscore --unordered")
    ex2 = best(s2, "expert", "expert --threads")
    bs3, ex3 = get(s3, "batchscore"), get(s3, "expert (sqlite3)")
    bs4 = get(s4, "batchscore")
    bs7, ex7 = get(s7, "batchscore"), get(s7, "expert (asyncpg)")
    scoring = extras.get("scoring_only", {})
    score_all = scoring.get("0", {}).get("rows_per_s", math.nan)
    p5 = extras.get("startup", {})
    help_s = p5.get("batchscore --help", {}).get("median", math.nan)
    one_s = p5.get("batchscore score (1 ID, SQLite)", {}).get("median", math.nan)
    rss_small = bs4.median("max_rss_mb") if bs4 else math.nan
    rss_big = bs3.median("max_rss_mb") if bs3 else math.nan
    order1 = order_cost(bs1, bs1u)
    order2 = order_cost(bs2, bs2u)

    targets: list[tuple[str, str, str, str, bool | None]] = [
        (
            "P1",
            "vs expert script",
            fmt_ratio(ratio(bs1, ex1)) + paired(bs1, ex1),
            ">= 1.0x",
            at_least(ratio(bs1, ex1), 1.0),
        ),
        (
            "P1",
            "vs synchronous loop",
            fmt_ratio(ratio(bs1, sync)),
            ">= 60x",
            at_least(ratio(bs1, sync), 60.0),
        ),
        (
            "P1",
            "% of ideal 3,200 IDs/s",
            f"{100 * bs1.rate / IDEAL_P1:.0f}% ({fmt_rate(bs1.rate)} IDs/s)"
            if bs1 and not bs1.failed
            else "n/a",
            "report",
            None if not bs1 or bs1.failed else True,
        ),
        (
            "P2",
            "vs expert script (its best thread setting)",
            fmt_ratio(ratio(bs2, ex2)) + paired(bs2, ex2),
            ">= 1.0x",
            at_least(ratio(bs2, ex2), 1.0),
        ),
        (
            "P2",
            "% of scoring-only throughput (all cores)",
            f"{100 * bs2.rate / score_all:.0f}% of {fmt_rate(score_all)} rows/s"
            if bs2 and not bs2.failed
            else "n/a",
            "report",
            None if not bs2 or bs2.failed else True,
        ),
        (
            "P3",
            "vs sqlite3 expert script",
            fmt_ratio(ratio(bs3, ex3)) + paired(bs3, ex3),
            ">= 1.0x",
            at_least(ratio(bs3, ex3), 1.0),
        ),
        (
            "P4",
            "peak RSS 1M / 100k",
            f"{rss_big:.0f} / {rss_small:.0f} MB = {rss_big / rss_small:.2f}x",
            "<= 1.2x",
            at_most(rss_big / rss_small, 1.2),
        ),
        ("P4", "peak RSS at 1M", f"{rss_big:.0f} MB", "<= 300 MB", at_most(rss_big, 300)),
        ("P5", "`batchscore --help`", f"{help_s * 1000:.0f} ms", "<= 0.3 s", at_most(help_s, 0.3)),
        (
            "P5",
            "`score` of one ID from SQLite",
            f"{one_s * 1000:.0f} ms",
            "<= 1.0 s",
            at_most(one_s, 1.0),
        ),
        ("P6", "input order cost, P1", f"{100 * order1:+.1f}%", "<= 5%", at_most(order1, 0.05)),
        ("P6", "input order cost, P2", f"{100 * order2:+.1f}%", "<= 5%", at_most(order2, 0.05)),
        (
            "P7",
            "vs asyncpg expert script",
            fmt_ratio(ratio(bs7, ex7)) + paired(bs7, ex7),
            ">= 1.0x",
            at_least(ratio(bs7, ex7), 1.0),
        ),
    ]

    lines = [
        "# Benchmark results",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} in {meta['duration']}; "
        f"{meta['rounds']} round(s) per scenario, variants alternated (the order rotates each "
        "round); figures are medians; ratios compare variants measured in the same run.  "
        "Rerun with `make bench`; see `bench/README.md` for how to read this.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in meta["machine"].items()]
    loads = [m.load for sc in scenarios.values() for v in sc.variants for m in v.measures if m.load]
    if loads:
        lines.append(
            f"| 1-min load average at the end of runs | median {statistics.median(loads):.2f}, "
            f"range {min(loads):.2f}-{max(loads):.2f} (the bench alone adds ~1-2) |"
        )
    lines += [
        "",
        "## Targets (issues 9 and 12)",
        "",
        "| scenario | target | measured | bound | verdict |",
        "|---|---|---|---|---|",
    ]
    ran = set(scenarios) | ({"P5"} if p5 else set()) | ({"P6"} if s1 or s2 else set())
    for name, what, value, bound, ok in targets:
        if name in ran:  # a partial run (--only) lists only its own targets
            lines.append(f"| {name} | {what} | {value} | {bound} | {verdict(ok)} |")

    if meta.get("compare"):
        lines += compare_table(scenarios, meta["compare"])
    lines += [
        "",
        "Ratios and IDs/s use wall time end to end, as a user sees it: interpreter start-up, "
        "imports and model load included (the scripts' `import lightgbm, aiohttp, orjson` "
        "alone is timed in P5; LightGBM pulls in pandas and scipy there, batchscore blocks "
        "pandas).  *In-run IDs/s* leaves start-up out: batchscore's `--report` "
        "`elapsed_seconds`, the scripts' own clock started after their imports.",
        "",
    ]

    for key in ("P1", "P2", "P3", "P4", "P7"):
        scenario = scenarios.get(key)
        if scenario is None:
            continue
        against = {
            "P1": ex1,
            "P2": ex2,
            "P3": ex3,
            "P4": get(s4, "expert (sqlite3)"),
            "P7": ex7,
        }[key]
        lines += ["", f"## {key}: {scenario.title}", ""]
        lines += variant_table(scenario, against)
        lines += [""] + [f"- {note}" for note in scenario.notes]
        lines += [f"- scores: {check}" for check in scenario.checks]
        for v in scenario.variants:
            for i, m in enumerate(v.measures):
                if m.extra.get("short"):
                    lines.append(f"- {v.key} round {i + 1}: {m.extra['short']}")

    if scoring:
        lines += [
            "",
            "## Scoring only (P2 ceiling)",
            "",
            "`predict` on the prebuilt 200,000 x 28 matrix of the HTTP table, 300 trees, "
            "best of 3:",
            "",
            "| threads | rows/s | command |",
            "|---|---:|---|",
        ]
        for threads, res in scoring.items():
            label = "0 (all cores)" if threads == "0" else threads
            lines.append(
                f"| {label} | {fmt_rate(res.get('rows_per_s', math.nan))} | `{res['command']}` |"
            )

    if p5:
        lines += [
            "",
            "## P5: start-up",
            "",
            "| command | median | mean ± sd | min-max | runs | tool |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for res in p5.values():
            lines.append(
                f"| `{res['command']}` | {res['median'] * 1000:.0f} ms | "
                f"{res['mean'] * 1000:.0f} ± {res['stddev'] * 1000:.0f} ms | "
                f"{res['min'] * 1000:.0f}-{res['max'] * 1000:.0f} ms | "
                f"{res['runs']} | {res['tool']} |"
            )

    lines += ["", "## LightGBM threads (`--threads` / `[score] threads`)", ""]
    for key in ("P2", "P3"):
        scenario = scenarios.get(key)
        if scenario is None:
            continue
        options = [
            v
            for v in scenario.variants
            if v.tool == "batchscore"
            and "[" not in v.key
            and "--unordered" not in v.key
            and "@" not in v.key
            and not v.failed
            and v.measures
        ]
        if options:
            cells = ", ".join(
                f"{v.key.replace('batchscore', '').strip() or 'default (0 = all)'}: "
                f"{fmt_rate(v.rate)} IDs/s"
                for v in options
            )
            fastest = max(options, key=lambda v: v.rate)
            lines.append(f"- {key}: {cells}; fastest: `{fastest.key}`")

    lines += [
        "",
        "## Commands",
        "",
        "Run from the project root; `PORT` is the feature server's.",
        "",
        "```",
    ]
    for name, server in extras.get("servers", {}).items():
        lines.append(f"# feature server ({name})")
        lines.append(server)
    for scenario in scenarios.values():
        lines.append(f"# {scenario.name}")
        for v in scenario.variants:
            lines.append(harness.display(harness.pinned(v.cmd, v.cpus)))
    lines += [
        "```",
        "",
        "## Every round",
        "",
        "<details><summary>wall seconds per round</summary>",
        "",
        "| scenario | variant | rounds (s) |",
        "|---|---|---|",
    ]
    for scenario in scenarios.values():
        for v in scenario.variants:
            walls = ", ".join(f"{m.wall:.2f}" + ("" if m.ok else "!") for m in v.measures)
            lines.append(f"| {scenario.name} | {v.key} | {walls} |")
    lines += ["", "</details>", "", ANALYSIS_MARK, ""]

    kept = ""
    if target.exists():
        old = target.read_text()
        if ANALYSIS_MARK in old:
            kept = old.split(ANALYSIS_MARK, 1)[1].lstrip("\n")
    target.write_text("\n".join(lines) + kept)


# ------------------------------------------------------------------------------ main


SCENARIOS = ("P1", "P2", "P3", "P4", "P5", "P7")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 round")
    parser.add_argument("--rounds", type=int, help="rounds per scenario (default 3, quick 1)")
    parser.add_argument(
        "--only", help="comma-separated scenarios, e.g. P1,P3 (P6 comes with P1/P2)"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy profile of batchscore too")
    parser.add_argument("--out", type=Path, help="report path (default: see the module doc)")
    parser.add_argument(
        "--compare-to",
        metavar="REV",
        help="also run each scenario's batchscore at git commit REV, alternated (module doc)",
    )
    parser.add_argument(
        "--compare-only",
        action="store_true",
        help="with --compare-to: run only the headline batchscore and its REV twin (A B, B A, "
        "...: more rounds in the same time)",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    sizes = QUICK if args.quick else Sizes()
    rounds = args.rounds or (1 if args.quick else 3)
    only = [s.strip().upper() for s in args.only.split(",")] if args.only else list(SCENARIOS)
    if args.compare_only and not args.compare_to:
        parser.error("--compare-only needs --compare-to REV")
    if "P6" in only:
        only += [s for s in ("P1", "P2") if s not in only]
    unknown = set(only) - {*SCENARIOS, "P6"}
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from P1-P7")
    target = args.out or (
        RESULTS if not args.quick and not args.only else data.WORK / "RESULTS-quick.md"
    )

    machine = harness.machine()  # the commit measured is the one at the start
    compare: dict[str, str] = {}
    prefix: list[str] = []
    if args.compare_to:
        try:
            tree = harness.tree_at(args.compare_to)
        except RuntimeError as exc:
            parser.error(str(exc))
        prefix = harness.revision(tree)
        _, this = harness.batchscore_code()
        there, other = harness.batchscore_code(prefix)
        if there.resolve() != (tree / "cli" / "batchscore").resolve():
            parser.error(f"{harness.display(prefix)} imports {there}, not {tree}/cli")
        rev = harness.git("rev-parse", "--short", "HEAD", cwd=tree)
        compare = {"rev": rev, "this": this, "other": other, "prefix": harness.display(prefix)}
        say(f"batchscore: {this}\nbatchscore @{rev}: {other}")
    p = data.ensure()
    ids = {
        "p1": p.ids_p1,
        "sync": p.ids_sync,
        "p2": p.ids_p2,
        "p3": p.ids_p3,
        "p4_small": p.ids_p4_small,
        "p7": p.ids_p3,
    }
    if sizes != Sizes():
        ids = {
            "p1": data.take_ids(p.ids_p1, sizes.p1, p.work / "ids_p1_quick.txt"),
            "sync": data.take_ids(p.ids_sync, sizes.sync, p.work / "ids_sync_quick.txt"),
            "p2": data.take_ids(p.ids_p2, sizes.p2, p.work / "ids_p2_quick.txt"),
            "p3": data.take_ids(p.ids_p3, sizes.p3, p.work / "ids_p3_quick.txt"),
            "p4_small": data.take_ids(p.ids_p3, sizes.p4_small, p.work / "ids_p4_quick.txt"),
            "p7": data.take_ids(p.ids_p3, sizes.p7, p.work / "ids_p7_quick.txt"),
        }
    for db in (p.db_1m, p.db_http):  # warm the page cache: every scenario reads a warm table
        with db.open("rb") as f:
            while f.read(1 << 24):
                pass
    log_dir = p.work / "logs"
    servers: dict[str, FeatureServer] = {}
    postgres: PostgresBench | None = None
    scenarios: dict[str, Scenario] = {}
    extras: dict[str, Any] = {}
    try:
        if "P7" in only:
            postgres = PostgresBench(p.db_1m)
            machine["postgresql"] = (
                f"{postgres.version} ({harness.display([str(postgres.server.bindir)])})"
            )
        if {"P1", "P2"} & set(only):
            servers["split"] = FeatureServer(p.db_http, latency=LATENCY, cpus=SERVER_CPUS)
            servers["shared"] = FeatureServer(p.db_http, latency=LATENCY, cpus=None)
            for name, server in servers.items():
                server.wait_ready()
                say(f"feature server ({name}) at {server.url}")
                warm_up(server, ids, p.work / "out" / f"warm-up-{name}.csv", p.model_300)
            extras["servers"] = {
                "split: pinned to CPU " + SERVER_CPUS: servers["split"].command,
                "shared: not pinned": servers["shared"].command,
            }
        ctx = Context(p, sizes, rounds, servers, ids, postgres)
        builders: dict[str, Callable[[], Scenario]] = {
            "P1": lambda: p1(ctx),
            "P2": lambda: p2(ctx),
            "P3": lambda: p3(ctx, sizes.p3),
            "P4": lambda: p3(ctx, sizes.p4_small, name="P4", threads=False),
            "P7": lambda: p7(ctx),
        }
        for name in SCENARIOS:
            if name not in only:
                continue
            say(f"{name} ...")
            if name == "P5":
                extras["startup"] = startup(ctx)
                continue
            if name == "P2":
                extras["scoring_only"] = scoring_only(ctx)
            scenario = builders[name]()
            other = with_revision(scenario, compare["rev"], prefix) if compare else None
            if args.compare_only and other is not None:
                scenario.variants = [
                    v for v in scenario.variants if v.key in ("batchscore", other.key)
                ]
            run_scenario(scenario, rounds, log_dir)
            scenarios[name] = scenario
            if args.profile:
                profile(scenario, p.work)
                if other is not None:
                    profile(scenario, p.work, other)
    finally:
        for server in servers.values():
            server.stop()
        if postgres is not None:
            postgres.stop()

    elapsed = time.monotonic() - started
    meta = {
        "command": "make bench" if not sys.argv[1:] else "bench/run.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "duration": f"{elapsed / 60:.1f} min",
        "rounds": rounds,
        "machine": machine,
        "compare": compare,
    }
    write_report(target, scenarios, extras, meta)
    raw = {
        name: [
            {
                "key": v.key,
                "ids": v.ids,
                "cmd": harness.display(v.cmd),
                "cpus": v.cpus,
                "measures": [asdict(m) for m in v.measures],
            }
            for v in s.variants
        ]
        for name, s in scenarios.items()
    }
    (p.work / "results.json").write_text(
        json.dumps({"meta": meta, "scenarios": raw, "extras": extras}, indent=1, default=str)
    )
    say(f"wrote {target} in {elapsed / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
