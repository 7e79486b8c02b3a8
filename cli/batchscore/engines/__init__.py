"""The engines a run can use, peers behind one small protocol.

An engine is a module with :func:`refuse` (what it cannot do with these settings, said before
the plan is made) and :func:`start` (a run of a plan, nothing opened yet).  The lifecycle
(:mod:`batchscore.lifecycle`) picks one, takes the run's locks, runs it, and does everything
else; an engine never imports the lifecycle or another engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from batchscore.plan import Plan
    from batchscore.report import RunStats
    from batchscore.runlock import RunLock
    from batchscore.scoring import Environment
    from batchscore.settings import Settings


class EngineRun(Protocol):
    """One run of a plan on an engine."""

    earlier: str | None
    """Said before the summary when an earlier run had done the work (its files put in place)."""
    done: dict[str, Any] | None
    """The record of a completed run of the same job, when the engine (not the plan) found it."""

    def lock(self) -> RunLock | None:
        """The lock on what the run writes (taken by the lifecycle around :meth:`run`)."""
        ...

    def run(self) -> None:
        """Do the work; counts go into the run's stats, a stop is raised."""
        ...


class Engine(Protocol):
    """An engine module."""

    def refuse(self, settings: Settings) -> None:
        """Raise a UsageError for what this engine cannot do, before anything is planned."""
        ...

    def start(self, p: Plan, env: Environment, stats: RunStats) -> EngineRun:
        """A run of ``p`` (nothing opened or started yet)."""
        ...


__all__ = ["Engine", "EngineRun"]
