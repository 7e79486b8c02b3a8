"""Issue 13's bench: the cost of a second model in one pass, against two separate runs.

P2's setup (``bench/run.py``): the test feature server (``tests/featureserver.py``, 20 ms
latency, not pinned: P2's headline *shared* layout) answers POSTs of 100 IDs, batchscore runs
as the installed command with concurrency 16 over the 200,000 shuffled IDs of ``ids_p2.txt``
(the configs and the command line are ``run.py``'s own ``http_config`` and ``bs_cmd``), and the
server is warmed up once (``run.warm_up``) before anything is timed.  Three variants, run
alternately in the same session (round 1: a b c, round 2: b c a, round 3: c a b), medians:

* (a) model A alone: ``bench/work/model_300.txt`` (``data.py``'s 300-tree model);
* (b) two separate runs, A then B, back to back; their wall and CPU seconds and the requests
  the server answered are summed;
* (c) one run with ``-m a=A -m b=B``.

B (``bench/work/model_300_b.txt``, built here once) is a second 300-tree binary model on the same
28 features, trained like A on other rows (another generator seed) with another LightGBM seed
and other sampling (feature_fraction 0.8, bagging 0.8 every iteration): a challenger retrained
on fresh data.  Same number of trees and leaves as A, so B alone costs what A alone costs.

Each round checks, and stops with an error if not: every run exits 0 and writes 200,000 rows;
(c)'s ``score_a`` column equals (a)'s and (b)'s first run's ``score`` column, and ``score_b``
equals (b)'s second run's, as text (the CSV holds each float's shortest round-trip repr, so equal
text is equal bits); the server answered as many requests for (c) as for (a), and twice that
for (b).  Usage::

    .venv/bin/python bench/second_model.py          # -> bench/results/second-model.md
    .venv/bin/python bench/second_model.py --ids 20000 --rounds 1 --out /tmp/s.md   # smoke
    PYTHONPATH=$PWD/cli .venv/bin/python bench/second_model.py   # this checkout's code

The command runs whatever ``batchscore`` package its interpreter imports: the editable
install's ``cli/``, unless ``PYTHONPATH`` puts another first (a worktree's, to measure a commit
while the install's tree is being edited).  The report names the package and its commit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import data
import harness
import run
from harness import FeatureServer, Measure

ROOT = harness.ROOT
OUT = ROOT / "bench" / "results" / "second-model.md"
CONCURRENCY = "16"
MODEL_B_RECIPE: dict[str, Any] = {
    "data_seed": [data.RECIPE["seed"], 10_001],  # A's rows come from [seed, 10_000]
    "params": {
        "seed": data.RECIPE["seed"] + 1,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
    },
    "trees": data.RECIPE["trees"],
    "train_rows": data.RECIPE["train_rows"],
}


# ------------------------------------------------------------------------------ model B


def ensure_model_b(p: data.Paths) -> Path:
    """B: trained as ``data.train_model`` trains A, with :data:`MODEL_B_RECIPE`'s changes."""
    target = p.work / "model_300_b.txt"
    stamp = p.work / "model_300_b.json"
    recipe = json.dumps(MODEL_B_RECIPE, sort_keys=True)
    if target.exists() and stamp.exists() and stamp.read_text() == recipe:
        return target
    import lightgbm as lgb
    import numpy as np
    import pandas as pd

    run.say("training model B (once)")
    ms = data._sample_module()
    rows = MODEL_B_RECIPE["train_rows"]
    rng = np.random.default_rng(MODEL_B_RECIPE["data_seed"])
    frame, labels = ms.generate_customers(rng, rows)
    columns = data._columns_with_nulls(ms, rng, frame)
    features = pd.DataFrame(index=range(rows))
    for (name, sql_type), column in zip(ms.FEATURE_COLUMNS, columns, strict=True):
        if sql_type == "TEXT":
            features[name] = pd.Categorical(column, categories=list(ms.CATEGORIES[name]))
        else:
            features[name] = pd.to_numeric(pd.Series(column, dtype=object)).astype(np.float64)
    params = {**ms.LGB_PARAMS, **MODEL_B_RECIPE["params"], "verbosity": -1}
    booster = lgb.train(
        params,
        lgb.Dataset(features, label=labels, categorical_feature="auto"),
        num_boost_round=MODEL_B_RECIPE["trees"],
    )
    assert booster.num_trees() == MODEL_B_RECIPE["trees"], booster.num_trees()
    booster.save_model(str(target))
    stamp.write_text(recipe)
    return target


