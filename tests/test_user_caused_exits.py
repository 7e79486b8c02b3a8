"""What a user can cause never exits 1 (issue 18, item 8 and 10): closed or full standard
streams, numbers too large for any use, a model header that was edited, Ctrl-C while the
command is still loading.  Each is the real command, run as a user runs it from a shell.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (
    ROOT,
    SAMPLE_CONFIG,
    SAMPLE_DIR,
    RunCli,
    batchscore_command,
    clean_environ,
    read_output,
    write_config,
)

IDS = SAMPLE_DIR / "ids_small.txt"  # 50 lines, one ID no source has (line 31)
SCORED = 49
SAMPLE_SOURCE = {
    "name": "features",
    "kind": "sqlite",
    "path": str(SAMPLE_DIR / "features.db"),
    "table": "customer_features",
    "key": "customer_id",
}


def in_shell(
    redirect: str, *args: str | Path, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    """``batchscore ARGS REDIRECT`` run by sh (``<&-``, ``2>&-``, ``2>/dev/full``), in the
    repository; stdout and, unless redirected, stderr captured."""
    command = " ".join(f'"${i + 1}"' for i in range(len(batchscore_command()) + len(args)))
    return subprocess.run(
        ["sh", "-c", f"exec {command} {redirect}", "sh", *batchscore_command(), *map(str, args)],
        capture_output=True,
        env=clean_environ(),
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


def score_args(out: Path, *extra: str) -> list[str | Path]:
    return ["score", IDS, "-c", SAMPLE_CONFIG, "-o", out, *extra]


# -- closed and full standard streams -------------------------------------------------------------


def test_a_closed_stdin_does_not_matter_to_a_run_of_an_ids_file(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    result = in_shell("<&-", *score_args(out, "--max-failed", "1"))
    assert result.returncode == 0, result.stderr
    assert len(read_output(out)) == SCORED


def test_a_closed_stdin_that_should_give_the_ids_is_a_usage_error_before_any_output(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.csv"
    result = in_shell("<&-", "score", "-", "-c", SAMPLE_CONFIG, "-o", out)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert err.count("\n") == 1 and "stdin is closed" in err, err
    assert not out.exists()


@pytest.mark.parametrize("redirect", ["2>&-", "2>/dev/full"])
@pytest.mark.parametrize(("allowed", "status"), [("1", 0), ("0", 3)])
def test_stderr_closed_or_full_leaves_the_exit_status_to_the_run(
    tmp_path: Path, redirect: str, allowed: str, status: int
) -> None:
    if redirect.endswith("/dev/full") and not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    out = tmp_path / "out.csv"
    result = in_shell(redirect, *score_args(out, "--max-failed", allowed))
    assert result.returncode == status
    assert len(read_output(out)) == SCORED
    assert result.stdout == b""


def test_stderr_full_during_an_error_keeps_the_errors_exit_status(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    result = in_shell("2>/dev/full", *score_args(tmp_path / "out.csv", "--min-ids", "1000"))
    assert result.returncode == 2


@pytest.mark.parametrize("redirect", [">&-", ">/dev/full"])
@pytest.mark.parametrize("command", ["model-info", "check", "score"])
def test_stdout_closed_or_full_is_exit_74_with_one_line(redirect: str, command: str) -> None:
    if redirect.endswith("/dev/full") and not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    args: list[str | Path] = {
        "model-info": ["model-info", SAMPLE_DIR / "model.txt"],
        "check": ["check", "-c", SAMPLE_CONFIG],
        "score": ["score", IDS, "-c", SAMPLE_CONFIG, "--max-failed", "1"],  # scores to stdout
    }[command]
    result = in_shell(redirect, *args)
    err = result.stderr.decode()
    assert result.returncode == 74, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    errors = [x for x in err.splitlines() if x.startswith("batchscore: error:")]
    assert len(errors) == 1 and "cannot write stdout" in errors[0], err


# -- numbers that cannot be meant ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "word"),
    [
        ("--min-ids", "100000000000000000000", "too large"),
        ("--batch-size", "100000000000000000000", "too large"),
        ("--threads", "40000", "at most 1,024"),  # libgomp could not start them
        ("--threads", "65536", "at most 1,024"),  # LightGBM crashed (exit 139)
    ],
)
def test_a_number_too_large_for_any_use_is_a_one_line_usage_error(
    tmp_path: Path, run_cli: RunCli, flag: str, value: str, word: str
) -> None:
    out = tmp_path / "out.csv"
    result = run_cli(*score_args(out, flag, value), cwd=ROOT, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and f"{flag} {value}" in result.stderr
    assert word in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("section", "key", "word"),
    [
        ("fetch", "retries", "is too large"),
        ("input", "min_ids", "is too large"),
    ],
)
@pytest.mark.parametrize("command", ["score", "check"])
def test_a_config_number_past_64_bits_is_a_one_line_config_error(
    tmp_path: Path, run_cli: RunCli, command: str, section: str, key: str, word: str
) -> None:
    """Any whole number past 64 bits in the file (the config's fingerprint could not be
    written by orjson) was exit 1, 'internal error: TypeError: Integer exceeds 64-bit range'."""
    value = 10**22
    config = write_config(
        tmp_path / "c.toml",
        model=SAMPLE_DIR / "model.txt",
        sources=[SAMPLE_SOURCE],
        **{section: {key: value}},
    )
    out = tmp_path / "out.csv"
    args = ["-o", out] if command == "score" else []
    result = run_cli(command, IDS, "-c", config, *args, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"[{section}] {key} = {value} in {config} {word}" in result.stderr
    assert not out.exists()


def test_a_check_sample_too_large_is_a_usage_error(run_cli: RunCli) -> None:
    result = run_cli("check", IDS, "-c", SAMPLE_CONFIG, "--sample", "1" + "0" * 20, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert "--sample must be between 1 and" in result.stderr


# -- a model header that was edited ---------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_a_model_that_says_it_has_no_class_is_refused_at_the_model_check(
    tmp_path: Path, run_cli: RunCli, value: str
) -> None:
    text = (SAMPLE_DIR / "model.txt").read_text()
    assert "\nnum_class=1\n" in text
    model = tmp_path / "model.txt"
    model.write_text(text.replace("\nnum_class=1\n", f"\nnum_class={value}\n", 1))
    out = tmp_path / "out.csv"
    runs = {
        "score": run_cli(*score_args(out, "-m", model), cwd=ROOT),
        "check": run_cli("check", "-c", SAMPLE_CONFIG, "-m", model, cwd=ROOT),
        "model-info": run_cli("model-info", model, cwd=ROOT),
    }
    for command, result in runs.items():
        assert result.returncode == 2, (command, result.stderr)
        assert f"num_class={value}" in result.stderr, (command, result.stderr)
        assert "Traceback" not in result.stderr
    assert not out.exists()


# -- Ctrl-C while the command loads ---------------------------------------------------------------

PAUSE_AT_TYPER = """
import os, sys, time

