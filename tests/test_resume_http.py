"""Stop a run against a slow real feature server, again and again; resume: nothing lost or doubled.

The run fetches per-ID over HTTP from ``tests/featureserver.py`` with 20 ms latency, so a run of
2,000 IDs takes a few seconds and can be stopped anywhere in it with SIGKILL, SIGINT or SIGTERM.
After every stop, the next run is the same command with ``--resume``.  At the end the output
must be byte-identical to an uninterrupted run's (here: the same IDs scored from the SQLite
store, since JSON carries every double exactly), no file may ever have appeared at the final
path before success, and no resumed run may have fetched an ID that was already committed.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLE_CONFIG, batchscore_command, clean_environ
from featureserver import Faults, FeatureServer

SAMPLE = ROOT / "sample_data"
COUNT = 2000


@pytest.fixture(scope="module")
def server() -> Iterator[FeatureServer]:
    data_server = FeatureServer.from_sqlite(
        SAMPLE / "features.db", "customer_features", "customer_id", faults=Faults(latency=0.02)
    )
    with data_server as srv:
        yield srv


@pytest.fixture(scope="module")
def ids_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ids") / "ids.txt"
    path.write_bytes(b"".join((SAMPLE / "ids.txt").read_bytes().splitlines(keepends=True)[:COUNT]))
    return path


def http_config(folder: Path, url: str) -> Path:
    config = folder / "http.toml"
    config.write_text(
        f"""
[model]
path = "{SAMPLE / "model.txt"}"

[[sources]]
name = "profile"
kind = "http"
url = "{url}/features/{{id}}"
features_path = "features"
timeout = 5.0

[fetch]
concurrency = 16
"""
    )
    return config


def committed_ids(output: Path) -> set[str]:
    """IDs in the committed part of a stopped run's output (what its state file vouches for)."""
    state = output.with_name(f".{output.name}.state")
    partial = output.with_name(f".{output.name}.partial")
    if not state.exists() or not partial.exists():
        return set()
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
        (length,) = db.execute("SELECT output_bytes FROM run").fetchone()
    lines = partial.read_bytes()[:length].decode().splitlines()[1:]  # past the header
    return {line.split(",")[0] for line in lines}


def served(server: FeatureServer) -> int:
    """Requests the server has answered since its statistics were last reset."""
    return sum(server.stats(brief=True)["responses_by_status"].values())


def reached(goal: tuple[str, int], out: Path, server: FeatureServer) -> bool:
    """``("committed", n)``: more than n IDs committed; ``("served", n)``: n answers served."""
    kind, count = goal
    if kind == "committed":
        try:
            return len(committed_ids(out)) > count
        except sqlite3.Error:  # the state is being created
            return False
    return served(server) >= count


# A run fetches each ID it has not committed once at least, at most 16 at a time, 20 ms each:
# with this many requests still to serve when we signal, it cannot have finished first.
MARGIN = 400