def measured_code() -> str:
    """The command, and the code it imports: the editable install's ``cli/``, or the one
    ``PYTHONPATH`` puts first (to measure a commit while the install's tree is being edited)."""
    via = " via PYTHONPATH" if os.environ.get("PYTHONPATH") else ""
    package = harness.batchscore_code()[1]
    return f"{harness.display([run.BATCHSCORE])}, importing {package}{via}"


# ------------------------------------------------------------------------------ variants


@dataclass
class Step:
    """One batchscore run of a variant."""

    label: str
    cmd: list[str]
    output: Path


@dataclass
class Round:
    """A variant's runs in one round, and their sums."""

    measures: list[Measure]
    requests: list[int]

    @property
    def wall(self) -> float:
        return sum(m.wall for m in self.measures)

    @property
    def cpu(self) -> float:
        return sum(m.cpu for m in self.measures)

    @property
    def inner(self) -> float:
        return sum(m.inner or 0.0 for m in self.measures)

    @property
    def server_cpu(self) -> float:
        return sum(m.server_cpu or 0.0 for m in self.measures)

    @property
    def rss(self) -> float:
        return max(m.max_rss_mb for m in self.measures)

    @property
    def served(self) -> int:
        return sum(self.requests)

    @property
    def load(self) -> float:
        return self.measures[-1].load or 0.0


@dataclass
class Variant:
    """(a), (b) or (c): its runs, one after the other."""

    key: str
    title: str
    steps: list[Step]
    rounds: list[Round] = field(default_factory=list)

    def median(self, attr: str) -> float:
        """Median over rounds of a :class:`Round` property."""
        return statistics.median(getattr(r, attr) for r in self.rounds)


def predict_only(model: Path, db: Path) -> tuple[float, int]:
    """Seconds of ``predict`` alone for ``model`` over the server's table, one LightGBM thread,
    1,000-row batches (``scoring_only.py``, best of 3): what a second model should add."""
    cmd = [run.PY, "bench/scoring_only.py", str(model), str(db), data.TABLE, data.KEY]
    cmd += ["--threads", "1", "--batch", "1000", "--repeat", "3"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result["seconds"]), int(result["rows"])


def fail(message: str) -> None:
    """Stop the bench: a failed run, a wrong request count or different scores is a bug."""
    raise SystemExit(f"second_model.py: FAILED: {message}")


def run_step(step: Step, server: FeatureServer, ids: int, log_dir: Path) -> tuple[Measure, int]:
    """One timed run (``harness.run_against``) and the requests the server answered for it."""
    m = harness.run_against(server, step.cmd, cpus=None, log=log_dir / f"{step.label}.log")
    served = int(server.stats()["requests_total"])
    if not m.ok:
        fail(f"{step.label} exited {m.returncode}: {m.stderr_tail}")
    rows = run.count_rows(step.output)
    if rows != ids:
        fail(f"{step.label} wrote {rows:,} rows for {ids:,} IDs")
    report = json.loads(run.report_path(step.output).read_text())
    m.inner = float(report["elapsed_seconds"])
    return m, served


def read_columns(path: Path) -> dict[str, dict[str, str]]:
    """``column -> {id -> text}`` of a CSV written by batchscore (no quoting in these files)."""
    with path.open() as f:
        header = f.readline().rstrip("\n").split(",")
        columns: dict[str, dict[str, str]] = {name: {} for name in header[1:]}
        for line in f:
            cells = line.rstrip("\n").split(",")
            for name, cell in zip(header[1:], cells[1:], strict=True):
                columns[name][cells[0]] = cell
    return columns


def check_scores(a: Variant, b: Variant, c: Variant, ids: int) -> list[str]:
    """(c)'s two score columns against (a)'s and (b)'s outputs, as text; fails loudly."""
    one = read_columns(a.steps[0].output)["score"]
    first = read_columns(b.steps[0].output)["score"]
    second = read_columns(b.steps[1].output)["score"]
    both = read_columns(c.steps[0].output)
    if set(both) != {"score_a", "score_b"}:
        fail(f"(c) wrote columns {sorted(both)}, expected score_a and score_b")
    lines = []
    for name, mine, theirs in (
        ("score_a", both["score_a"], one),
        ("score_a", both["score_a"], first),
        ("score_b", both["score_b"], second),
    ):
        if len(mine) != ids or mine != theirs:
            common = mine.keys() & theirs.keys()
            differ = sum(1 for k in common if mine[k] != theirs[k])
            fail(
                f"(c) {name} differs: {len(mine):,} vs {len(theirs):,} IDs, "
                f"{len(common):,} common, {differ:,} different"
            )
        source = "(a) score" if theirs is one else f"(b) {'A' if theirs is first else 'B'} score"
        lines.append(f"(c) `{name}` = {source}: {ids:,} of {ids:,} IDs, text-identical")
    moved = sum(1 for k, v in both["score_a"].items() if v != both["score_b"][k])
    if moved == 0:
        fail("score_a and score_b are identical: B is not a different model")
    lines.append(f"A and B differ on {moved:,} of {ids:,} IDs (B really is another model)")
    return lines


