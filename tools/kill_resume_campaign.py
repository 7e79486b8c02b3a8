"""Kill-and-resume campaign: stop real runs at random instants, resume, compare byte for byte.

Not part of ``make test`` (it runs for as long as you ask); meant for a nightly job::

    .venv/bin/python tools/kill_resume_campaign.py --cycles 1000 --seed 1 --json out/campaign.json

Each cycle draws a scenario from ``random.Random(f"{seed}/{cycle}")`` (so one failed cycle
can be looked at again alone): an output format (CSV, CSV.gz,
JSON lines, Parquet, SQLite), input order or ``--unordered``, and one to three stops.  Each stop
starts the same command (``--resume`` from the first run, as a cron line would) and ends it one
of three ways:

- a signal (SIGKILL, SIGINT or SIGTERM) after a random delay drawn over the whole life of a run:
  during start-up (imports, model load, planning), mid-run, or during the commit at the end;
- a kill -9 *inside* a commit step (``_BATCHSCORE_CRASH_AT``: ``synced``, ``complete``,
  ``errors-renamed``, ``output-renamed``; for Parquet also ``parquet-assembled``,
  ``parquet-renamed``), the instants a random delay rarely hits;
- or no stop at all when the run finishes first (counted, not a failure).

A stop may hit a run that is itself a ``--resume``.  Then one more ``--resume`` runs to the end,
and the final output and errors file are compared with one uninterrupted run of the same
scenario: bytes for CSV and JSON lines (decompressed for ``.gz``), exact rows for Parquet and
SQLite (floats by their hex form), as sorted rows with ``--unordered``.  A cycle fails on any
difference (an ID lost or written twice), an exit status a stop cannot explain (1 above all),
a traceback, a run still alive after 60 s (a hang), or a file left behind.

The feature server is the test suite's real one (``tests/featureserver.py``) on 127.0.0.1 with
20 ms of latency and a few stalled requests, so rows complete out of order.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import clean_environ  # noqa: E402
from featureserver import Faults, FeatureServer  # noqa: E402
from test_resume_property import (  # noqa: E402
    content,
    errors_path,
    no_leftovers,
    run_to_the_end,
    score_command,
)

FORMATS = ["csv", "csv.gz", "jsonl", "parquet", "db"]
CRASH_STEPS = ["synced", "complete", "errors-renamed", "output-renamed"]
PARQUET_STEPS = ["parquet-assembled", "parquet-renamed"]  # inside Parquet's output step
SIGNALS = [signal.SIGKILL, signal.SIGINT, signal.SIGTERM]
STOPPED = {signal.SIGKILL: -9, signal.SIGINT: 130, signal.SIGTERM: 143}
HANG_SECONDS = 60.0
ID_COUNT = 400  # IDs per run: start-up is most of a run, so stops land in every phase
FAULTS = Faults(latency=0.02, p_stall=0.03, stall_seconds=0.2)


@dataclass
class Tally:
    """What the campaign saw."""

    cycles: int = 0
    stops: collections.Counter[str] = field(default_factory=collections.Counter)
    finished_first: int = 0
    lost: int = 0
    duplicated: int = 0
    failures: list[str] = field(default_factory=list)
    scenarios: collections.Counter[str] = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def as_json(self) -> dict[str, Any]:
        return {
            "cycles": self.cycles,
            "stops": dict(self.stops),
            "runs_that_finished_before_their_stop": self.finished_first,
            "ids_lost": self.lost,
            "ids_duplicated": self.duplicated,
            "failed_cycles": len(self.failures),
            "failures": self.failures[:50],
            "scenarios": dict(self.scenarios),
        }


def run(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as stderr:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )


def stacks_of(pid: int) -> str:
    """Every thread's Python stack of a hung process (py-spy, from the bench extra), to see
    where it waits; empty when py-spy is not installed."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return ""
    dump = subprocess.run(
        [spy, "dump", "--pid", str(pid)], capture_output=True, text=True, check=False, timeout=60
    )
    return dump.stdout[-4000:] + dump.stderr[-500:]


def wait(proc: subprocess.Popen[bytes], seconds: float) -> int | None:
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


def command_for(server: FeatureServer, folder: Path, fmt: str, unordered: bool) -> list[str]:
    """The scenario's command (``--resume`` on every run), over the first ``ID_COUNT`` IDs."""
    command = score_command(folder, server.url, folder / f"scores.{fmt}", unordered)
    ids = folder / "ids.txt"
    ids.write_bytes(b"".join(ids.read_bytes().splitlines(keepends=True)[:ID_COUNT]))
    return command


def reference(server: FeatureServer, folder: Path, fmt: str, unordered: bool) -> Path:
    """One uninterrupted run of the scenario."""
    folder.mkdir(parents=True)
    out = folder / f"scores.{fmt}"
    command = command_for(server, folder, fmt, unordered)
    done = run_to_the_end(command)
    if done.returncode != 0:
        raise SystemExit(f"the reference run failed: {done.stderr.decode()[-2000:]}")
    return out


def run_duration(server: FeatureServer, folder: Path) -> float:
    """Seconds one uninterrupted run takes, start-up and commit included (the stop window)."""
    started = time.monotonic()
    reference(server, folder, "csv", False)
    return time.monotonic() - started


