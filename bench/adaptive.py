"""Issue 20: ``--concurrency auto`` against fixed settings, on services with different limits.

Three simulated services (``tests/featureserver.py`` with its queueing and load-shedding
modes), each swept with fixed ``--concurrency`` 8, 16, 32, 64, 128, 256 and ``auto``, all in
one run, 8,000 per-ID GETs each, the real command (start-up included), a 300-tree model:

* **queueing**: 24 workers, 20 ms each; the rest wait their turn (``--workers 24``)
* **shedding**: over 24 in flight, 503 with ``Retry-After: 1`` at once (``--shed-over 24``)
* **roomy**: 50 ms, no limit

Per run: goodput (scored IDs / wall seconds), the share of requests refused (503/429, the
server's count), failed IDs, the mean queue wait (the server's: time a request waited for a
worker), the server's most requests in flight, and auto's final limit and range (report JSON).

Then a **capacity drop**: 48 workers of 20 ms, 12 from 4 s after the first request, 48 again
from 10 s on (``--capacity-schedule``), 20,000 IDs, auto and fixed 12/48/64; the server's
timeline (per 0.5 s) shows how fast auto follows.  With ``--p12``, P1-like (per-ID, 20 ms,
16,000 IDs) and P2-like (batch POST of 100, 20 ms, 200,000 IDs) runs compare auto with fixed
settings on roomy services.

Server pinned to CPU 1, client to CPU 0 (the P1 layout of ``bench/run.py``).  The machine is
shared and noisy: compare ratios within one run.

    .venv/bin/python bench/adaptive.py [--p12] [--only queueing,roomy] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import data
import harness
from harness import CLIENT_CPUS, SERVER_CPUS, FeatureServer

ROOT = harness.ROOT
BATCHSCORE = str(harness.BIN / "batchscore")
SETTINGS = ("8", "16", "32", "64", "128", "256", "auto")
SERVICES: dict[str, tuple[float, list[str]]] = {
    "queueing": (0.02, ["--workers", "24"]),
    "shedding": (0.02, ["--shed-over", "24", "--retry-after", "1"]),
    "roomy": (0.05, []),
}
DROP = (0.02, ["--workers", "48", "--capacity-schedule", "4:12,10:48"])
DROP_AT, BACK_AT = 4.0, 10.0


@dataclass
class Run:
    """One run of the command against one service."""

    service: str
    setting: str
    ids: int
    wall: float = 0.0
    cpu: float = 0.0  # user + system seconds of the command
    scored: int = 0
    failed: int = 0
    exit_code: int = 0
    requests: int = 0
    refused: int = 0
    queue_wait: float = 0.0
    max_inflight: int = 0
    limit: dict[str, int] = field(default_factory=dict)
    timeline: list[list[float]] = field(default_factory=list)
    command: str = ""
    rounds: list[float] = field(default_factory=list)  # goodput of each round

    @property
    def goodput(self) -> float:
        """Scored IDs per second of wall time, start-up included."""
        return self.scored / self.wall if self.wall else 0.0

    @property
    def refused_share(self) -> float:
        """Requests answered 503/429, of all the server received."""
        return self.refused / self.requests if self.requests else 0.0


def config(work: Path, name: str, model: Path, url: str, batch: bool = False) -> Path:
    """A config for the service at ``url`` (per-ID GET, or batch POST of 100)."""
    if batch:
        source = f'mode = "batch"\nurl = "{url}/batch"\nbatch_size = 100\n'
    else:
        source = f'mode = "per_id"\nurl = "{url}/features/{{id}}"\nfeatures_path = "features"\n'
    path = work / f"adaptive-{name}.toml"
    path.write_text(
        f'[model]\npath = "{model}"\n\n[[sources]]\nname = "svc"\nkind = "http"\n{source}'
    )
    return path


def run_one(
    server: FeatureServer, service: str, setting: str, ids: Path, cfg: Path, count: int
) -> Run:
    """The real command against ``server`` with ``--concurrency setting``."""
    work = data.WORK
    out = work / "out" / f"adaptive-{service}-{setting}.csv"
    report = out.with_suffix(".report.json")
    cmd = [
        BATCHSCORE,
        "score",
        str(ids),
        "-c",
        str(cfg),
        "-o",
        str(out),
        "--overwrite",
        "--quiet",
        "--max-failed-rate",
        "1",
        "--report",
        str(report),
        "--concurrency",
        setting,
    ]
    report.unlink(missing_ok=True)  # a run that fails writes none: no stale figures
    log = work / "logs" / f"adaptive-{service}-{setting}.log"
    measure = harness.run_against(server, cmd, cpus=CLIENT_CPUS, log=log)
    stats = server.stats()
    run = Run(service, setting, count, wall=measure.wall, exit_code=measure.returncode)
    run.cpu = measure.cpu
    run.command = harness.display(harness.pinned(cmd, CLIENT_CPUS))
    if report.exists():
        body = json.loads(report.read_text())
        run.scored = int(body["scored"])
        run.failed = int(body["failed"])
        run.limit = body.get("concurrency", {}).get("svc", {})
    statuses = stats["responses_by_status"]
    run.requests = int(stats["requests_total"])
    run.refused = int(statuses.get("503", 0)) + int(statuses.get("429", 0))
    run.queue_wait = float(stats.get("queue_wait_mean", 0.0))
    run.max_inflight = int(stats["max_inflight"])
    run.timeline = stats.get("timeline", [])
    print(
        f"{service:9} {setting:>5}: {run.goodput:7.0f} IDs/s, wall {run.wall:5.2f} s, "
        f"CPU {run.cpu:5.2f} s, "
        f"refused {run.refused_share:6.1%}, failed {run.failed:5}, queue wait "
        f"{run.queue_wait * 1000:6.1f} ms, max in flight {run.max_inflight:4}, "
        f"limit {run.limit or '-'} exit {run.exit_code}",
        file=sys.stderr,
        flush=True,
    )
    return run


def sweep(
    p: data.Paths,
    service: str,
    latency: float,
    flags: list[str],
    settings: tuple[str, ...],
    ids: Path,
    count: int,
    *,
    batch: bool = False,
    rounds: int = 1,
) -> list[Run]:
    """Every setting against one fresh server (one process for the sweep), ``rounds`` times
    in alternating order; per setting, the run of median goodput (its ``rounds`` field holds
    every round's goodput)."""
    server = FeatureServer(p.db_http, latency=latency, cpus=SERVER_CPUS, extra=flags)
    try:
        url = server.wait_ready()
        cfg = config(p.work, service, p.model_300, url, batch)
        # Warm-up: the server caches each ID's encoded answer when first asked (below the
        # limit of a service that has one: a refused request caches nothing).
        run_one(server, service, "24" if flags else "256", ids, cfg, count)
        done: dict[str, list[Run]] = {s: [] for s in settings}
        for k in range(rounds):
            for setting in settings if k % 2 == 0 else settings[::-1]:
                done[setting].append(run_one(server, service, setting, ids, cfg, count))
        medians = []
        for setting in settings:
            ordered = sorted(done[setting], key=lambda r: r.goodput)
            median = ordered[(len(ordered) - 1) // 2]
            median.rounds = [r.goodput for r in done[setting]]
            medians.append(median)
        return medians
    finally:
        server.stop()


def table(runs: list[Run]) -> list[str]:
    """The markdown table of one service's sweep, with auto's ratio to the best fixed."""
    fixed = [r for r in runs if r.setting != "auto"]
    best = max(fixed, key=lambda r: r.goodput)
    lines = [
        "| setting | goodput IDs/s | vs best fixed | wall s | CPU s | refused | failed IDs | "
        "mean queue wait ms | server max in flight | auto limit: final (range) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        limit = f"{r.limit['final']} ({r.limit['low']}-{r.limit['high']})" if r.limit else ""
        lines.append(
            f"| {r.setting} | {r.goodput:,.0f} | {r.goodput / best.goodput:.2f}x | {r.wall:.2f} "
            f"| {r.cpu:.2f} | {r.refused_share:.1%} | {r.failed:,} | {r.queue_wait * 1000:.1f} | "
            f"{r.max_inflight} | {limit} |"
        )
    return lines


def verdicts(service: str, runs: list[Run]) -> list[str]:
    """The issue's targets for one service."""
    fixed = [r for r in runs if r.setting != "auto"]
    auto = next(r for r in runs if r.setting == "auto")
    best = max(fixed, key=lambda r: r.goodput)
    ratio = auto.goodput / best.goodput
    per_round = [a / b for a, b in zip(auto.rounds, best.rounds, strict=True)]
    spread = f", rounds {min(per_round):.2f}-{max(per_round):.2f}x" if len(per_round) > 1 else ""
    out = [
        f"- auto / best fixed ({best.setting}): **{ratio:.2f}x**{spread} "
        f"({'met' if ratio >= 0.9 else 'MISSED'} >= 0.9x; "
        f"stretch 0.95x {'met' if ratio >= 0.95 else 'missed'})",
        f"- auto's refused share {auto.refused_share:.1%} "
        f"({'met' if auto.refused_share <= 0.05 else 'MISSED'} <= 5%); failed IDs {auto.failed} "
        f"(best fixed: {best.failed}; {'met' if auto.failed <= best.failed else 'MISSED'})",
    ]
    if service == "queueing":
        wait = auto.queue_wait
        out.append(
            f"- auto's mean queue wait {wait * 1000:.1f} ms "
            f"({'met' if wait < 0.02 else 'MISSED'} < 20 ms, the service's latency)"
        )
    return out


def follow(run: Run, step: float) -> list[str]:
    """How fast a run followed the capacity drop and the recovery (the server's timeline)."""
    lines = ["| t s | answers/s | refused/s | max in flight | mean queue wait ms |"]
    lines.append("|---:|---:|---:|---:|---:|")
    for i, slot in enumerate(run.timeline):
        answers, refused, peak, wait_sum, waits = slot
        wait = wait_sum / waits * 1000 if waits else 0.0
        lines.append(
            f"| {i * step:.1f} | {answers / step:,.0f} | {refused / step:,.0f} | {peak:.0f} "
            f"| {wait:.1f} |"
        )
    return lines


def adapt_times(run: Run, step: float, latency: float) -> tuple[float | None, float | None]:
    """Seconds from the drop until the mean queue wait is under the service's latency again,
    and from the recovery until answers/s are within 10% of the median rate before the drop."""
    slots = run.timeline
    before = sorted(s[0] / step for i, s in enumerate(slots) if 1.0 <= i * step < DROP_AT)
    rate = before[len(before) // 2] if before else 0.0  # the median: single slots are noisy
    settled = recovered = None
    for i, (_, _, _, wait_sum, waits) in enumerate(slots):
        t = i * step
        calm = bool(waits) and wait_sum / waits < latency
        if DROP_AT <= t < BACK_AT and settled is None and calm:
            settled = t + step - DROP_AT
    for i, (answers, *_rest) in enumerate(slots):
        t = i * step
        if t >= BACK_AT and recovered is None and answers / step >= 0.9 * rate:
            recovered = t + step - BACK_AT
    return settled, recovered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="services, comma-separated (and 'drop')")
    parser.add_argument("--p12", action="store_true", help="also P1/P2-like roomy runs")
    parser.add_argument("--ids", type=int, default=8_000)
    parser.add_argument("--rounds", type=int, default=1, help="rounds, in alternating order")
    parser.add_argument("--out", type=Path, default=data.WORK / "adaptive.md")
    args = parser.parse_args()
    p = data.ensure()
    (p.work / "logs").mkdir(exist_ok=True)
    ids = data.take_ids(p.ids_p1, args.ids, p.work / f"ids_adaptive_{args.ids}.txt")
    only = set(filter(None, args.only.split(",")))
    md = ["# --concurrency auto against fixed settings (bench/adaptive.py)", ""]
    md += [f"- {k}: {v}" for k, v in harness.machine().items()]
    md += [
        "",
        f"Per-ID GETs, {args.ids:,} IDs per run, 300-tree model, {args.rounds} round(s) in "
        "alternating order; each row is the run of median goodput.",
        "",
    ]
    everything: dict[str, Any] = {}
    for service, (latency, flags) in SERVICES.items():
        if only and service not in only:
            continue
        runs = sweep(p, service, latency, flags, SETTINGS, ids, args.ids, rounds=args.rounds)
        everything[service] = [vars(r) for r in runs]
        md += [f"## {service}: `featureserver.py --latency {latency} {' '.join(flags)}`", ""]
        md += [*table(runs), "", *verdicts(service, runs), ""]
    if not only or "drop" in only:
        count = 20_000
        drop_ids = data.take_ids(p.ids_p2, count, p.work / f"ids_adaptive_{count}.txt")
        latency, flags = DROP
        runs = sweep(
            p, "drop", latency, flags, ("12", "48", "64", "auto"), drop_ids, count, rounds=1
        )
        everything["drop"] = [vars(r) for r in runs]
        md += [f"## capacity drop: `featureserver.py --latency {latency} {' '.join(flags)}`", ""]
        md += [*table(runs), ""]
        for r in runs:
            settled, recovered = adapt_times(r, 0.5, latency)
            md.append(
                f"- {r.setting}: queue wait under 20 ms again "
                f"{'never' if settled is None else f'{settled:.1f} s'} after the drop; "
                f"answers/s within 10% of before "
                f"{'never' if recovered is None else f'{recovered:.1f} s'} after the recovery"
            )
        auto = next(r for r in runs if r.setting == "auto")
        md += ["", "auto's run, per 0.5 s (server's view):", "", *follow(auto, 0.5), ""]
    if args.p12:
        count = 16_000
        settings = ("64", "128", "256", "auto")
        runs = sweep(p, "P1", 0.02, [], settings, p.ids_p1, count, rounds=args.rounds)
        everything["P1"] = [vars(r) for r in runs]
        md += ["## P1-like: per-ID GET, 20 ms, 16,000 IDs", "", *table(runs), ""]
        md += [*verdicts("P1", runs)[:1], ""]
        count = 200_000
        settings = ("8", "16", "32", "auto")
        runs = sweep(p, "P2", 0.02, [], settings, p.ids_p2, count, batch=True, rounds=args.rounds)
        everything["P2"] = [vars(r) for r in runs]
        md += ["## P2-like: batch POST of 100, 20 ms, 200,000 IDs", "", *table(runs), ""]
        md += [*verdicts("P2", runs)[:1], ""]
    md += ["Commands (one per setting; PORT varies):", "", "```"]
    md += [*sorted({r["command"] for runs in everything.values() for r in runs})[:3], "```", ""]
    args.out.write_text("\n".join(md) + "\n")
    (p.work / "adaptive.json").write_text(json.dumps(everything, indent=1))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
