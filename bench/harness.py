"""Measuring machinery for ``bench/run.py``: timed child processes, the feature server, the machine.

A run is one child process, optionally pinned to CPUs with ``taskset``, timed with the wall
clock and measured with ``os.wait4`` (user and system CPU and peak RSS of that process and the
children it waited for).  The feature server (``tests/featureserver.py``) runs in its own
process; its CPU time per run is read from ``/proc``.  Another commit's batchscore runs from a
git worktree of it under ``bench/work/`` with this venv (:func:`tree_at`, :func:`revision`).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TASKSET = shutil.which("taskset")
GNU_TIME = "/usr/bin/time" if Path("/usr/bin/time").exists() else None
CLIENT_CPUS = "0"
SERVER_CPUS = "1"
# Children cache bytecode as an installed package does, even where the caller's environment
# turns that off (PYTHONDONTWRITEBYTECODE=1 would make every run recompile every import).
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


@dataclass
class Measure:
    """One timed run of a child process."""

    wall: float
    user: float
    system: float
    max_rss_mb: float
    returncode: int
    stderr_tail: str = ""
    stdout: str = ""
    server_cpu: float | None = None
    server_max_inflight: int | None = None
    inner: float | None = None  # seconds of the run proper (without start-up), if known
    main_thread_cpu: float | None = None  # CPU s of the measured process's main thread
    load: float | None = None  # 1-minute load average when the run ended (others' work shows)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu(self) -> float:
        """User + system CPU seconds of the child."""
        return self.user + self.system

    @property
    def ok(self) -> bool:
        """Whether the process exited 0."""
        return self.returncode == 0


def pinned(cmd: Sequence[str], cpus: str | None) -> list[str]:
    """``cmd`` prefixed with ``taskset -c CPUS`` (when asked for and available)."""
    if cpus is None or TASKSET is None:
        return list(cmd)
    return [TASKSET, "-c", cpus, *cmd]


def run_measured(
    cmd: Sequence[str], *, cpus: str | None, log: Path, timeout: float = 1800.0
) -> Measure:
    """Run ``cmd`` to completion (cwd = project root); time it and read its rusage.

    Peak RSS comes from GNU time (``/usr/bin/time -f %M``) when installed: the ``ru_maxrss`` of
    a process forked from this one also counts this process's pages at fork (Linux carries the
    pre-exec high-water mark over), so it would report the harness's size for small runs.
    GNU time forks the measured command from a tiny process.  Without it, ``VmHWM`` is polled.
    """
    full = pinned(cmd, cpus)
    log.parent.mkdir(parents=True, exist_ok=True)
    err_path = log.with_suffix(".stderr")
    rss_path = log.with_suffix(".rss")
    rss_path.unlink(missing_ok=True)
    if GNU_TIME is not None:
        full = [GNU_TIME, "-f", "%M", "-o", str(rss_path), *full]
    peak = [0]
    with log.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            full, cwd=ROOT, env=CHILD_ENV, stdout=out, stderr=err, stdin=subprocess.DEVNULL
        )
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        if GNU_TIME is None:
            threading.Thread(target=_poll_hwm, args=(proc.pid, peak), daemon=True).start()
        main_cpu = [0.0]
        threading.Thread(
            target=_poll_main_thread_cpu, args=(proc.pid, main_cpu), daemon=True
        ).start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    rss_kb = peak[0]
    if rss_path.exists():
        with contextlib.suppress(ValueError, IndexError):
            rss_kb = int(rss_path.read_text().split()[-1])
    stderr = err_path.read_text(errors="replace").strip().splitlines()
    return Measure(
        load=os.getloadavg()[0],
        wall=wall,
        user=usage.ru_utime,
        system=usage.ru_stime,
        max_rss_mb=rss_kb / 1024,
        returncode=proc.returncode,
        stderr_tail=" | ".join(stderr[-3:])[-400:],
        stdout=log.read_text(errors="replace")[-2000:],
        main_thread_cpu=main_cpu[0] or None,
    )


def _poll_main_thread_cpu(pid: int, cpu: list[float]) -> None:
    """Keep ``cpu[0]`` at the CPU seconds of the main thread of the measured process (the
    event loop's thread, for batchscore and the expert scripts): ``pid`` itself, or its
    child when GNU time or taskset runs it.  Polled every 20 ms until it exits."""
    tick = os.sysconf("SC_CLK_TCK")
    target = pid
    while True:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if children:  # /usr/bin/time -> (taskset execs) -> the command
                target = int(children[0])
            stat = Path(f"/proc/{target}/task/{target}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
        except (OSError, ValueError):
            return
        cpu[0] = (int(fields[11]) + int(fields[12])) / tick
        time.sleep(0.02)


def _poll_hwm(pid: int, peak: list[int]) -> None:
    """Keep ``peak[0]`` at the process's ``VmHWM`` (kB) until it exits."""
    status = Path(f"/proc/{pid}/status")
    while True:
        try:
            text = status.read_text()
        except OSError:
            return
        match = re.search(r"^VmHWM:\s*(\d+) kB", text, re.M)
        if match is None:  # a zombie: its memory is gone
            return
        peak[0] = max(peak[0], int(match.group(1)))
        time.sleep(0.01)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class FeatureServer:
    """``tests/featureserver.py`` in its own process (pinned to ``cpus`` if given)."""

    def __init__(
        self,
        db: Path,
        *,
        latency: float,
        cpus: str | None,
        per_inflight: float = 0.0,
        extra: Sequence[str] = (),
    ) -> None:
        self.cmd = [
            str(BIN / "python"),
            str(ROOT / "tests" / "featureserver.py"),
            "--db",
            str(db),
            "--table",
            "customer_features",
            "--key",
            "customer_id",
            "--port",
            "0",
            "--latency",
            str(latency),
            "--max-recorded",
            "1000",
        ]
        if per_inflight:
            self.cmd += ["--latency-per-inflight", str(per_inflight)]
        self.cmd += list(extra)  # more fault flags (bench/adaptive.py: --workers, --shed-over)
        self.cpus = cpus
        self.proc = subprocess.Popen(
            pinned(self.cmd, cpus), cwd=ROOT, env=CHILD_ENV, stdout=subprocess.PIPE, text=True
        )
        self.url = ""

    def wait_ready(self, timeout: float = 120.0) -> str:
        """Block until the server prints ``READY <url>``; return the URL."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while not self.url:
            line = self.proc.stdout.readline()
            if line.startswith("READY "):
                self.url = line.split()[1]
            elif not line and self.proc.poll() is not None:
                raise RuntimeError(f"feature server exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("feature server did not become ready")
        return self.url

    @property
    def command(self) -> str:
        """The server's command line, relative to the project root."""
        return display(pinned(self.cmd, self.cpus))

    def cpu(self) -> float:
        """CPU seconds the server has used so far."""
        return process_cpu(self.proc.pid)

    def reset(self) -> None:
        """Clear the server's statistics (``POST /_reset``)."""
        request = urllib.request.Request(self.url + "/_reset", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def stats(self) -> dict[str, Any]:
        """``GET /_stats?brief=1``."""
        with urllib.request.urlopen(self.url + "/_stats?brief=1", timeout=10) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    def stop(self) -> None:
        """SIGTERM, then wait."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_against(
    server: FeatureServer, cmd: Sequence[str], *, cpus: str | None, log: Path
) -> Measure:
    """``run_measured`` plus the server's CPU time and peak requests in flight for the run."""
    server.reset()
    before = server.cpu()
    measure = run_measured(cmd, cpus=cpus, log=log)
    measure.server_cpu = server.cpu() - before
    with contextlib.suppress(OSError, ValueError):
        measure.server_max_inflight = int(server.stats()["max_inflight"])
    return measure


def display(cmd: Sequence[str]) -> str:
    """A command line with the project root and the venv shortened, for the report."""
    text = shlex.join(cmd)
    text = text.replace(str(BIN) + "/", ".venv/bin/")
    text = text.replace(str(ROOT) + "/", "")
    return re.sub(r"http://127\.0\.0\.1:\d+", "http://127.0.0.1:PORT", text)


def git(*args: str, cwd: Path = ROOT) -> str:
    """``git ARGS`` in ``cwd``: its stdout, stripped ("" if it failed)."""
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def tree_at(rev: str) -> Path:
    """A git worktree of commit ``rev`` at ``bench/work/rev-COMMIT`` (gitignored), made once
    and reused; ``RuntimeError`` if ``rev`` is no commit or the folder holds another one."""
    commit = git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if not commit:
        raise RuntimeError(f"{rev!r} is not a commit of {ROOT}")
    tree = ROOT / "bench" / "work" / f"rev-{commit[:10]}"
    if not tree.exists():
        tree.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), commit],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"git worktree add {tree} failed: {done.stderr.strip()}")
    if git("rev-parse", "HEAD", cwd=tree) != commit:
        raise RuntimeError(f"{tree} is not at {commit}: remove it (git worktree remove)")
    return tree


