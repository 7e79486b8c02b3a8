"""``--engine dask``: a real Dask cluster of worker processes runs the partitions.

Most runs use one module-wide ``LocalCluster`` (2 worker processes of 1 thread) through
``--scheduler``, so a test can kill one of its workers by pid; the first test lets the command
start its own local cluster, as a user's run does.  Each test reads what a user reads: the part
files in order, ``_SUCCESS``, the merged file, exit statuses.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import (
    ROOT,
    SAMPLE_CONFIG,
    RunCli,
    TrainedModel,
    batchscore_command,
    clean_environ,
    output_scores,
    read_errors,
    read_output,
    write_config,
)
from featureserver import Faults, FeatureServer

distributed = pytest.importorskip("distributed")

SAMPLE = ROOT / "sample_data"
TOKEN = "s3cr3t-dask-token-0042"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """2 worker processes x 1 thread; yields a client of it."""
    local = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = distributed.Client(local)
    try:
        yield client
    finally:
        client.close()
        local.close()


@pytest.fixture(scope="module")
def slow_server() -> Iterator[FeatureServer]:
    """The sample's features over per-ID HTTP, 10 ms a request: runs long enough to stop."""
    server = FeatureServer.from_sqlite(
        SAMPLE / "features.db", "customer_features", "customer_id", faults=Faults(latency=0.01)
    )
    with server as srv:
        yield srv


def http_config(folder: Path, url: str) -> Path:
    return write_config(
        folder / "http.toml",
        model=SAMPLE / "model.txt",
        sources=[
            {
                "name": "profile",
                "kind": "http",
                "url": f"{url}/features/{{id}}",
                "features_path": "features",
                "headers": {"Authorization": "Bearer ${DASK_TEST_TOKEN}"},
            }
        ],
        fetch={"concurrency": 8},
    )


def parts_of(folder: Path, ext: str = "csv") -> list[Path]:
    return sorted(folder.glob(f"part-*.{ext}"))


def rows_of(folder: Path) -> list[dict[str, Any]]:
    return [row for part in parts_of(folder) for row in read_output(part)]


def assert_complete(folder: Path, ids: list[str]) -> dict[str, Any]:
    """Every ID exactly once over the parts, in input order; _SUCCESS written last and
    agreeing; no temporary file left."""
    scored = [row["id"] for row in rows_of(folder)]
    failed = [
        record["id"]
        for errors in sorted(folder.glob("errors-*.jsonl"))
        for record in read_errors(errors)
    ]
    assert len(list(folder.glob("errors-*.jsonl"))) == len(parts_of(folder))
    assert sorted(scored + failed) == sorted(ids)
    assert len(set(scored)) == len(scored)
    assert scored == [i for i in ids if i in set(scored)]  # input order across the parts
    success = folder / "_SUCCESS"
    manifest = json.loads(success.read_text())
    assert [p["file"] for p in manifest["partitions"]] == [p.name for p in parts_of(folder)]
    assert manifest["counts"]["scored"] == len(scored)
    assert manifest["counts"]["failed"] == len(failed)
    assert "counters" not in manifest  # each figure once (they were also under "counters")
    last = success.stat().st_mtime_ns
    assert all(f.stat().st_mtime_ns <= last for f in folder.iterdir())
    assert [f.name for f in folder.iterdir() if f.name.startswith(".")] == []
    return manifest


def test_scores_are_exact_and_every_id_is_in_one_part(
    trained_models: dict[str, TrainedModel], run_cli: RunCli, tmp_path: Path
) -> None:
    # No --scheduler: the command starts (and stops) its own local cluster.
    model = trained_models["multiclass"]
    config = write_config(
        tmp_path / "c.toml",
        model=model.model_path,
        sources=[model.source(batch_size=50)],
        score={"batch_size": 64},
    )
    ids = model.ids_file(tmp_path / "ids.txt")
    out = tmp_path / "scores"
    result = run_cli(
        "score", ids, "-c", config, "-o", out, "--engine", "dask", "--partition-size", "70"
    )
    assert result.returncode == 0, result.stderr
    assert len(parts_of(out)) == 5  # 300 lines in partitions of 70
    manifest = assert_complete(out, list(model.ids))
    rows = rows_of(out)
    assert [row["id"] for row in rows] == list(model.ids)
    assert np.array_equal(output_scores(rows, model.score_columns), model.expected())
    assert manifest["model_version"] and manifest["partition_size"] == 70
    assert "scored 300" in result.stderr