class _PauseAtTyper:
    '''Holds the first import of typer (the command's first heavy import) until a signal.'''

    def find_spec(self, name, path=None, target=None):
        if name == "typer":
            sys.meta_path.remove(self)
            with open(os.environ["PAUSED_MARK"], "w") as mark:
                mark.write("importing typer")
            time.sleep(60)
        return None

sys.meta_path.insert(0, _PauseAtTyper())
"""


def _with_hook(tmp_path: Path, hook: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    """``score`` of the sample, with ``hook`` as the process's ``sitecustomize`` (it may write
    the file ``PAUSED_MARK`` names when the process is where the test wants it)."""
    folder = tmp_path / "hook"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(hook)
    mark = tmp_path / "paused"
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(
        [*batchscore_command(), "score", str(IDS), "-c", str(SAMPLE_CONFIG), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_environ({"PYTHONPATH": path, "PAUSED_MARK": str(mark)}),
        cwd=ROOT,
    )
    return proc, mark


def _ended(
    proc: subprocess.Popen[bytes], mark: Path | None = None, sig: int = signal.SIGINT
) -> tuple[bytes, bytes]:
    """Send ``sig`` once the process has written ``mark`` (none: it signals itself), then its
    stdout and stderr; never leaves it running."""
    try:
        deadline = time.monotonic() + 30
        while mark is not None and not mark.exists():  # the process says where it is
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.02)
        if mark is not None:
            proc.send_signal(sig)
        return proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_ctrl_c_while_the_command_loads_exits_130_without_a_traceback(tmp_path: Path) -> None:
    proc, mark = _with_hook(tmp_path, PAUSE_AT_TYPER)
    out, err = _ended(proc, mark, signal.SIGINT)  # inside the import
    assert proc.returncode == 130, err
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err, err
    assert err == b"batchscore: interrupted\n" and out == b""


SIGNAL_IN_SET_NAME = """
import os, sys, time

class _Slow:
    # A descriptor whose __set_name__ waits: a class body being built when the signal comes.
    def __set_name__(self, owner, name):
        with open(os.environ["PAUSED_MARK"], "w") as mark:
            mark.write("building a class")
        time.sleep(60)