def test_stops_at_random_points_and_resumes_exactly_once(
    tmp_path: Path, server: FeatureServer, ids_file: Path
) -> None:
    reference = tmp_path / "reference.csv"
    env = clean_environ()
    base = [*batchscore_command(), "score", str(ids_file), "--max-failed", "100"]
    done = subprocess.run(
        [*base, "-c", str(SAMPLE_CONFIG), "-o", str(reference), "--quiet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr

    out = tmp_path / "scores.csv"
    command = [*base, "-c", str(http_config(tmp_path, server.url)), "-o", str(out), "--resume"]
    rng = random.Random(11)
    stops = [signal.SIGKILL, signal.SIGINT, signal.SIGTERM, signal.SIGKILL]
    expected_status = {signal.SIGKILL: -9, signal.SIGINT: 130, signal.SIGTERM: 143}
    committed: set[str] = set()
    finished = False  # a run ended on its own before our signal reached it
    for sig in stops:
        remaining = COUNT - len(committed)
        if remaining < 2 * MARGIN:
            break  # too little left to stop in the middle of: the final run does it
        server.reset_stats()
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        # Wait for a state of the run, never for a fixed time: it has committed new progress
        # (only while the first commit, a second in, leaves a margin), or the server has answered
        # a random share of what it still has to ask.
        if remaining > 1000 + MARGIN and rng.random() < 0.5:
            goal = ("committed", len(committed))
        else:
            goal = ("served", rng.randint(1, remaining - MARGIN))
        deadline = time.monotonic() + 60
        while not reached(goal, out, server) and proc.poll() is None:
            assert time.monotonic() < deadline, "the run made no progress in 60 s"
            time.sleep(0.02)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        if proc.returncode == 0:  # finished before the signal: possible only on a stalled host
            finished = True
            break
        assert proc.returncode == expected_status[sig], err.decode()
        assert b"Traceback" not in err
        assert not out.exists(), "no file at the final path before the run succeeds"
        fetched = set(server.stats()["decoded_ids"])
        assert not fetched & committed, "a resumed run fetched IDs that were already committed"
        now = committed_ids(out)
        assert committed <= now, "committed work never goes back"
        committed = now

    if not finished:
        server.reset_stats()
        final = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, timeout=120, check=False
        )
        assert final.returncode == 0, final.stderr
        assert not set(server.stats()["decoded_ids"]) & committed
    assert out.read_bytes() == reference.read_bytes()

    def failures(path: Path) -> list[tuple[str, int, str]]:
        records = [json.loads(line) for line in path.read_text().splitlines()]
        return [(r["id"], r["line"], r["reason"]) for r in records]

    assert failures(tmp_path / "scores.csv.errors.jsonl") == failures(
        Path(f"{reference}.errors.jsonl")
    )
    left = [p.name for p in tmp_path.glob(".scores.csv*")]
    assert left == [".scores.csv.done"], "no state, lock or partial file is left"


def _stop_command(tmp_path: Path, server: FeatureServer, ids_file: Path, *extra: str) -> list[str]:
    return [
        *batchscore_command(),
        "score",
        str(ids_file),
        "--max-failed",
        "100",
        *extra,
        "-c",
        str(http_config(tmp_path, server.url)),
        "-o",
        str(tmp_path / "scores.csv"),
    ]


def _started_and_committing(command: list[str], out: Path) -> subprocess.Popen[bytes]:
    """The run, once it has committed some rows."""
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=clean_environ(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while not committed_ids(out):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    return proc


def _resumes_to_every_known_id_once(command: list[str], out: Path, ids_file: Path) -> None:
    resumed = subprocess.run(
        [*command, "--resume"],
        cwd=ROOT,
        env=clean_environ(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    ids = [line.split(",")[0] for line in out.read_text().splitlines()[1:]]
    asked = ids_file.read_text().split()
    known = [i for i in asked if not i.startswith("C999")]  # C999xxx are not in the store
    assert ids == known  # each once, in input order


def test_second_signal_stops_at_once_and_stays_resumable(
    tmp_path: Path, server: FeatureServer, ids_file: Path
) -> None:
    server.faults = Faults(latency=0.02, p_stall=0.05, stall_seconds=30)
    # small chunks: one stalled request holds back few rows
    command = _stop_command(tmp_path, server, ids_file, "--batch-size", "64")
    out = tmp_path / "scores.csv"
    try:
        proc = _started_and_committing(command, out)
        proc.send_signal(signal.SIGINT)  # stalled requests keep the first stop waiting ...
        time.sleep(0.3)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)  # ... the second one does not wait
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - started < 2
        assert proc.returncode == 130
        assert b"--resume" in err and b"Traceback" not in err
    finally:
        server.faults = Faults(latency=0.02)
    _resumes_to_every_known_id_once(command, out, ids_file)


def test_one_signal_drops_unanswered_requests_at_once(
    tmp_path: Path, server: FeatureServer, ids_file: Path
) -> None:
    """Requests sent but not answered (a stalled server) do not hold up a stop: a single
    Ctrl-C ends the run well within the grace that answers already arriving get (5 s)."""
    command = _stop_command(tmp_path, server, ids_file)
    out = tmp_path / "scores.csv"
    try:
        proc = _started_and_committing(command, out)
        server.faults = Faults(p_stall=1.0, stall_seconds=60)  # nothing is answered any more
        time.sleep(0.5)  # every request in flight is now a stalled one
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        server.faults = Faults(latency=0.02)
    assert proc.returncode == 130, err
    assert took < 2.5, f"one Ctrl-C took {took:.1f} s with nothing answering"
    assert b"--resume" in err and b"Traceback" not in err
    _resumes_to_every_known_id_once(command, out, ids_file)