def merged_beside_local(
    run_cli: RunCli, cluster: Any, tmp_path: Path, common: list[Any], ext: str, size: int
) -> Path:
    """Run ``common`` locally into ``local.EXT`` and on the cluster with ``--merge`` into the
    folder ``cluster.EXT`` (partitions of ``size`` lines); both succeed and the merged file is
    the local run's, byte for byte.  Returns the cluster's folder."""
    local = run_cli(*common, "-o", tmp_path / f"local.{ext}", cwd=ROOT)
    assert local.returncode == 0, local.stderr
    out = tmp_path / f"cluster.{ext}"
    dask = run_cli(
        *common,
        "-o",
        out,
        "--engine",
        "dask",
        "--scheduler",
        cluster.scheduler.address,
        "--partition-size",
        str(size),
        "--merge",
        cwd=ROOT,
    )
    assert dask.returncode == 0, dask.stderr
    assert (out / f"merged.{ext}").read_bytes() == (tmp_path / f"local.{ext}").read_bytes()
    return out


def test_merge_is_byte_identical_to_a_local_run(
    cluster: Any, run_cli: RunCli, tmp_path: Path
) -> None:
    # A CSV input (its header given to every partition) with a kept column, JSON-lines output.
    lines = (SAMPLE / "ids.txt").read_text().splitlines()
    ids = tmp_path / "ids.csv"
    ids.write_text("id,note\n" + "".join(f"{i},n{n}\n" for n, i in enumerate(lines)))
    common = ["score", ids, "-c", SAMPLE_CONFIG, "--keep", "note", "--max-failed", "100"]
    out = merged_beside_local(run_cli, cluster, tmp_path, common, "jsonl", 777)
    assert (out / "merged.jsonl.errors.jsonl").read_bytes() == (
        tmp_path / "local.jsonl.errors.jsonl"
    ).read_bytes()
    assert len(parts_of(out, "jsonl")) == 7
    assert json.loads((out / "_SUCCESS").read_text())["merged"] == "merged.jsonl"


def test_two_models_on_the_cluster_merge_to_the_local_runs_bytes(
    cluster: Any, run_cli: RunCli, tmp_path: Path
) -> None:
    """Every worker gets every model of the run: the same one-pass scoring as a local run."""
    challenger = tmp_path / "challenger.txt"
    text = (SAMPLE / "model.txt").read_text()
    challenger.write_text(
        text.replace(
            '["basic", "plus", "premium", "family"]', '["plus", "basic", "family", "premium"]'
        )
    )
    models = ["-m", f"champion={SAMPLE / 'model.txt'}", "-m", f"challenger={challenger}"]
    common = ["score", SAMPLE / "ids.txt", "-c", SAMPLE_CONFIG, *models, "--max-failed", "100"]
    out = merged_beside_local(run_cli, cluster, tmp_path, common, "csv", 1500)
    merged = (out / "merged.csv").read_bytes()
    assert merged.startswith(b"id,score_champion,score_challenger\n")
    assert "champion=" in json.loads((out / "_SUCCESS").read_text())["model_version"]


def test_features_from_the_input_file_on_the_cluster(
    cluster: Any, run_cli: RunCli, tmp_path: Path
) -> None:
    """A source of kind input: each partition reads its rows' feature cells (with the header
    the partition is given), as a local run does."""
    config = ROOT / "configs" / "input.toml"
    common = ["score", SAMPLE / "customers.csv", "-c", config]
    out = merged_beside_local(run_cli, cluster, tmp_path, common, "csv", 7)
    assert len(parts_of(out, "csv")) == 3


def test_a_file_without_a_header_line_on_the_cluster(
    cluster: Any, run_cli: RunCli, tmp_path: Path
) -> None:
    """``--no-header``: no partition skips a line, the first one neither, and the features of
    an input source come from columns named by their number (``rename``), as a local run
    reads them; the scores are those of the file with its header line."""
    lines = (SAMPLE / "customers.csv").read_text().splitlines()
    ids = tmp_path / "customers.csv"
    ids.write_text("".join(f"{line}\n" for line in lines[1:]))
    names = lines[0].split(",")
    config = write_config(
        tmp_path / "numbered.toml",
        model=SAMPLE / "model.txt",
        sources=[
            {
                "name": "input",
                "kind": "input",
                "rename": {str(n): name for n, name in enumerate(names, start=1) if n > 1},
            }
        ],
    )
    common = ["score", ids, "-c", config, "--no-header", "--keep", "6"]
    out = merged_beside_local(run_cli, cluster, tmp_path, common, "csv", 7)
    assert len(parts_of(out, "csv")) == 3
    named = run_cli(
        "score",
        SAMPLE / "customers.csv",
        "-c",
        ROOT / "configs" / "input.toml",
        "--keep",
        "region",
        "-o",
        tmp_path / "named.csv",
        cwd=ROOT,
    )
    assert named.returncode == 0, named.stderr
    expected = [(r["id"], r["score"], r["region"]) for r in read_output(tmp_path / "named.csv")]
    assert [(r["id"], r["score"], r["6"]) for r in rows_of(out)] == expected
    assert len(expected) == 20