class _SignalInClassBody:
    # At the lazy import of batchscore.lifecycle (after the command's own SIGTERM handler is in
    # place), build a class as numpy's and pyarrow's modules do at import.
    def find_spec(self, name, path=None, target=None):
        if name == "batchscore.lifecycle":
            sys.meta_path.remove(self)
            type("Holder", (), {"field": _Slow()})
        return None

sys.meta_path.insert(0, _SignalInClassBody())
"""


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_while_a_module_builds_its_classes_is_a_stop_not_a_bug(
    tmp_path: Path, sig: signal.Signals, status: int
) -> None:
    """Python 3.11 wraps an exception raised in ``__set_name__`` (a signal's, during a lazy
    import) in ``RuntimeError: Error calling __set_name__``: found by the kill-and-resume
    campaign as exit 1 "internal error" for a SIGTERM during start-up."""
    proc, mark = _with_hook(tmp_path, SIGNAL_IN_SET_NAME)
    out, err = _ended(proc, mark, sig)  # inside the class body
    assert proc.returncode == status, err
    assert b"internal error" not in err and b"Traceback" not in err, err
    assert len(err.splitlines()) == 1 and out == b""


SIGNAL_IN_A_FORK = """
import os, signal, sys

_real_fork = os.fork

def _signal_in_release(frame, event, arg):
    # The instant Python's at-fork hooks give back logging's lock: a SIGTERM comes then.
    if event == "call" and frame.f_code.co_name == "_releaseLock":
        sys.setprofile(None)
        os.kill(os.getpid(), signal.SIGTERM)

def fork():
    sys.setprofile(_signal_in_release)
    try:
        return _real_fork()
    finally:
        sys.setprofile(None)

os.fork = fork
"""


def test_a_signal_while_the_model_check_forks_stops_the_run_instead_of_hanging(
    tmp_path: Path,
) -> None:
    """The model is checked in a forked child.  A SIGTERM whose handler ran inside Python's
    at-fork hooks raised between logging's lock being taken and given back: the exception was
    "ignored", the run went on, and the SQLite source's thread waited for that lock forever
    (the kill-and-resume campaign found the hang).  The signal must stop the run: 143, at once."""
    out = tmp_path / "scores.csv"
    proc, _ = _with_hook(tmp_path, SIGNAL_IN_A_FORK, "-o", str(out))
    _, err = _ended(proc)  # it signals itself
    assert proc.returncode == 143, err
    assert b"Traceback" not in err and b"Exception ignored" not in err, err
    assert not out.exists()


# -- a report or metrics file that cannot be written ----------------------------------------------


@pytest.mark.parametrize("where", ["missing-folder", "directory-in-the-way"])
def test_a_report_that_cannot_be_written_is_named_and_exit_74_with_the_scores_kept(
    tmp_path: Path, run_cli: RunCli, where: str
) -> None:
    out, metrics = tmp_path / "out.csv", tmp_path / "run.prom"
    report = tmp_path / "no-such-folder" / "report.json"
    if where == "directory-in-the-way":
        report = tmp_path / "report.json"
        report.mkdir()
    args = score_args(out, "--max-failed", "1", "--report", str(report), "--metrics", str(metrics))
    result = run_cli(*args, cwd=ROOT)
    assert result.returncode == 74, result.stderr
    [line] = [x for x in result.stderr.splitlines() if x.startswith("batchscore: error:")]
    reason = "No such file or directory" if where == "missing-folder" else "Is a directory"
    assert f"--report file {report}: {reason}" in line and "the output is complete" in line
    assert len(read_output(out)) == SCORED  # the scores are there
    # The metrics a monitor reads say how the run ended: 74, not an older run's 0.
    [exit_line] = [
        x for x in metrics.read_text().splitlines() if x.startswith("batchscore_exit_code{")
    ]
    assert exit_line.endswith(" 74")
    assert not list(tmp_path.rglob(".*tmp*")), "no temporary file left behind"


def test_metrics_that_cannot_be_written_leave_a_failed_run_its_own_status(
    tmp_path: Path, run_cli: RunCli
) -> None:
    metrics = tmp_path / "no-such-folder" / "run.prom"
    args = score_args(tmp_path / "out.csv", "--min-ids", "1000", "--metrics", str(metrics))
    result = run_cli(*args, cwd=ROOT)
    assert result.returncode == 2, result.stderr  # the refusal, not the metrics, is the news
    assert "--min-ids" in result.stderr


SIGNAL_AS_RUN_CLI_STARTS = """
import os, signal, sys

