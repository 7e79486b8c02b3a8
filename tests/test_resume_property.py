"""Stop a run at random points, resume it, again and again: the end is one uninterrupted run.

For every output format, in input order and with ``--unordered``, the real command scores an ID
file with features fetched from a slow real feature server (``tests/featureserver.py``, batch
endpoint; a few requests stall, so rows complete out of order).  Before each stop we wait for a
*state* of the run, never for a fixed time: it has committed new progress (its state file says
so), or the server has answered a random number of its requests, always with enough requests
left that it cannot have finished first (and should a stalled host let it finish anyway, that
is handled: the scenario ends there).  Then SIGINT, SIGTERM or SIGKILL; the next run is the same
command, with ``--resume`` as every run has.

Afterwards: the output and errors file equal those of one uninterrupted run (bytes in order
mode; decompressed bytes for ``.gz``; rows for Parquet and SQLite; as sets with ``--unordered``),
no resumed run fetched an ID that an earlier run had committed, no file ever appeared at the
final path before success, and no state is left.  The stop plan is drawn from a seeded
``random.Random`` and printed in every failure message.

Which input lines are committed is read from the run's state file (``.<output>.state``, the
same place ``test_runs.HeldRun`` reads): :func:`committed_lines` is the one place that knows it.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, batchscore_command, clean_environ, write_config
from featureserver import Faults, FeatureServer

pq = pytest.importorskip("pyarrow.parquet")

SAMPLE = ROOT / "sample_data"
COUNT = 1000
ID_LINES = (SAMPLE / "ids.txt").read_bytes().splitlines(keepends=True)[:COUNT]
IDS = [line.decode().strip() for line in ID_LINES]
UNKNOWN = sum(i.startswith("C999") for i in IDS)  # IDs the store does not have (4)
FORMATS = ["csv", "jsonl", "csv.gz", "parquet", "db"]
BATCH = 5  # IDs per request
CONCURRENCY = 4
# 40 ms a request: at most 4 * 5 / 0.04 = 500 IDs/s; 5% of requests stall 0.3 s more.
SLOW = Faults(latency=0.04, p_stall=0.05, stall_seconds=0.3)
# A run asks for every uncommitted ID at least once; with this many requests still to make
# when we signal (0.4 s at full speed), it cannot have finished first.
MARGIN = 40
EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -9}


@pytest.fixture(scope="module")
def server() -> Iterator[FeatureServer]:
    data_server = FeatureServer.from_sqlite(
        SAMPLE / "features.db", "customer_features", "customer_id", faults=SLOW
    )
    with data_server as srv:
        yield srv


def score_command(folder: Path, url: str, out: Path, unordered: bool) -> list[str]:
    """The command every run of a scenario uses (``--resume`` from the first)."""
    ids = folder / "ids.txt"
    ids.write_bytes(b"".join(ID_LINES))
    config = write_config(
        folder / "http.toml",
        model=SAMPLE / "model.txt",
        sources=[
            {
                "name": "profile",
                "kind": "http",
                "mode": "batch",
                "url": f"{url}/batch",
                "batch_size": BATCH,
                "timeout": 5.0,
            }
        ],
        fetch={"concurrency": CONCURRENCY},
        score={"batch_size": 50},
    )
    return [
        *batchscore_command(),
        "score",
        str(ids),
        "-c",
        str(config),
        "-o",
        str(out),
        "--max-failed",
        "100",
        "--resume",
        "--report",
        str(folder / "report.json"),
        *(["--unordered"] if unordered else []),
    ]


def run_to_the_end(command: list[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        cwd=ROOT,
        env=clean_environ(),
        timeout=120,
        check=False,
    )


def errors_path(out: Path) -> Path:
    return Path(f"{out}.errors.jsonl")


References = Callable[[str], Path]


@pytest.fixture(scope="module")
def reference(
    server: FeatureServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[References]:
    """``reference(fmt)``: the output of one uninterrupted run (made once per format)."""
    made: dict[str, Path] = {}

    def make(fmt: str) -> Path:
        if fmt not in made:
            folder = tmp_path_factory.mktemp(f"reference-{fmt}")
            out = folder / f"scores.{fmt}"
            server.faults = Faults()  # the same answers, without the waits
            try:
                done = run_to_the_end(score_command(folder, server.url, out, unordered=False))
            finally:
                server.faults = SLOW
            assert done.returncode == 0, done.stderr
            made[fmt] = out
        return made[fmt]

    yield make


# -- what a stopped run committed -----------------------------------------------------------------


def _lines_of(ranges_json: str) -> set[int]:
    """The lines of the state's ``[[first, last], ...]`` ranges."""
    return {n for first, last in json.loads(ranges_json) for n in range(first, last + 1)}