def test_json_lines_features_from_the_input_on_the_cluster(
    cluster: Any, run_cli: RunCli, tmp_path: Path
) -> None:
    """A JSON-lines input with a source of kind input: every partition carries the columns
    chosen from the file's first line with an ID, as a local run does.  Before, every
    partition failed with IndexError (its chunks were cut before its own first line chose
    the columns), and a partition whose first line lacks a field would not have carried it."""
    text = (SAMPLE / "customers.csv").read_text().splitlines()
    header = text[0].split(",")

    def value(name: str, cell: str) -> Any:  # numbers as JSON numbers, an empty cell null
        if not cell or name == "customer_id":
            return cell or None
        with contextlib.suppress(ValueError):
            return float(cell)
        return cell

    lines = []
    for n, row in enumerate(text[1:]):
        record = {name: value(name, c) for name, c in zip(header, row.split(","), strict=True)}
        if n == 7:  # the first line of the second partition lacks a feature field
            del record["logins_30d"]
        lines.append(json.dumps(record))
    ids = tmp_path / "customers.jsonl"
    ids.write_text("".join(f"{line}\n" for line in lines))
    common = ["score", ids, "-c", ROOT / "configs" / "input.toml", "--id-field", "customer_id"]
    out = merged_beside_local(run_cli, cluster, tmp_path, common, "csv", 7)
    assert len(parts_of(out, "csv")) == 3
    assert json.loads((out / "_SUCCESS").read_text())["counts"]["scored"] == 20


def test_a_text_header_after_blank_lines_is_no_id_on_the_cluster(
    cluster: Any, run_cli: RunCli, tmp_path: Path
) -> None:
    """``--header`` skips a text input's first non-blank line, wherever a partition starts:
    with partitions of one line the header is alone in the second one.  Before, it was
    scored as an ID there (not_found, exit 3)."""
    ids = (SAMPLE / "ids.txt").read_text().splitlines()[:5]
    path = tmp_path / "ids.txt"
    path.write_text("\n \ncustomer_id\n" + "".join(f"{i}\n" for i in ids))
    common = ["score", path, "-c", SAMPLE_CONFIG, "--header"]
    out = merged_beside_local(run_cli, cluster, tmp_path, common, "csv", 1)
    assert [row["id"] for row in rows_of(out)] == ids
    assert all(not read_errors(e) for e in out.glob("errors-*.jsonl"))


def test_overwrite_leaves_no_errors_file_of_the_run_it_replaces(
    cluster: Any, run_cli: RunCli, tmp_path: Path
) -> None:
    """A run over a folder of more partitions, then --overwrite with fewer: only the new
    run's errors files are left, so ``errors-*.jsonl`` holds each failure once.  Before,
    the old run's errors-00002.jsonl ... stayed, and the failure in one of them counted
    twice."""
    ids = SAMPLE / "ids_small.txt"  # 50 lines; C999001 on line 31 is not found
    out = tmp_path / "scores"
    args = cluster_args(cluster, ids, SAMPLE_CONFIG, out, 10)
    first = run_cli(*args, "--max-failed", "1", cwd=ROOT)
    assert first.returncode == 0, first.stderr
    assert len(list(out.glob("errors-*.jsonl"))) == 5
    again = cluster_args(cluster, ids, SAMPLE_CONFIG, out, 25)
    second = run_cli(*again, "--max-failed", "1", "--overwrite", cwd=ROOT)
    assert second.returncode == 0, second.stderr
    assert sorted(e.name for e in out.glob("errors-*.jsonl")) == [
        "errors-00000.jsonl",
        "errors-00001.jsonl",
    ]
    failed = [r["id"] for e in sorted(out.glob("errors-*.jsonl")) for r in read_errors(e)]
    assert failed == ["C999001"]
    assert_complete(out, ids.read_text().split())


def worker_pids(client: Any) -> dict[str, int]:
    return dict(client.run(os.getpid))