def _signal_at_run_cli(frame, event, arg):
    # The instant the command line's inner function is entered, before its own try: Ctrl-C.
    if event == "call" and frame.f_code.co_name == "_run_cli":
        sys.setprofile(None)
        os.kill(os.getpid(), signal.SIGINT)

class _ProfileOnceLoaded:
    def find_spec(self, name, path=None, target=None):
        if name == "batchscore.app":
            sys.meta_path.remove(self)
            sys.setprofile(_signal_at_run_cli)
        return None

sys.meta_path.insert(0, _ProfileOnceLoaded())
"""


def test_ctrl_c_as_the_command_line_starts_exits_130_without_a_traceback(tmp_path: Path) -> None:
    """Found by the kill-and-resume campaign (seed 23): a SIGINT 0.1 s into a run, between
    ``run_cli`` being entered and its ``try``, printed a KeyboardInterrupt traceback."""
    proc, _ = _with_hook(tmp_path, SIGNAL_AS_RUN_CLI_STARTS)
    out, err = _ended(proc)  # it signals itself
    assert proc.returncode == 130, err
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err, err
    assert err.endswith(b"batchscore: interrupted\n") and len(err.splitlines()) == 1, err
    assert out == b""


SIGNAL_IN_A_WEAKREF_CALLBACK = """
import os, signal, sys, weakref

class _Object:
    pass

def _signal_inside(ref):
    # A callback Python runs for a collected object (an import's module lock has one): an
    # exception raised in it is "ignored".  Ctrl-C lands here.
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(10000):
        pass

class _AtLifecycle:
    # At the lazy import of batchscore.lifecycle: the command's own handlers are in place.
    def find_spec(self, name, path=None, target=None):
        if name == "batchscore.lifecycle":
            sys.meta_path.remove(self)
            thing = _Object()
            keep = weakref.ref(thing, _signal_inside)
            del thing
        return None

sys.meta_path.insert(0, _AtLifecycle())
"""


def test_a_ctrl_c_that_python_swallows_still_stops_the_run(tmp_path: Path) -> None:
    """Found by the kill-and-resume campaign (seed 29): a SIGINT 0.5 s into a run landed in a
    weakref callback of the import machinery; Python printed "Exception ignored ...
    KeyboardInterrupt" and the run went on to the end, the stop lost."""
    out = tmp_path / "scores.csv"
    proc, _ = _with_hook(tmp_path, SIGNAL_IN_A_WEAKREF_CALLBACK, "-o", str(out))
    _, err = _ended(proc)  # it signals itself
    assert proc.returncode == 130, err
    assert b"Traceback" not in err and b"Exception ignored" not in err, err
    assert b"stopping" in err
    assert not out.exists()  # stopped before the end: nothing in place, the state resumable


# -- a source config that cannot work -------------------------------------------------------------


@pytest.mark.parametrize("command", ["score", "check"])
def test_a_postgres_dsn_port_past_65535_is_a_config_error_not_a_source_down(
    tmp_path: Path, run_cli: RunCli, command: str
) -> None:
    """A typo in the dsn's port (asyncpg leaves it to the socket's OverflowError) was "source
    down" (exit 4, "rerun with --resume") though no rerun can ever connect."""
    config = write_config(
        tmp_path / "c.toml",
        model=SAMPLE_DIR / "model.txt",
        sources=[
            {
                "name": "pg",
                "kind": "postgres",
                "dsn": "postgresql://scorer:${PGPASSWORD}@127.0.0.1:99999/db",
                "table": "features",
                "key": "id",
            }
        ],
    )
    out = tmp_path / "out.csv"
    args = ["-o", out] if command == "score" else []
    secret = "s3cr3t-pa55word"
    result = run_cli(command, IDS, "-c", config, *args, env={"PGPASSWORD": secret}, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert "source 'pg': the dsn cannot be used (connect(): port must be 0-65535" in result.stderr
    assert "resume" not in result.stderr
    assert secret not in result.stderr + result.stdout.decode()
    assert not out.exists()


def test_a_ctrl_c_that_python_swallows_still_stops_a_dask_run(tmp_path: Path) -> None:
    """The same dropped Ctrl-C under ``--engine dask``: the driver's wait raises it again."""
    out = tmp_path / "scores"
    proc, _ = _with_hook(tmp_path, SIGNAL_IN_A_WEAKREF_CALLBACK, "-o", str(out), "--engine", "dask")
    _, err = _ended(proc)  # it signals itself
    assert proc.returncode == 130, err
    assert b"Traceback" not in err and b"Exception ignored" not in err, err
    assert b"stopping" in err
    assert not (out / "_SUCCESS").exists()  # stopped before the end; --resume continues it