def check_requests(a: Variant, b: Variant, c: Variant) -> None:
    """Features fetched once in (c): its requests equal (a)'s, (b) makes twice as many."""
    for r, (ra, rb, rc) in enumerate(zip(a.rounds, b.rounds, c.rounds, strict=True), 1):
        if not (ra.served == rc.served and rb.served == 2 * ra.served):
            fail(f"round {r}: requests (a) {ra.served}, (b) {rb.served}, (c) {rc.served}")


# ------------------------------------------------------------------------------ report


def ratio_line(name: str, num: Variant, den: Variant, attr: str) -> str:
    median = num.median(attr) / den.median(attr)
    pairs = zip(num.rounds, den.rounds, strict=True)
    per_round = [getattr(x, attr) / getattr(y, attr) for x, y in pairs]
    return f"| {name} | {attr} | {median:.2f}x | {min(per_round):.2f}-{max(per_round):.2f} |"


def write_report(
    target: Path,
    variants: list[Variant],
    checks: list[str],
    meta: dict[str, Any],
    server: FeatureServer,
    ids: int,
    predict_b: tuple[float, int],
) -> None:
    a, b, c = variants
    machine = dict(meta["machine"])
    loads = [r.load for v in variants for r in v.rounds]
    machine["1-min load average at the end of runs"] = (
        f"median {statistics.median(loads):.2f}, range {min(loads):.2f}-{max(loads):.2f} "
        "(the bench alone adds ~1-2)"
    )
    lines = [
        "# A second model in one pass (issue 13)",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} in {meta['duration']}; "
        f"{meta['rounds']} round(s), variants alternated (the order rotates each round); "
        "figures are medians over rounds; a ratio compares two medians of the same run, "
        "*rounds* is the range of the per-round ratios.  The machine is shared and noisy: "
        "read the ratios, not the absolute seconds.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in machine.items()),
        "",
        "## Setup",
        "",
        f"P2's: {ids:,} shuffled IDs, POST batches of 100 to the feature server "
        f"({run.LATENCY * 1000:.0f} ms latency, not pinned: P2's *shared* layout, warmed up "
        "before timing), concurrency 16, batchscore as the installed command writing CSV "
        "(start-up included).",
        "",
        f"- feature server: `{server.command}`",
        "- A: `bench/work/model_300.txt` (`bench/data.py`: 300 trees, 31 leaves, 28 features "
        "with 2 categoricals)",
        "- B: `bench/work/model_300_b.txt` (this script): the same 28 features, 300 trees, "
        "31 leaves, trained on other rows (generator seed "
        f"{MODEL_B_RECIPE['data_seed']}) with LightGBM seed "
        f"{MODEL_B_RECIPE['params']['seed']}, feature_fraction 0.8, bagging 0.8 every "
        "iteration: a challenger retrained on fresh data",
        "",
        "Commands:",
        "",
    ]
    for v in variants:
        for step in v.steps:
            lines.append(f"- {v.key} `{step.label}`: `{harness.display(step.cmd)}`")
    lines += [
        "",
        "## Results",
        "",
        "| variant | runs | wall s | CPU s (user+sys) | in-run s | IDs/s | peak RSS MB "
        "| requests served | server CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in variants:
        served = sorted({r.served for r in v.rounds})
        lines.append(
            f"| {v.key} {v.title} | {len(v.steps)} | {v.median('wall'):.2f} | "
            f"{v.median('cpu'):.2f} | {v.median('inner'):.2f} | "
            f"{ids / v.median('wall'):,.0f} | {v.median('rss'):.0f} | "
            f"{', '.join(f'{s:,}' for s in served)} | {v.median('server_cpu'):.2f} |"
        )
    lines += [
        "",
        "For (b), wall, CPU, in-run seconds, requests and server CPU are the sums of its two "
        "runs and peak RSS the larger; *in-run s* is batchscore's own `elapsed_seconds` "
        "(`--report`), without start-up; IDs/s is IDs scored once per model over wall time.",
        "",
        "| ratio | of | median | rounds |",
        "|---|---|---:|---:|",
    ]
    for name, num, den in (("(c) / (b)", c, b), ("(c) / (a)", c, a), ("(b) / (a)", b, a)):
        for attr in ("wall", "cpu", "inner"):
            lines.append(ratio_line(name, num, den, attr))
    extra = c.median("cpu") - a.median("cpu")
    seconds, rows = predict_b
    lines += [
        "",
        f"What the second model adds to one pass: (c) - (a) = {extra:.2f} CPU s "
        f"({extra / ids * 1e6:.1f} µs/ID).  B's `predict` alone over the server's {rows:,} "
        "rows (`bench/scoring_only.py`, one thread, 1,000-row batches, best of 3) takes "
        f"{seconds:.2f} s ({seconds / rows * 1e6:.1f} µs/row).  What two runs pay on top of "
        f"one pass: (b) - (c) = {b.median('cpu') - c.median('cpu'):.2f} CPU s (a second "
        "start-up, model load, fetch and parse).",
    ]
    lines += ["", "Per round (wall s; order):", ""]
    for r in range(len(a.rounds)):
        order = variants[r % 3 :] + variants[: r % 3]
        cells = ", ".join(f"{v.key} {v.rounds[r].wall:.2f}" for v in order)
        lines.append(f"- round {r + 1}: {cells}")
    lines += ["", "## Checks (every round)", "", *(f"- {line}" for line in checks), ""]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines))