def committed_lines(out: Path) -> set[int] | None:
    """Input lines (from 1) the state of a stopped run vouches for; None if it cannot be read
    right now (being written).  The state keeps them as ``[first, last]`` ranges."""
    state = out.with_name(f".{out.name}.state")
    if not state.exists():
        return set()
    try:
        with contextlib.closing(sqlite3.connect(f"file:{state}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT lines FROM run").fetchone()
    except sqlite3.Error:
        return None
    if row is None:
        return set()
    return _lines_of(row[0])


def settled_committed_lines(out: Path) -> set[int]:
    """:func:`committed_lines` once no run is writing the state."""
    lines = committed_lines(out)
    if lines is None:  # killed in the middle of a state commit: read it as the next run will
        state = out.with_name(f".{out.name}.state")
        with contextlib.closing(sqlite3.connect(state)) as db:
            (ranges,) = db.execute("SELECT lines FROM run").fetchone()
        lines = _lines_of(ranges)
    return lines


def fetched_ids(server: FeatureServer) -> set[str]:
    """IDs asked for since the server's statistics were last reset."""
    return set(server.stats()["id_requests"])


def served(server: FeatureServer) -> int:
    return sum(server.stats(brief=True)["responses_by_status"].values())


def reached(goal: tuple[str, int], out: Path, server: FeatureServer) -> bool:
    """``("committed", n)``: the state records more than n committed lines;
    ``("served", n)``: the server has answered n requests of this run."""
    kind, count = goal
    if kind == "committed":
        return len(committed_lines(out) or ()) > count
    return served(server) >= count


def wait_for(
    proc: subprocess.Popen[bytes], goal: tuple[str, int], out: Path, server: FeatureServer
) -> None:
    """Poll for a state of the run (never a fixed sleep), or for its end."""
    deadline = time.monotonic() + 60
    while not reached(goal, out, server) and proc.poll() is None:
        assert time.monotonic() < deadline, f"timed out waiting for {goal}"
        time.sleep(0.02)


# -- one scenario: stop, stop, resume -------------------------------------------------------------


def stop_and_resume(
    server: FeatureServer, folder: Path, fmt: str, unordered: bool, seed: str, stops: int = 2
) -> tuple[Path, int]:
    """Run, stop at random states, resume; check every stop.

    Returns the output and the exit status of the run that finished it.
    """
    out = folder / f"scores.{fmt}"
    command = score_command(folder, server.url, out, unordered)
    rng = random.Random(seed)
    plan: list[str] = []  # what happened, for failure messages
    committed: set[int] = set()
    for stop in range(stops):
        requests_left = -(-(COUNT - len(committed)) // BATCH)
        if stop == 0:  # a fresh run has two seconds of work: wait for its first commit
            goal = ("committed", 0)
        elif requests_left > 2 * MARGIN:  # stop anywhere, committed or not
            goal = ("served", rng.randint(1, requests_left - MARGIN))
        else:
            break  # too little left to stop in the middle of
        sig = rng.choice([signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
        server.reset_stats()
        log = folder / f"stderr-{stop}.txt"
        with open(log, "wb") as stderr:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                cwd=ROOT,
                env=clean_environ(),
                start_new_session=True,  # our signals reach only this run
            )
        try:
            wait_for(proc, goal, out, server)
            plan.append(f"{sig.name} at {goal}")
            proc.send_signal(sig)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        err = log.read_text(encoding="utf-8", errors="replace")
        where = f"plan {plan} (seed {seed!r}): {err[-2000:]}"
        refetched = fetched_ids(server) & {IDS[n - 1] for n in committed}
        assert not refetched, f"fetched again after being committed: {sorted(refetched)[:5]}"
        if proc.returncode == 0:  # it finished before the signal: only on a stalled host
            assert no_leftovers(out)
            return out, 0
        assert proc.returncode == EXIT_STATUS[sig], where
        if sig != signal.SIGKILL:
            assert "Traceback" not in err and "--resume" in err, where
        assert not out.exists(), f"a file at the final path before success; {where}"
        assert not errors_path(out).exists(), f"an errors file before success; {where}"
        now = settled_committed_lines(out)
        assert committed <= now, f"committed work went back; {where}"
        committed = now
    assert committed, f"no stop committed anything; the plan tests little: {plan}"

    server.reset_stats()
    final = run_to_the_end(command)
    assert final.returncode == 0, f"{plan}: {final.stderr.decode()[-2000:]}"
    refetched = fetched_ids(server) & {IDS[n - 1] for n in committed}
    assert not refetched, f"the last run fetched committed IDs again: {sorted(refetched)[:5]}"
    assert no_leftovers(out)
    return out, final.returncode


def no_leftovers(out: Path) -> bool:
    """After success: no state, lock or partial file of the run is left (only the record that
    makes the same --resume command a no-op)."""
    left = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    return left in ([], [f".{out.name}.done"])


# -- reading outputs for comparison ---------------------------------------------------------------


def exact(value: Any) -> Any:
    """A value compared exactly: floats by their hex form (sign of zero and last bit count)."""
    return value.hex() if isinstance(value, float) else value


def content(out: Path, fmt: str) -> tuple[Any, list[Any]]:
    """(header, rows) of an output; text rows are byte lines, typed rows exact tuples."""
    if fmt in ("csv", "jsonl", "csv.gz"):
        data = gzip.decompress(out.read_bytes()) if fmt.endswith(".gz") else out.read_bytes()
        lines = data.split(b"\n")
        assert lines[-1] == b"", "the file ends with a line end"
        lines = lines[:-1]
        return (lines[0], lines[1:]) if fmt.startswith("csv") else (None, lines)
    if fmt == "parquet":
        table = pq.read_table(out)
        rows = [tuple(exact(v) for v in row.values()) for row in table.to_pylist()]
        return str(table.schema), rows
    with contextlib.closing(sqlite3.connect(f"file:{out}?mode=ro", uri=True)) as db:
        cursor = db.execute("SELECT * FROM predictions ORDER BY rowid")
        rows = [tuple(exact(v) for v in row) for row in cursor]
        return [d[0] for d in cursor.description], rows


@pytest.mark.parametrize("unordered", [False, True], ids=["ordered", "unordered"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_stopped_and_resumed_runs_end_as_one_uninterrupted_run(
    server: FeatureServer, reference: References, tmp_path: Path, fmt: str, unordered: bool
) -> None:
    expected = reference(fmt)
    out, _ = stop_and_resume(server, tmp_path, fmt, unordered, seed=f"{fmt}/{unordered}")

    header, rows = content(out, fmt)
    expected_header, expected_rows = content(expected, fmt)
    assert header == expected_header
    errors = errors_path(out).read_bytes().split(b"\n")
    expected_errors = errors_path(expected).read_bytes().split(b"\n")
    assert len(expected_errors) == UNKNOWN + 1  # and the last line end
    if unordered:  # completion order: the same rows, each once
        assert len(rows) == len(expected_rows)
        assert sorted(rows) == sorted(expected_rows)
        assert sorted(errors) == sorted(expected_errors)
    else:
        assert rows == expected_rows
        assert errors == expected_errors
        if fmt in ("csv", "jsonl"):
            assert out.read_bytes() == expected.read_bytes()


REPORTED = ("ids_read", "scored", "failed", "failed_by_reason")


def test_resumed_run_reports_the_counts_of_one_uninterrupted_run(
    server: FeatureServer, reference: References, tmp_path: Path
) -> None:
    expected = json.loads((reference("csv").parent / "report.json").read_text())
    counts = (expected["ids_read"], expected["scored"], expected["failed"])
    assert counts == (COUNT, COUNT - UNKNOWN, UNKNOWN)
    _, status = stop_and_resume(server, tmp_path, "csv", False, seed="counts", stops=1)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["exit_code"] == status == 0
    assert {k: report[k] for k in REPORTED} == {k: expected[k] for k in REPORTED}