def wait_for(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def slow_dask_run(
    tmp_path: Path, url: str, *extra: str, group: bool = False
) -> tuple[subprocess.Popen[bytes], Path, list[str]]:
    """The real command scoring 1,600 of the sample's IDs over the slow per-ID server in
    partitions of 200 lines (``extra``: more flags); ``group``: in a process group of its own,
    as a terminal's foreground job.  Returns the process, its output folder and the IDs."""
    ids = (SAMPLE / "ids.txt").read_text().splitlines()[:1600]
    (tmp_path / "ids.txt").write_text("".join(f"{i}\n" for i in ids))
    out = tmp_path / "scores"
    proc = subprocess.Popen(
        [
            *batchscore_command(),
            "score",
            "ids.txt",
            "-c",
            str(http_config(tmp_path, url)),
            "-o",
            str(out),
            "--engine",
            "dask",
            "--partition-size",
            "200",
            *extra,
        ],
        cwd=tmp_path,
        env=clean_environ({"DASK_TEST_TOKEN": TOKEN}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=group,
    )
    return proc, out, ids


def test_a_worker_killed_mid_run_costs_nothing(
    cluster: Any, slow_server: FeatureServer, tmp_path: Path
) -> None:
    cluster.wait_for_workers(2)
    before = worker_pids(cluster)
    slow_server.reset_stats()
    proc, out, ids = slow_dask_run(
        tmp_path, slow_server.url, "--scheduler", cluster.scheduler.address, "--max-failed", "100"
    )
    # Kill a worker while it is inside a partition: after the first part is in place, with
    # requests still arriving.
    wait_for(lambda: len(parts_of(out)) >= 1)
    requests = slow_server.stats(brief=True)["requests_total"]
    wait_for(lambda: slow_server.stats(brief=True)["requests_total"] > requests + 50)
    busy = [address for address, keys in cluster.processing().items() if keys]
    victim = before[busy[0]]
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err.decode()
    assert_complete(out, ids)
    # The killed worker's partition was fetched again: more requests than IDs.
    assert slow_server.stats(brief=True)["requests_total"] > len(ids)
    assert TOKEN not in err.decode()
    cluster.wait_for_workers(2)  # the nanny restarted it
    assert victim not in worker_pids(cluster).values()


def test_dask_own_warnings_are_left_to_debug(slow_server: FeatureServer, tmp_path: Path) -> None:
    """A worker of the run's own local cluster killed mid-run: Dask's nanny says so in its own
    log lines ("Restarting worker", "Worker process ... was killed by signal 9") on the user's
    terminal.  They are Dask's news, not the run's (it loses nothing): shown with --debug only."""
    proc, out, ids = slow_dask_run(tmp_path, slow_server.url, "--max-failed", "100")
    try:
        wait_for(lambda: len(parts_of(out)) >= 1, timeout=90)  # partitions are running
        os.kill(spawned_children(proc.pid)[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    assert_complete(out, ids)
    assert b"distributed." not in err and b"WARNING" not in err, err.decode()


def test_resume_after_the_driver_is_killed(
    slow_server: FeatureServer, run_cli: RunCli, tmp_path: Path
) -> None:
    ids = (SAMPLE / "ids.txt").read_text().splitlines()[:1600]
    (tmp_path / "ids.txt").write_text("".join(f"{i}\n" for i in ids))
    out = tmp_path / "scores"
    args = [
        "score",
        "ids.txt",
        "-c",
        str(http_config(tmp_path, slow_server.url)),
        "-o",
        str(out),
        "--engine",
        "dask",
        "--partition-size",
        "200",
        "--max-failed",
        "100",
    ]
    env = {"DASK_TEST_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [*batchscore_command(), *args],
        cwd=tmp_path,
        env=clean_environ(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: len(parts_of(out)) >= 2)
    proc.kill()  # the driver, and with it its local cluster
    proc.wait(timeout=30)
    done_before = {p.name: p.stat().st_mtime_ns for p in parts_of(out)}
    assert not (out / "_SUCCESS").exists()

    refused = run_cli(*args, env=env)
    assert refused.returncode == 2 and "--resume" in refused.stderr

    slow_server.reset_stats()
    resumed = run_cli(*args, "--resume", env=env, timeout=90)
    assert resumed.returncode == 0, resumed.stderr
    manifest = assert_complete(out, ids)
    assert manifest["counts"]["read"] == len(ids)
    # The parts the killed run completed were kept, not fetched again.
    for name, mtime in done_before.items():
        assert (out / name).stat().st_mtime_ns == mtime
    assert slow_server.stats(brief=True)["requests_total"] <= len(ids) - 200 * len(done_before)

    again = run_cli(*args, "--resume", env=env)
    assert again.returncode == 0 and "complete already" in again.stderr


def test_sigterm_stops_the_driver_cleanly(slow_server: FeatureServer, tmp_path: Path) -> None:
    ids = (SAMPLE / "ids.txt").read_text().splitlines()[:1600]
    (tmp_path / "ids.txt").write_text("".join(f"{i}\n" for i in ids))
    out = tmp_path / "scores"
    proc = subprocess.Popen(
        [
            *batchscore_command(),
            "score",
            "ids.txt",
            "-c",
            str(http_config(tmp_path, slow_server.url)),
            "-o",
            str(out),
            "--engine",
            "dask",
            "--partition-size",
            "200",
        ],
        cwd=tmp_path,
        env=clean_environ({"DASK_TEST_TOKEN": TOKEN}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    wait_for(lambda: len(parts_of(out)) >= 1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err.decode()
    assert "--resume" in err.decode().strip().splitlines()[-1]
    assert not (out / "_SUCCESS").exists()
    # Only whole parts and their records are left: nothing half-written.
    left = sorted(f.name for f in out.iterdir() if f.name.startswith("."))
    assert all(name.endswith(".done") for name in left if name != ".batchscore-run.json")


def kept_in(folder: Path) -> tuple[list[str], list[str]]:
    """The IDs in the committed parts of a stopped run's folder: scored (in part files) and
    failed (in the errors files beside them)."""
    scored = [row["id"] for row in rows_of(folder)]
    failed = [
        record["id"]
        for part in parts_of(folder)
        for record in read_errors(
            folder / part.name.replace("part-", "errors-").replace(".csv", ".jsonl")
        )
    ]
    return scored, failed


def test_ctrl_c_counts_only_the_kept_parts_and_resume_fetches_the_rest(
    slow_server: FeatureServer, run_cli: RunCli, tmp_path: Path
) -> None:
    """Ctrl-C mid-run: every count shown (the progress lines, the summary, the report, the
    stop's last line) is the IDs of the committed parts, which ``--resume`` keeps; ``--resume``
    asks the server for the other IDs only, each once, and the output is an uninterrupted run's.
    Before, the display counted the rows of running partitions (thrown away by the stop), and
    the last line said "after N IDs" without saying what --resume would do again."""
    report = tmp_path / "report.json"
    proc, out, ids = slow_dask_run(
        tmp_path,
        slow_server.url,
        "--concurrency",
        "2",  # 200 IDs/s a worker: a partition of 200 lines takes about a second
        "--batch-size",
        "50",  # and writes 4 chunks, each of which its worker counts
        "--progress-interval",
        "0.1",
        "--report",
        str(report),
        "--merge",
        "--max-failed",
        "100",
    )
    try:
        wait_for(lambda: len(parts_of(out)) >= 1, timeout=90)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = err.decode()
    assert proc.returncode == 130, stderr
    scored, failed = kept_in(out)
    kept = len(scored) + len(failed)
    assert 0 < kept < len(ids), stderr
    shown = [int(n.replace(",", "")) for n in re.findall(r"([\d,]+)/1,600 done", stderr)]
    assert shown and all(n % 200 == 0 and n <= kept for n in shown), stderr  # whole parts only
    assert re.search(rf"^read {kept:,} IDs?, scored {len(scored):,}, ", stderr, re.M), stderr
    last = stderr.strip().splitlines()[-1]
    parts = kept // 200
    assert f"stopped by SIGINT: {kept:,} IDs kept in {parts} part" in last, last
    assert f"--resume to run the other {8 - parts} partitions" in last, last
    body = json.loads(report.read_text())
    assert (body["ids_read"], body["scored"], body["failed"]) == (kept, len(scored), len(failed))

    slow_server.reset_stats()
    command = list(proc.args)[len(batchscore_command()) :]
    resumed = run_cli(*command, "--resume", env={"DASK_TEST_TOKEN": TOKEN}, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed: {kept:,} of them were committed" in resumed.stderr
    asked = slow_server.stats()["id_requests"]
    assert sorted(asked) == sorted(set(ids) - set(scored) - set(failed))
    assert set(asked.values()) == {1}
    assert_complete(out, ids)

    local = run_cli(
        "score",
        "ids.txt",
        "-c",
        tmp_path / "http.toml",
        "-o",
        "local.csv",
        "--max-failed",
        "100",
        env={"DASK_TEST_TOKEN": TOKEN},
    )
    assert local.returncode == 0, local.stderr
    assert (out / "merged.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()


def spawned_children(pid: int) -> list[int]:
    """The processes ``pid`` started through multiprocessing (Dask's worker processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == pid and b"multiprocessing.spawn" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def loaded(pid: int, library: str) -> bool:
    """Whether process ``pid`` has loaded a shared library whose name holds ``library``."""
    with contextlib.suppress(OSError):
        return library in Path(f"/proc/{pid}/maps").read_text()
    return False


@pytest.mark.parametrize("moment", ["spawned", "importing"])
def test_ctrl_c_while_the_local_cluster_starts_exits_130_quietly(
    tmp_path: Path, moment: str
) -> None:
    """SIGINT to the driver as soon as a worker process exists, or once it is importing Dask
    (msgpack's extension loaded).  Before, the half-started LocalCluster could not be closed
    (28 lines of an atexit AssertionError from Dask), or the run ended on a bare summary
    line."""
    out = tmp_path / "scores"
    proc = subprocess.Popen(
        [
            *batchscore_command(),
            "score",
            str(SAMPLE / "ids_small.txt"),
            "-c",
            str(SAMPLE_CONFIG),
            "-o",
            str(out),
            "--engine",
            "dask",
        ],
        cwd=ROOT,
        env=clean_environ(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: spawned_children(proc.pid), timeout=60)  # a worker is starting
        workers = spawned_children(proc.pid)
        if moment == "importing":
            wait_for(lambda: loaded(workers[0], "_cmsgpack"))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    stderr = err.decode()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    assert len(stderr.strip().splitlines()) <= 2, stderr
    assert "--resume" in stderr.strip().splitlines()[-1]
    assert not out.exists()  # stopped before anything was written: a clean start again
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers))


def test_a_terminal_ctrl_c_mid_run_leaves_the_workers_quiet(
    slow_server: FeatureServer, tmp_path: Path
) -> None:
    """Ctrl-C at a terminal signals the whole process group, the run's own worker processes
    too: only the driver answers it (exit 130, one line).  Before, each worker printed its own
    KeyboardInterrupt traceback (some 30 lines each) over the summary."""
    proc, out, _ = slow_dask_run(tmp_path, slow_server.url, "--concurrency", "2", group=True)
    try:
        # Partitions are being scored: a worker is writing a part's temporary file.
        wait_for(lambda: out.is_dir() and any(out.glob(".part-*")), timeout=90)
        workers = spawned_children(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    stderr = err.decode()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert "--resume" in stderr.strip().splitlines()[-1]
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers))


@pytest.mark.parametrize(
    "flags",
    [
        ["--engine", "spark", "-o", "out"],
        ["--scheduler", "tcp://127.0.0.1:8786", "-o", "out.csv"],
        ["--engine", "dask"],  # stdout is no folder
        ["--engine", "dask", "-o", "out", "--dedupe"],
        ["--engine", "dask", "-o", "out", "--format", "parquet", "--merge"],
        # two models whose columns SQLite parts could not tell apart
        [
            "--engine",
            "dask",
            "-o",
            "out.db",
            "-m",
            "a=sample_data/model.txt",
            "-m",
            "A=sample_data/model.txt",
        ],
    ],
)
def test_what_a_cluster_run_cannot_do_is_a_usage_error(
    run_cli: RunCli, tmp_path: Path, flags: list[str]
) -> None:
    result = run_cli("score", SAMPLE / "ids_small.txt", "-c", SAMPLE_CONFIG, *flags, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == b""


@pytest.mark.parametrize(
    ("lines", "workers", "size"),
    [
        (16_000, 2, 2_000),  # a small input: about 4 partitions per worker
        (3_000, 2, 1_000),  # but never under 1,000 lines
        (200_000, 2, 10_000),  # a large one: ~5 s of per-ID work each (was 25,000 lines)
        (2_000_000, 64, 7_813),  # many workers: 4 each still
        (500_000_000, 2, 50_000),  # at most 10,000 partitions (was 100,000 lines)
    ],
)
def test_the_default_partition_is_seconds_of_work(lines: int, workers: int, size: int) -> None:
    """The size a run without --partition-size chooses (recorded in its _SUCCESS): a stop
    keeps whole parts, so a partition is what a stop can throw away."""
    from batchscore.engines.dask.folder import choose_partition_size

    assert choose_partition_size(lines, workers) == size


def test_the_job_sent_to_workers_never_shows_its_secrets(tmp_path: Path) -> None:
    from batchscore.engines.dask.task import Job, JobPlugin, Partition
    from batchscore.resolving import resolve

    config = http_config(tmp_path, "http://127.0.0.1:1")
    settings = resolve({"ids": "x.txt"}, str(config), {"DASK_TEST_TOKEN": TOKEN})
    assert TOKEN in repr(settings)  # the settings do hold it ...
    job = Job(
        "run",
        settings,
        (("", b"", "v"),),
        None,
        "/in",
        "text",
        None,
        "/out",
        "csv",
        False,
        "csv",
        "t",
    )  # type: ignore[arg-type]
    plugin = JobPlugin(job)
    for shown in (repr(job), str(job), repr(plugin), repr(Partition(0, 1, 2, 0, 10))):
        assert TOKEN not in shown  # ... what Dask may log or show never does


# -- failures through the cluster: a source down, too many failed IDs, unreachable scheduler -----


def down_config(folder: Path, url: str, **fetch: Any) -> Path:
    """A per-ID HTTP source with quick retries: a down source is found out in well under a
    second."""
    return write_config(
        folder / "down.toml",
        model=SAMPLE / "model.txt",
        sources=[
            {"name": "profile", "kind": "http", "url": f"{url}/features/{{id}}"}
            | ({"features_path": "features"} if "://127.0.0.1:1" not in url else {})
        ],
        fetch={"concurrency": 2, "retries": 1, "backoff_base": 0.001, "backoff_max": 0.01} | fetch,
    )


def cluster_args(cluster: Any, ids: Path, config: Path, out: Path, size: int) -> list[str]:
    return [
        "score",
        str(ids),
        "-c",
        str(config),
        "-o",
        str(out),
        "--engine",
        "dask",
        "--scheduler",
        cluster.scheduler.address,
        "--partition-size",
        str(size),
    ]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("batchscore: error:")]


@pytest.fixture
def sample_server() -> Iterator[FeatureServer]:
    """The sample's features over per-ID HTTP, 20 ms a request; faults set per test."""
    server = FeatureServer.from_sqlite(
        SAMPLE / "features.db", "customer_features", "customer_id", faults=Faults(latency=0.02)
    )
    with server as srv:
        yield srv


def test_a_source_down_mid_run_stops_it_and_resume_finishes_it(
    cluster: Any, sample_server: FeatureServer, run_cli: RunCli, tmp_path: Path
) -> None:
    ids = (SAMPLE / "ids.txt").read_text().splitlines()[:300]
    (tmp_path / "ids.txt").write_text("".join(f"{i}\n" for i in ids))
    out = tmp_path / "scores"
    args = cluster_args(
        cluster, tmp_path / "ids.txt", down_config(tmp_path, sample_server.url), out, 50
    )
    proc = subprocess.Popen(
        [*batchscore_command(), *args, "--max-failed", "10"],
        cwd=tmp_path,
        env=clean_environ(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_for(lambda: len(parts_of(out)) >= 1)
    sample_server.faults.fail_all = True  # every request from now on: 503
    _, err = proc.communicate(timeout=60)
    stderr = err.decode()
    assert proc.returncode == 4, stderr
    assert "Traceback" not in stderr
    [line] = error_lines(stderr)
    assert "'profile'" in line and "--resume" in line
    assert not (out / "_SUCCESS").exists()
    # On an existing cluster the partitions still running go on until their source fails
    # them; a partition that stops leaves no temporary file behind.
    wait_for(lambda: not [f for f in out.iterdir() if f.name.endswith((".tmp", ".partial"))], 15)
    kept = {}
    for part in parts_of(out):  # a part is a whole one: its errors file and record beside it
        assert (out / part.name.replace("part-", "errors-").replace(".csv", ".jsonl")).exists()
        record = json.loads((out / f".{part.name}.done").read_text())
        if not record["dead"]:  # not one written while the source was down
            kept[part.name] = part.stat().st_mtime_ns
    assert kept and len(kept) < 6

    sample_server.faults.fail_all = False  # the source is back
    sample_server.reset_stats()
    resumed = run_cli(*args, "--max-failed", "10", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_complete(out, ids)
    for name, mtime in kept.items():  # kept, not fetched again
        assert (out / name).stat().st_mtime_ns == mtime
    assert sample_server.stats(brief=True)["requests_total"] <= len(ids) - 50 * len(kept)


def test_a_source_down_over_partitions_smaller_than_down_after_is_down(
    cluster: Any, sample_server: FeatureServer, run_cli: RunCli, tmp_path: Path
) -> None:
    """Each partition of 5 IDs sends 10 failed attempts, under down_after = 25: the driver
    counts failures in a row over the partitions, as one process would.  Before, every part
    was written full of failures, the run exited 3 with _SUCCESS, and --resume could never
    fetch those IDs again."""
    sample_server.faults = Faults(fail_all=True)
    ids = (SAMPLE / "ids_small.txt").read_text().splitlines()
    out = tmp_path / "scores"
    config = down_config(tmp_path, sample_server.url, down_after=25)
    args = cluster_args(cluster, SAMPLE / "ids_small.txt", config, out, 5)
    stopped = run_cli(*args)
    assert stopped.returncode == 4, stopped.stderr
    [line] = error_lines(stopped.stderr)
    assert "source 'profile' failed" in line and "http_503" in line
    assert not (out / "_SUCCESS").exists()

    sample_server.faults = Faults()
    sample_server.reset_stats()
    resumed = run_cli(*args, "--resume", "--max-failed", "1")
    assert resumed.returncode == 0, resumed.stderr
    manifest = assert_complete(out, ids)
    # Every ID fetched again, the parts written while the source was down included.
    assert manifest["counts"] == {
        "read": 50,
        "scored": 49,
        "failed": 1,
        "skipped": 0,
        "failed_by_reason": {"not_found": 1},
    }
    assert sample_server.stats(brief=True)["requests_total"] == 50


def test_an_unreachable_source_is_down_through_the_cluster(
    cluster: Any, run_cli: RunCli, tmp_path: Path
) -> None:
    out = tmp_path / "scores"
    config = down_config(tmp_path, "http://127.0.0.1:1", retries=2)
    result = run_cli(*cluster_args(cluster, SAMPLE / "ids_small.txt", config, out, 10))
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr
    [line] = error_lines(result.stderr)
    assert "source 'profile'" in line and "connect_error" in line
    assert not (out / "_SUCCESS").exists()


def test_too_many_failed_ids_exit_3_as_a_local_run_does(
    cluster: Any, run_cli: RunCli, tmp_path: Path
) -> None:
    lines = (SAMPLE / "ids.txt").read_text().splitlines()[:300]
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"{i}\n" for i in [*lines, "nope-1", "nope-2"]))
    local = run_cli("score", ids, "-c", SAMPLE_CONFIG, "-o", tmp_path / "local.csv", cwd=ROOT)
    assert local.returncode == 3, local.stderr
    out = tmp_path / "scores"
    dask = run_cli(*cluster_args(cluster, ids, SAMPLE_CONFIG, out, 50), cwd=ROOT)
    assert dask.returncode == 3, dask.stderr
    last = dask.stderr.strip().splitlines()[-1]
    assert last == local.stderr.strip().splitlines()[-1]
    assert last.startswith("exit 3: 5 failed IDs")
    # The run finished: its outputs and errors are complete, every failed ID once.
    manifest = assert_complete(out, [*lines, "nope-1", "nope-2"])
    failed = [r for e in sorted(out.glob("errors-*.jsonl")) for r in read_errors(e)]
    assert failed == read_errors(tmp_path / "local.csv.errors.jsonl")
    assert len({r["id"] for r in failed}) == len(failed) == 5
    assert manifest["counts"]["failed"] == 5


@pytest.mark.parametrize("name", ["scores.parquet", "scores.db", "scores.csv.gz"])
def test_parquet_sqlite_and_gzip_parts_read_back_as_a_local_run(
    cluster: Any, run_cli: RunCli, tmp_path: Path, name: str
) -> None:
    if name.endswith(".parquet"):
        pq = pytest.importorskip("pyarrow.parquet")
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"{i}\n" for i in (SAMPLE / "ids.txt").read_text().split()[:300]))
    common = ["--max-failed", "10"]
    local = tmp_path / f"local-{name}"
    assert (
        run_cli("score", ids, "-c", SAMPLE_CONFIG, "-o", local, *common, cwd=ROOT).returncode == 0
    )
    out = tmp_path / name
    extra = ["--merge"] if name.endswith(".gz") else []
    dask = run_cli(*cluster_args(cluster, ids, SAMPLE_CONFIG, out, 70), *common, *extra, cwd=ROOT)
    assert dask.returncode == 0, dask.stderr
    ext = name.removeprefix("scores.")
    parts = parts_of(out, ext)
    assert len(parts) == 5  # 300 lines in partitions of 70
    if ext == "parquet":
        import pyarrow as pa

        assert pa.concat_tables([pq.read_table(p) for p in parts]).equals(pq.read_table(local))
    elif ext == "db":

        def rows(path: Path) -> list[tuple[Any, ...]]:
            with contextlib.closing(sqlite3.connect(path)) as db:
                return db.execute("SELECT * FROM predictions ORDER BY rowid").fetchall()

        assert [row for p in parts for row in rows(p)] == rows(local)
    else:
        expected = gzip.decompress(local.read_bytes())
        header = expected.split(b"\n", 1)[0] + b"\n"
        bodies = [gzip.decompress(p.read_bytes()) for p in parts]
        assert all(body.startswith(header) for body in bodies)
        assert header + b"".join(body[len(header) :] for body in bodies) == expected
        assert gzip.decompress((out / "merged.csv.gz").read_bytes()) == expected


def test_an_unreachable_scheduler_is_a_one_line_usage_error_at_once(
    run_cli: RunCli, tmp_path: Path
) -> None:
    out = tmp_path / "scores"
    started = time.monotonic()
    result = run_cli(
        "score",
        SAMPLE / "ids_small.txt",
        "-c",
        SAMPLE_CONFIG,
        "-o",
        out,
        "--engine",
        "dask",
        "--scheduler",
        "tcp://127.0.0.1:1",
        cwd=ROOT,
        timeout=20,
    )
    assert time.monotonic() - started < 10  # Dask's own connect would retry for 30 s
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(
        "batchscore: error: cannot reach the Dask scheduler at tcp://127.0.0.1:1"
    )
    assert "--scheduler" in line
    assert not out.exists()  # nothing written for a run that never started