# ------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ids", type=int, default=run.Sizes().p2, help="IDs (default P2's)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    started = time.monotonic()
    machine = harness.machine()
    machine["batchscore measured"] = measured_code()
    p = data.ensure()
    model_b = ensure_model_b(p)
    ids_p2 = p.ids_p2
    if args.ids != run.Sizes().p2:
        ids_p2 = data.take_ids(p.ids_p2, args.ids, p.work / "ids_second_model.txt")
    with p.db_http.open("rb") as f:  # a warm page cache, as run.py
        while f.read(1 << 24):
            pass
    out, log_dir = p.out, p.work / "logs"
    server = FeatureServer(p.db_http, latency=run.LATENCY, cpus=None)
    try:
        server.wait_ready()
        run.say(f"feature server at {server.url}")
        run.warm_up(
            server, {"p2": p.ids_p2, "p1": p.ids_p1}, out / "warm-up-second.csv", p.model_300
        )
        config = run.http_config(p.work, "second-model", p.model_300, server.url, batch=True)

        def step(label: str, *extra: str) -> Step:
            target = out / f"{label}.csv"
            cmd = run.bs_cmd(ids_p2, config, target, "--concurrency", CONCURRENCY, *extra)
            return Step(label, cmd, target)

        models = ("-m", f"a={p.model_300}", "-m", f"b={model_b}")
        variants = [
            Variant("(a)", "A alone", [step("second-a")]),
            Variant(
                "(b)",
                "A, then B: two runs",
                [step("second-b-A"), step("second-b-B", "-m", str(model_b))],
            ),
            Variant("(c)", "`-m a=A -m b=B`: one run", [step("second-c", *models)]),
        ]
        checks: list[str] = []
        for r in range(args.rounds):
            order = variants[r % 3 :] + variants[: r % 3]
            for v in order:
                measured = [run_step(s, server, args.ids, log_dir) for s in v.steps]
                v.rounds.append(Round([m for m, _ in measured], [n for _, n in measured]))
                done = v.rounds[-1]
                run.say(
                    f"  r{r + 1} {v.key} {done.wall:7.2f} s  cpu {done.cpu:6.2f} s  "
                    f"requests {done.served:,}  server cpu {done.server_cpu:.2f} s"
                )
            lines = check_scores(*variants, ids=args.ids)
            if not checks:
                checks += lines
        check_requests(*variants)
        predict_b = predict_only(model_b, p.db_http)
        a, b, c = variants
        checks.append(
            f"requests served, every round: (a) {a.rounds[0].served:,}, "
            f"(b) {b.rounds[0].served:,}, (c) {c.rounds[0].served:,}: features fetched once in (c)"
        )
    finally:
        server.stop()
    command = "bench/second_model.py" + "".join(
        f" {x}" for x in (argv if argv is not None else sys.argv[1:])
    )
    meta = {
        "command": command.replace(str(ROOT) + "/", ""),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "duration": f"{(time.monotonic() - started) / 60:.1f} min",
        "rounds": args.rounds,
        "machine": machine,
    }
    write_report(args.out, variants, checks, meta, server, args.ids, predict_b)
    run.say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
