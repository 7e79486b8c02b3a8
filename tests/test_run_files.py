"""The run's files broken on purpose (issue 18): cut, edited or missing partial files, segments,
state and done records, a full disk at every size, shared paths, and a kill at every step of the
commit, for every output format.  Each ends in a clean exit (0 after --resume, or 2/74/75 with
one line naming the file), within seconds, and never in exit 1, a hang or a wrong output.

The real command runs in a subprocess with a timeout: a process that prints its error and then
hangs on an open aiosqlite connection (the bug of item 7) fails by taking too long.
"""

from __future__ import annotations

import json
import resource
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    ROOT,
    SAMPLE_CONFIG,
    SAMPLE_DIR,
    batchscore_command,
    clean_environ,
    read_output,
)

EXIT_WITHIN = 20.0  # seconds: a run that fails at once takes ~1 s; a hang takes forever
FORMATS = ["csv", "jsonl", "parquet", "sqlite"]


def _args(out: Path, *extra: str) -> list[str]:
    ids, config = str(SAMPLE_DIR / "ids.txt"), str(SAMPLE_CONFIG)
    return ["score", ids, "-c", config, "-o", str(out), "--max-failed", "100", *extra]


def _run(
    args: list[str],
    env: dict[str, str] | None = None,
    file_size: int | None = None,
) -> tuple[subprocess.CompletedProcess[bytes], float]:
    """The real command; how long it took to exit.  ``file_size``: RLIMIT_FSIZE, a disk that
    is full once any file reaches that many bytes (writes past it fail with EFBIG)."""

    def limit() -> None:
        if file_size is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    started = time.monotonic()
    try:
        result = subprocess.run(
            [*batchscore_command(), *args],
            capture_output=True,
            env=clean_environ(env),
            cwd=ROOT,
            timeout=EXIT_WITHIN * 3,
            check=False,
            preexec_fn=limit if file_size is not None else None,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the process never exited: {args}")
    return result, time.monotonic() - started


def _refused(result: subprocess.CompletedProcess[bytes], took: float, status: int) -> str:
    """The one-line error of a clean refusal with ``status``, in time, no traceback."""
    err = result.stderr.decode()
    assert result.returncode == status, err
    assert took < EXIT_WITHIN, f"the process took {took:.0f} s to exit after its error"
    assert "Traceback" not in err and "internal error" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("batchscore: error:")]
    assert len(errors) == 1, err
    return errors[0]


def _rows(out: Path) -> list[tuple[str, float]]:
    """The output's (id, score) rows, whatever its format."""
    if out.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(out).to_pydict()
        return list(zip(table["id"], table["score"], strict=True))
    if out.suffix == ".db":
        with sqlite3.connect(out) as con:
            return [
                tuple(r) for r in con.execute("SELECT id, score FROM predictions ORDER BY rowid")
            ]
    return [(r["id"], float(r["score"])) for r in read_output(out)]


def _suffix(fmt: str) -> str:
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    return {"sqlite": "db"}.get(fmt, fmt)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, bytes]]:
    """Each format's rows and errors file from an uninterrupted run."""
    folder = tmp_path_factory.mktemp("reference")
    found: dict[str, tuple[Any, bytes]] = {}
    for fmt in FORMATS:
        if fmt == "parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                continue
        out = folder / f"scores.{_suffix(fmt)}"
        result, _ = _run(_args(out))
        assert result.returncode == 0, result.stderr
        found[fmt] = (_rows(out), Path(f"{out}.errors.jsonl").read_bytes())
    return found


class Runs:
    """One folder per module (and xdist worker) where each test's run lives, emptied before
    every test, and the runs several tests start from, each made there once and copied back
    for the next test that needs it (sizes and times kept).  The folder stays the same because
    a run's identity holds its absolute paths: a stopped run moved elsewhere is another job."""

    def __init__(self, folder: Path, saved: Path) -> None:
        self.folder = folder
        self.saved = saved

    def empty(self) -> Path:
        for entry in list(self.folder.iterdir()):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        return self.folder

    def made_once(self, name: str, make: Callable[[], None]) -> None:
        """The folder as ``make`` leaves an empty one (made the first time, copied after)."""
        copy = self.saved / name
        if copy.exists():
            shutil.copytree(copy, self.folder, symlinks=True, dirs_exist_ok=True)
            return
        make()
        shutil.copytree(self.folder, copy, symlinks=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("made-once"))


@pytest.fixture
def folder(runs: Runs) -> Path:
    """The module's run folder, empty (see :class:`Runs`)."""
    return runs.empty()


def _stopped(runs: Runs, fmt: str, step: str = "synced") -> tuple[Path, list[str]]:
    """A run killed at ``step`` of its commit (every row durable in its partial files), in
    ``runs.folder``."""
    out = runs.folder / f"scores.{_suffix(fmt)}"
    args = _args(out)

    def kill() -> None:
        killed, _ = _run(args, {"_BATCHSCORE_CRASH_AT": step})
        assert killed.returncode == -9, killed.stderr

    runs.made_once(f"stopped-{fmt}-{step}", kill)
    return out, args