def revision(tree: Path) -> list[str]:
    """The command prefix that runs ``tree``'s batchscore with this venv: ``env
    PYTHONPATH=TREE/cli`` before ``.venv/bin/batchscore`` (the console script imports the
    package its path finds first)."""
    return [shutil.which("env") or "/usr/bin/env", f"PYTHONPATH={tree / 'cli'}"]


def batchscore_code(prefix: Sequence[str] = ()) -> tuple[Path, str]:
    """The ``batchscore`` package that ``PREFIX python`` imports, byte-compiled now (so no
    timed run compiles it), and a line naming it with its commit for the report."""
    probe = (
        "import compileall, os, batchscore; d = os.path.dirname(batchscore.__file__); "
        "compileall.compile_dir(d, quiet=1); print(d)"
    )
    found = subprocess.run(
        [*prefix, str(BIN / "python"), "-c", probe],
        cwd=ROOT,
        env=CHILD_ENV,
        capture_output=True,
        text=True,
        check=True,
    )
    package = Path(found.stdout.strip().splitlines()[-1])
    commit = git("rev-parse", "--short", "HEAD", cwd=package) or "unknown"
    dirty = (
        " (with uncommitted changes)"
        if git("status", "--porcelain", "--", ".", cwd=package)
        else ""
    )
    return package, f"`{package}`, commit {commit}{dirty}"


