"""The Dask cluster of a run: a local one started for it, or ``--scheduler``'s, probed first;
and what its workers are given (settings without secrets they would not need ...).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from dataclasses import replace
from typing import Any

from batchscore.errors import InterruptedRun, UsageError
from batchscore.settings import Settings
from batchscore.signals import leave_on_second_signal, signals_deferred
from batchscore.sources.configs import with_absolute_paths

PROBE_TIMEOUT = 5.0
"""Seconds a TCP connection to ``--scheduler`` may take before it is unreachable (exit 2)."""


class Cluster:
    """The Dask client, and the local cluster it runs on when no ``--scheduler`` is given."""

    def __init__(self, settings: Settings, *, handle_signals: bool = False) -> None:
        self.settings = settings
        self.handle_signals = handle_signals  # the command's own: signals may be deferred
        self.client: Any = None
        self._cluster: Any = None
        self._workers = 0
        self._asked = 0.0

    @property
    def local(self) -> bool:
        """Whether the cluster is this run's own (stopped with it)."""
        return self._cluster is not None

    def start(self) -> None:
        from distributed import Client, LocalCluster

        run = self.settings.run
        # Dask's own lines (scheduler started, "Worker process still alive after 4.0 seconds,
        # killing" as the cluster closes) are its news, not this run's: shown with --debug.
        # A lost worker costs nothing but time: its partition runs again, its part written once.
        # Every one of their loggers: distributed's own config gives some a level of their
        # own (distributed.client: warning), which a level on "distributed" does not reach;
        # under load "Couldn't gather keys ... rescheduling" (ERROR, then WARNING) is only a
        # retry that the run's own summary accounts for.
        level = logging.DEBUG if run.debug else logging.CRITICAL
        for name in ["distributed", "dask", *logging.root.manager.loggerDict]:
            if name.partition(".")[0] in ("distributed", "dask"):
                logging.getLogger(name).setLevel(level)
        address = run.scheduler
        if address is None:
            # One single-threaded worker process per core: a task runs its own event loop and
            # scores on its own thread, so a process per core uses every core without threads
            # of one process fighting over its GIL.
            with signals_deferred(self.handle_signals) as received:
                try:
                    self._cluster = LocalCluster(  # type: ignore[no-untyped-call]
                        n_workers=os.cpu_count() or 1,
                        threads_per_worker=1,
                        processes=True,
                        dashboard_address=None,
                        # Its HTTP routes (health, metrics) on a free loopback port: with
                        # Dask's 8787 taken (another run) it warned in four lines.
                        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                        # The workers' own lines (a heartbeat cut short as the cluster closes).
                        silence_logs=logging.DEBUG if run.debug else logging.CRITICAL,
                        # Workers leave a terminal's Ctrl-C to the driver (dask_setup).
                        preload=["batchscore.engines.dask.task"],
                    )
                    self.client = Client(self._cluster)  # type: ignore[no-untyped-call]
                except Exception:
                    if not received:
                        raise
                    # A Ctrl-C at a terminal reaches the worker processes too: one that died
                    # of it as it started fails the cluster's start, which the signal explains.
            if received:  # the caller closes the cluster (whole, or none)
                leave_on_second_signal()
                raise InterruptedRun(received[0], 0)
            return
        _probe_scheduler(address)
        try:
            self.client = Client(address, timeout=30)  # type: ignore[no-untyped-call]
        except (OSError, TimeoutError, ValueError) as exc:
            raise UsageError(
                f"cannot reach the Dask scheduler at {address} ({exc}); start it "
                "(dask scheduler) or fix --scheduler"
            ) from None

    def workers(self) -> int:
        """Workers in the cluster now (asked of the scheduler at most once a second)."""
        now = time.monotonic()
        if self.client is not None and now - self._asked > 1.0:
            self._asked = now
            with contextlib.suppress(Exception):
                self._workers = len(self.client.scheduler_info()["workers"])
        return self._workers

    def close(self) -> None:
        """Leave an existing cluster running; stop a local one (its workers with it)."""
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                self._cluster.close()


def _probe_scheduler(address: str) -> None:
    """A scheduler address nothing listens on is said at once: Dask's Client retries a
    refused connection until its timeout (30 s), a long wait for a typo in --scheduler."""
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme not in ("tcp", "tls"):
            return
        host, port = parse_host_port(location)
    except (ValueError, TypeError):
        return  # Dask's Client says what is wrong with the address
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT):
            pass
    except OSError as exc:
        raise UsageError(
            f"cannot reach the Dask scheduler at {address} ({exc.strerror or exc}); start it "
            "(dask scheduler) or fix --scheduler"
        ) from None


def for_workers(settings: Settings) -> Settings:
    """The settings a worker needs: paths absolute (workers may run elsewhere), one LightGBM
    thread per predict unless --threads says (a worker process per core already uses them)."""
    sources = tuple(with_absolute_paths(config) for config in settings.sources)
    threads = 1 if settings.score.threads is None else settings.score.threads
    return replace(settings, sources=sources, score=replace(settings.score, threads=threads))


def allowed_failures() -> int:
    import dask

    return int(dask.config.get("distributed.scheduler.allowed-failures"))


__all__ = ["Cluster", "allowed_failures", "for_workers"]