def _same_as_reference(out: Path, fmt: str, reference: dict[str, tuple[Any, bytes]]) -> None:
    rows, errors = reference[fmt]
    assert _rows(out) == rows
    assert Path(f"{out}.errors.jsonl").read_bytes() == errors


def _state(out: Path) -> Path:
    return out.with_name(f".{out.name}.state")


# -- item 1: a partial shorter than its state says is refused, never padded ---------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_partial_output_cut_short_is_refused_naming_it(
    runs: Runs, folder: Path, fmt: str, reference: dict[str, tuple[Any, bytes]]
) -> None:
    out, args = _stopped(runs, fmt)
    partial = out.with_name(f".{out.name}.partial")
    committed = partial.stat().st_size
    partial.write_bytes(partial.read_bytes()[:2000])  # the first lines only
    result, took = _run([*args, "--resume"])
    line = _refused(result, took, 2)
    assert str(partial) in line and f"{committed:,} bytes" in line and "--overwrite" in line
    assert not out.exists(), "no output padded with NUL bytes"
    again, _ = _run([*args, "--overwrite"])
    assert again.returncode == 0, again.stderr
    _same_as_reference(out, fmt, reference)


def test_an_errors_partial_cut_short_is_refused(runs: Runs, folder: Path) -> None:
    _, args = _stopped(runs, "csv")
    partial = folder / ".scores.csv.errors.jsonl.partial"
    partial.write_bytes(partial.read_bytes()[:100])
    result, took = _run([*args, "--resume"])
    assert str(partial) in _refused(result, took, 2)


def test_a_parquet_segment_missing_or_cut_is_refused_at_once(runs: Runs, folder: Path) -> None:
    _, args = _stopped(runs, "parquet")
    segments = folder / ".scores.parquet.partial"
    first = segments / "segment-00000000.parquet"
    first.write_bytes(first.read_bytes()[:-100])  # cut: its footer is gone
    result, took = _run([*args, "--resume"])
    line = _refused(result, took, 2)
    assert str(first) in line and "damaged" in line
    first.unlink()
    result, took = _run([*args, "--resume"])
    line = _refused(result, took, 2)
    assert "segment-00000000.parquet" in line and str(segments) in line
    again, took = _run([*args, "--resume"])  # and every later --resume says the same, at once
    assert _refused(again, took, 2) == line


def test_a_sqlite_partial_with_rows_deleted_or_garbage_is_refused(runs: Runs, folder: Path) -> None:
    _, args = _stopped(runs, "sqlite")
    partial = folder / ".scores.db.partial"
    with sqlite3.connect(partial) as con:
        con.execute("DELETE FROM predictions WHERE rowid > 100")
    result, took = _run([*args, "--resume"])
    line = _refused(result, took, 2)
    assert str(partial) in line and "100 rows" in line
    partial.write_bytes(b"not a database" * 100)
    result, took = _run([*args, "--resume"])
    assert str(partial) in _refused(result, took, 2)


# -- item 3: two runs sharing one errors file --------------------------------------------------


def test_a_run_sharing_another_running_runs_errors_file_is_refused(tmp_path: Path) -> None:
    errors = tmp_path / "shared.errors.jsonl"
    config = str(SAMPLE_CONFIG)
    first = subprocess.Popen(
        [
            *batchscore_command(),
            *("score", "-", "-c", config, "-o", str(tmp_path / "a.csv")),
            *("--errors", str(errors), "--max-failed", "100"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_environ(),
        cwd=ROOT,
    )
    try:
        lock = tmp_path / ".shared.errors.jsonl.lock"
        deadline = time.monotonic() + EXIT_WITHIN
        while not (lock.exists() and lock.read_bytes().startswith(b"pid")):  # A holds it
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        second, took = _run(_args(tmp_path / "b.csv", "--errors", str(errors)))
        line = _refused(second, took, 75)
        assert str(errors) in line and f"pid {first.pid}" in line and "--errors" in line
        assert not (tmp_path / ".b.csv.state").exists(), "B touched nothing"
        ids = b"".join((SAMPLE_DIR / "ids.txt").read_bytes().splitlines(keepends=True)[:200])
        _, err = first.communicate(ids, timeout=EXIT_WITHIN * 3)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    records = [json.loads(line) for line in errors.read_text().splitlines()]
    assert records and all(r["reason"] == "not_found" for r in records)  # A's, and only A's
    assert len({r["line"] for r in records}) == len(records)


# -- item 4: a kill at every step of every format's commit -------------------------------------


STEPS = ["synced", "complete", "errors-renamed", "output-renamed"]


@pytest.mark.parametrize(
    ("fmt", "step"),
    [(fmt, step) for fmt in FORMATS for step in STEPS]
    + [("parquet", "parquet-assembled"), ("parquet", "parquet-renamed")],
)
def test_a_kill_at_any_step_of_the_commit_is_finished_by_resume(
    runs: Runs, folder: Path, fmt: str, step: str, reference: dict[str, tuple[Any, bytes]]
) -> None:
    out, args = _stopped(runs, fmt, step)
    resumed, took = _run([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert took < EXIT_WITHIN
    _same_as_reference(out, fmt, reference)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f".{out.name}.done", out.name, f"{out.name}.errors.jsonl"]
    )


# -- item 7: every error with the state open exits at once, cleanly ----------------------------


def _edit_state(out: Path, column: str, value: object) -> None:
    with sqlite3.connect(_state(out)) as con:
        con.execute(f"UPDATE run SET {column} = ?", (value,))


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("lines", "[[1,"),
        ("lines", '{"a": 1}'),
        ("lines", "[[5, -2]]"),
        ("counters", "not json"),
        ("counters", '{"scored": "many"}'),
        ("counters", "[]"),
        ("counters", '{"scored": 5, "distributions": [{"scores": {"score": {"edges": [1]}}}]}'),
        ("counters", '{"scored": 5, "distributions": {"a": 1}}'),
        ("output_bytes", -5),
        ("output_bytes", "12kB"),
        ("complete", 7),
    ],
)
def test_a_damaged_state_value_is_refused_naming_the_state_file(
    runs: Runs, folder: Path, column: str, value: object
) -> None:
    out, args = _stopped(runs, "csv")
    _edit_state(out, column, value)
    result, took = _run([*args, "--resume"])
    line = _refused(result, took, 2)
    assert str(_state(out)) in line and "damaged" in line and "--overwrite" in line