def compare(out: Path, expected: Path, fmt: str, unordered: bool, tally: Tally) -> str | None:
    """None when the output equals the reference; else what differs (and lost/duplicated
    rows are counted)."""
    header, rows = content(out, fmt)
    expected_header, expected_rows = content(expected, fmt)
    if header != expected_header:
        return f"header {header!r} != {expected_header!r}"
    got, want = collections.Counter(rows), collections.Counter(expected_rows)
    lost = sum((want - got).values())
    duplicated = sum((got - want).values())
    with tally.lock:
        tally.lost += lost
        tally.duplicated += duplicated
    if lost or duplicated:
        return f"{lost} rows lost, {duplicated} rows extra"
    if not unordered and rows != expected_rows:
        return "rows out of input order"
    errors = sorted(errors_path(out).read_bytes().splitlines())
    expected_errors = sorted(errors_path(expected).read_bytes().splitlines())
    if errors != expected_errors:
        return f"errors file differs ({len(errors)} lines, expected {len(expected_errors)})"
    return None


def cycle(
    server: FeatureServer,
    rng: random.Random,
    folder: Path,
    references: dict[tuple[str, bool], Path],
    window: float,
    tally: Tally,
) -> str | None:
    fmt = rng.choice(FORMATS)
    unordered = rng.random() < 0.3
    with tally.lock:
        tally.scenarios[f"{fmt}{' unordered' if unordered else ''}"] += 1
    out = folder / f"scores.{fmt}"
    command = command_for(server, folder, fmt, unordered)
    plan: list[str] = []
    for stop in range(rng.randint(1, 3)):
        env = clean_environ()
        if rng.random() < 0.15:
            step = rng.choice(CRASH_STEPS + (PARQUET_STEPS if fmt == "parquet" else []))
            env["_BATCHSCORE_CRASH_AT"] = step
            plan.append(f"crash at {step}")
            with tally.lock:
                tally.stops[f"crash:{step}"] += 1
            proc = run(command, env, folder / f"stderr-{stop}.txt")
            status = wait(proc, HANG_SECONDS)
            expected_status: int | None = -9
        else:
            sig = rng.choice(SIGNALS)
            delay = rng.uniform(0.0, window)
            plan.append(f"{sig.name} after {delay:.3f} s")
            with tally.lock:
                tally.stops[sig.name] += 1
            proc = run(command, env, folder / f"stderr-{stop}.txt")
            status = wait(proc, delay)
            if status is None:
                proc.send_signal(sig)
                status = wait(proc, HANG_SECONDS)
            expected_status = STOPPED[sig]
        if status is None:
            stacks = stacks_of(proc.pid)
            proc.kill()
            proc.wait()
            err = (folder / f"stderr-{stop}.txt").read_text(errors="replace")
            return (
                f"{plan}: still running {HANG_SECONDS:.0f} s after its stop (a hang); "
                f"stderr: {err[-1000:]}\nstacks:\n{stacks}"
            )
        err = (folder / f"stderr-{stop}.txt").read_text(errors="replace")
        if "Traceback" in err:
            return f"{plan}: a traceback: {err[-1500:]}"
        if status == 0:
            with tally.lock:
                tally.finished_first += 1
            break
        if status != expected_status and not (
            # A signal that lands before Python installs its handlers ends the process the
            # default way, and one that lands after the run ended cannot change its status.
            expected_status in (130, 143) and status in (-2, -15)
        ):
            return f"{plan}: exit {status}, expected {expected_status}: {err[-1500:]}"
    final = run_to_the_end(command)
    if final.returncode != 0:
        return f"{plan}: the final --resume exited {final.returncode}: {final.stderr[-1500:]!r}"
    if not no_leftovers(out):
        left = sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{out.name}"))
        return f"{plan}: files left behind: {left}"
    difference = compare(out, references[(fmt, unordered)], fmt, unordered, tally)
    return None if difference is None else f"{plan}: {difference}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the tally here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the failed cycles' folders")
    parser.add_argument("--jobs", type=int, default=2, help="cycles run at once (default 2)")
    parser.add_argument(
        "--cycle",
        type=int,
        action="append",
        help="run only this cycle's scenario (repeatable): a failure seen before, drawn again",
    )
    args = parser.parse_args()

    tally = Tally()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="campaign-"))
    source = ROOT / "sample_data"
    server = FeatureServer.from_sqlite(
        source / "features.db", "customer_features", "customer_id", faults=FAULTS
    )
    with server:
        window = 1.3 * run_duration(server, work / "timing")
        references = {
            (fmt, unordered): reference(
                server, work / f"reference-{fmt}-{unordered}", fmt, unordered
            )
            for fmt in FORMATS
            for unordered in (False, True)
        }
        chosen_count = len(args.cycle or range(args.cycles))
        print(f"stop window {window:.2f} s; {chosen_count} cycles, seed {args.seed}; in {work}")

        def one(n: int) -> None:
            folder = work / f"cycle-{n:05d}"
            folder.mkdir()
            rng = random.Random(f"{args.seed}/{n}")  # a failed cycle replays from its number
            failure = cycle(server, rng, folder, references, window, tally)
            with tally.lock:
                tally.cycles += 1
                if failure is not None:
                    tally.failures.append(f"cycle {n}: {failure}")
                    print(f"FAIL cycle {n}: {failure}", flush=True)
                if tally.cycles % 50 == 0:
                    print(
                        f"{tally.cycles} cycles, {len(tally.failures)} failed, "
                        f"{time.monotonic() - started:.0f} s",
                        flush=True,
                    )
            if failure is None or not args.keep:
                shutil.rmtree(folder)

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            chosen = args.cycle or range(args.cycles)
            for finished in [pool.submit(one, n) for n in chosen]:
                finished.result()
    result = tally.as_json() | {"seconds": round(time.monotonic() - started, 1)}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "failures"}, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if tally.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
