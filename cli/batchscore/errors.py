"""The errors batchscore raises, each carrying its exit status and a one-line message.

The core raises these; only :mod:`batchscore.app` turns them into an exit status and a
message on stderr.  A message says what went wrong and what to do, in one line.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable
from typing import NoReturn

from batchscore.wording import counted


class ExitStatus(enum.IntEnum):
    """Exit statuses, as SPEC.md lists them."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    PARTIAL = 3
    STOPPED = 4
    DRIFT = 5  # complete outputs, but the scores moved beyond --max-drift
    CANT_WRITE = 74
    LOCKED = 75
    SIGINT = 130
    SIGTERM = 143
    PIPE_CLOSED = 141


def signal_status(signum: int) -> ExitStatus:
    """The exit status of a run stopped by ``signum`` (SIGINT or SIGTERM)."""
    import signal

    return ExitStatus.SIGINT if signum == signal.SIGINT else ExitStatus.SIGTERM


class BatchscoreError(Exception):
    """Base of every error that batchscore reports to its user without a traceback."""

    exit_status: ExitStatus = ExitStatus.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(BatchscoreError):
    """A bad flag or argument."""

    exit_status = ExitStatus.USAGE


class ConfigError(UsageError):
    """A config file, environment variable or flag value that cannot be used."""


class ModelError(UsageError):
    """The model file is missing, corrupt, a pickle, or does not fit the sources."""


class OutputExistsError(UsageError):
    """The output exists and ``--overwrite`` was not given."""


class LeftoverStateError(UsageError):
    """A stopped run left state behind and neither ``--resume`` nor ``--overwrite`` was given."""


class SourceDownError(BatchscoreError):
    """A source failed every request for a sustained stretch, or rejected our credentials."""

    exit_status = ExitStatus.STOPPED
    problem: str | None = None  # what ``batchscore check`` shows beside the source, if set


class OutputWriteError(BatchscoreError):
    """The output cannot be written: disk full, permission denied."""

    exit_status = ExitStatus.CANT_WRITE


class LockedError(BatchscoreError):
    """Another run holds the output."""

    exit_status = ExitStatus.LOCKED


class PipeClosedError(BatchscoreError):
    """The reader of stdout went away."""

    exit_status = ExitStatus.PIPE_CLOSED


class InterruptedRun(BatchscoreError):
    """SIGINT or SIGTERM stopped the run; what was committed stays resumable."""

    def __init__(self, sig: int, done: int, outcome: str | None = None) -> None:
        """``outcome``: what is kept and what ``--resume`` does, when the engine says more
        than the IDs done (a Dask run keeps whole parts)."""
        self.exit_status = signal_status(sig)
        name = "SIGINT" if self.exit_status == ExitStatus.SIGINT else "SIGTERM"
        super().__init__(
            f"stopped by {name}: {outcome}"
            if outcome
            else f"stopped by {name} after {counted(done, 'ID')}; rerun the same command with "
            "--resume to finish"
        )


class Terminated(BaseException):
    """SIGTERM arrived before the pipeline's own handler was installed.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` swallows it.
    """


EARLY_STOPS: list[int] = []
"""SIGINT/SIGTERM that came before a run's loop took the signals (their handlers raise), not
yet acted on.  Python drops an exception raised inside a weakref callback or ``__del__`` (an
import's module lock has one): "Exception ignored ... KeyboardInterrupt", and the run went on
(found by the kill-and-resume campaign, seed 29).  Read through :func:`swallowed_signal`."""


def stop_early(signum: int, exc: BaseException) -> NoReturn:
    """The handler of SIGINT and SIGTERM until a run's loop takes them: remember the signal
    (in case Python swallows the exception), then raise ``exc``."""
    EARLY_STOPS.append(signum)
    raise exc


def swallowed_signal() -> int | None:
    """The signal of a stop that Python swallowed, once (it is forgotten then); None when
    there is none.  A local run's Stopper acts on it as it is installed."""
    if not EARLY_STOPS:
        return None
    signum = EARLY_STOPS[-1]
    EARLY_STOPS.clear()
    return signum


def swallowed_stop() -> BaseException | None:
    """The exception of a stop that Python swallowed, to raise again where it is safe (the
    Dask driver's wait), once; None when there is none."""
    signum = swallowed_signal()
    if signum is None:
        return None
    return KeyboardInterrupt() if signal_status(signum) == ExitStatus.SIGINT else Terminated(signum)


def quiet_unraisable(
    previous: Callable[[sys.UnraisableHookArgs], object],
) -> Callable[[sys.UnraisableHookArgs], object]:
    """An unraisable hook that says nothing of a stop's exception that Python swallowed (the
    run acts on :data:`EARLY_STOPS`); anything else goes to ``previous``."""

    def hook(unraisable: sys.UnraisableHookArgs) -> object:
        if EARLY_STOPS and isinstance(unraisable.exc_value, KeyboardInterrupt | Terminated):
            return None
        return previous(unraisable)

    return hook


def stopping_signal(error: BaseException) -> ExitStatus | None:
    """The signal status (130, 143) when ``error`` is a Ctrl-C or SIGTERM, or was caused by one.

    A signal's exception raised inside Python's own machinery can come out wrapped: during a
    lazy import, ``type.__new__`` turns it into ``RuntimeError: Error calling __set_name__``
    with the signal's exception as its cause.  That is a stop, not a bug.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, KeyboardInterrupt):
            return ExitStatus.SIGINT
        if isinstance(current, Terminated):
            return ExitStatus.SIGTERM
        current = current.__cause__ or current.__context__
    return None


def status_of(error: BaseException) -> ExitStatus:
    """The exit status a run stopped by ``error`` ends with: its own for batchscore's errors,
    130/143 for a signal that arrived before the run's handlers (wrapped or not), 1 (a bug) for
    anything else."""
    if isinstance(error, BatchscoreError):
        return error.exit_status
    return stopping_signal(error) or ExitStatus.INTERNAL


def with_status(message: str, status: int) -> BatchscoreError:
    """An error carrying a status decided elsewhere (a Dask partition's, raised on the driver)."""
    error = BatchscoreError(message)
    error.exit_status = ExitStatus(status)
    return error