def test_a_state_file_that_is_no_database_is_refused(runs: Runs, folder: Path) -> None:
    out, args = _stopped(runs, "csv")
    _state(out).write_bytes(b"garbage" * 1000)
    result, took = _run([*args, "--resume"])
    assert str(_state(out)) in _refused(result, took, 2)


def test_an_error_during_the_final_renames_exits_at_once_and_resumes(
    runs: Runs, folder: Path, reference: dict[str, tuple[Any, bytes]]
) -> None:
    """Only the renames are left and the folder refuses them (immutable: ``chattr +i``, which
    root cannot bypass as it does a read-only mode): exit 74 at once, then resumable."""
    out, args = _stopped(runs, "csv", "complete")
    frozen = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
    if frozen.returncode != 0:
        pytest.skip(f"chattr +i is not available here: {frozen.stderr!r}")
    try:
        result, took = _run([*args, "--resume"])
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    assert "errors.jsonl" in _refused(result, took, 74)
    resumed, _ = _run([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    _same_as_reference(out, "csv", reference)


# -- item 8: a damaged done record -------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        "null",
        "[]",
        '{"identity": 5}',
        "{",
        "drop-finished",
        "counters-text",
    ],
)
def test_a_damaged_done_record_is_refused_saying_what_to_do(
    runs: Runs, folder: Path, record: str
) -> None:
    out = folder / "scores.csv"
    args = _args(out, "--resume")

    def complete() -> None:
        first, _ = _run(args)
        assert first.returncode == 0, first.stderr

    runs.made_once("completed-csv", complete)
    done = folder / ".scores.csv.done"
    kept = json.loads(done.read_text())
    if record == "drop-finished":
        kept.pop("finished")
        done.write_text(json.dumps(kept))
    elif record == "counters-text":
        done.write_text(json.dumps({**kept, "counters": "5000"}))
    else:
        done.write_text(record)
    result, took = _run(args)
    line = _refused(result, took, 2)
    assert str(done) in line and "damaged" in line and "--overwrite" in line
    again, _ = _run([*args[:-1], "--overwrite"])
    assert again.returncode == 0, again.stderr


# -- beyond the list: a full disk at every size, then --resume --------------------------------


@pytest.mark.parametrize("size", [0, 4096, 8192, 12288, 60000])  # lock, state, insert, output
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_full_disk_at_every_step_exits_74_and_resumes_to_the_same_output(
    tmp_path: Path, fmt: str, size: int, reference: dict[str, tuple[Any, bytes]]
) -> None:
    """Every file the run writes is capped at N bytes (RLIMIT_FSIZE, as a disk that fills),
    for N from nothing to past the state's first insert and through the output: each run
    exits 0 or 74 at once, and --resume without the cap gives the uninterrupted output.
    (One test per size: they run side by side under pytest-xdist.)"""
    out = tmp_path / f"scores.{_suffix(fmt)}"
    args = _args(out)
    full, took = _run(args, file_size=size)
    if full.returncode != 0:
        _refused(full, took, 74)
        resumed, _ = _run([*args, "--resume"])
        assert resumed.returncode == 0, (size, resumed.stderr)
    _same_as_reference(out, fmt, reference)


def test_a_run_started_with_overwrite_is_finished_by_resume(
    tmp_path: Path, reference: dict[str, tuple[Any, bytes]]
) -> None:
    """--resume cannot also pass --overwrite: the state remembers that the stopped run was
    told to replace the output, and its --resume does."""
    out = tmp_path / "scores.csv"
    out.write_text("an older output\n")
    killed, _ = _run(_args(out, "--overwrite"), {"_BATCHSCORE_CRASH_AT": "synced"})
    assert killed.returncode == -9, killed.stderr
    resumed, _ = _run(_args(out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    _same_as_reference(out, "csv", reference)