def machine() -> dict[str, str]:
    """What the results were measured on."""
    info: dict[str, str] = {"nproc": str(os.cpu_count())}
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    info["cpu"] = model.group(1).strip() if model else platform.processor() or "unknown"
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    total = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.M)
    info["memory"] = f"{int(total.group(1)) / 1024 / 1024:.1f} GiB" if total else "unknown"
    info["kernel"] = platform.release()
    hypervisor = "hypervisor" in cpuinfo
    info["virtualised"] = "yes" if hypervisor else "no"
    info["python"] = platform.python_version()
    versions = []
    for name in (
        "batchscore",
        "lightgbm",
        "numpy",
        "aiohttp",
        "httpx",
        "httpx-aiohttp",
        "orjson",
        "aiosqlite",
        "typer",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{name} {metadata.version(name)}")
    info["packages"] = ", ".join(versions)
    import sqlite3

    info["sqlite"] = sqlite3.sqlite_version
    info["taskset"] = TASKSET or "not available (no pinning)"
    hyperfine = shutil.which("hyperfine")
    if hyperfine:
        out = subprocess.run([hyperfine, "--version"], capture_output=True, text=True, check=False)
        info["hyperfine"] = out.stdout.strip()
    else:
        info["hyperfine"] = "not available (repeated timing instead)"
    info["git"] = (git("rev-parse", "--short", "HEAD") or "unknown") + (
        " (with uncommitted changes in cli/)" if git("status", "--porcelain", "--", "cli") else ""
    )
    return info
