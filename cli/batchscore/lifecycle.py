"""One run's lifecycle, whichever engine does the work: plan, lock, run, status, summary.

:func:`run_job` is the only place a run starts and ends: the plan is made (every refusal that can
be made before work), the engine's locks taken, the engine run, the outcome turned into an exit
status, and the summary, ``--report`` and ``--metrics`` written however the run ended (a run
refused before it started included, so that a monitor never reads an older run's status).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from batchscore import idrows
from batchscore import ids as idmod
from batchscore.drift import compare
from batchscore.engines import Engine
from batchscore.errors import (
    BatchscoreError,
    ExitStatus,
    status_of,
)
from batchscore.model import ModelSet
from batchscore.plan import (
    Plan,
    done_record,
    input_path,
    make_plan,
)
from batchscore.report import (
    RunStats,
    metrics_text,
    report_body,
    summary_lines,
    write_metrics_text,
    write_report,
)
from batchscore.scoring import Environment
from batchscore.settings import Settings
from batchscore.stamps import iso_time
from batchscore.wording import counted

log = logging.getLogger("batchscore")


@dataclass(frozen=True)
class Outcome:
    """How a job ended."""

    status: ExitStatus
    stats: RunStats
    output: str


def run_job(settings: Settings, env: Environment) -> Outcome:
    """Run a scoring job and say how it ended; errors after the start are reported, then raised."""
    engine = _engine(settings)
    stats = RunStats()
    try:
        engine.refuse(settings)
        p = make_plan(settings)
    except BatchscoreError as exc:
        # Written if they can be; the refusal is what the user must see.
        _write_outcome_files(settings, stats, exc.exit_status, "", {}, ())
        raise
    work = engine.start(p, env, stats)
    # Every run that may write the output holds its lock, a no-op included: it is not "complete
    # already" while another run replaces it, and it clears a lock file that a run killed after
    # its commit left behind.
    lock = work.lock()
    if lock is not None:
        lock.acquire()
    if p.done is not None:  # --resume of a job that completed already: nothing to do
        if lock is not None:
            lock.release()
        stats.restore(p.done["counters"])
        status = judge_drift(p, stats, exit_status(None, stats, settings))
        status = _finish(p, env, stats, status, earlier=None)
        return Outcome(status, stats, p.output)
    error: BaseException | None = None
    try:
        work.run()
    except BaseException as exc:
        error = exc
    finally:
        if lock is not None:
            lock.release()
    status = judge_drift(p, stats, exit_status(error, stats, settings))
    if work.done is not None:  # the engine found the job complete (a Dask part folder)
        p = replace(p, done=work.done)
    status = _finish(p, env, stats, status, earlier=work.earlier)
    if error is not None:
        raise error
    return Outcome(status, stats, p.output)


def _engine(settings: Settings) -> Engine:
    """The engine ``--engine`` names (Dask imported only for its runs)."""
    if settings.run.engine == "dask":
        from batchscore.engines import dask

        return dask
    from batchscore.engines import local

    return local


def exit_status(error: BaseException | None, stats: RunStats, settings: Settings) -> ExitStatus:
    """The status of a run that ended with ``error`` (None: it went through): the one place an
    outcome becomes an exit status."""
    if error is None:
        ok = allowed(stats, settings.run.max_failed, settings.run.max_failed_rate)
        return ExitStatus.OK if ok else ExitStatus.PARTIAL
    return status_of(error)


def judge_drift(p: Plan, stats: RunStats, status: ExitStatus) -> ExitStatus:
    """Compare the run's distributions with ``--baseline`` (kept in ``stats.drift`` for the
    summary, report and metrics); a run that would exit 0 exits 5 when a score's PSI is above
    ``--max-drift``.  Its outputs are complete: the scores are right, the world moved."""
    if p.baseline is None or not stats.distributions:
        return status
    stats.drift = compare(stats.distributions, p.baseline)
    limit = p.settings.drift.max_psi
    score_psi = stats.drift.score_psi
    if status == ExitStatus.OK and limit is not None and (score_psi or 0.0) > limit:
        return ExitStatus.DRIFT
    return status


def _finish(
    p: Plan, env: Environment, stats: RunStats, status: ExitStatus, *, earlier: str | None
) -> ExitStatus:
    """The summary on stderr, the report and the metrics; the run's exit status (74 when a
    finished run's report or metrics cannot be written).  ``earlier``: this run found the work
    done by an earlier one (said first)."""
    settings = p.settings
    finished_earlier = earlier is not None
    started = status not in (ExitStatus.USAGE, ExitStatus.LOCKED)  # those stop before any work
    if p.done is not None and not settings.run.quiet:
        print(
            f"{p.output} is complete already (the same job finished it from the same input at "
            f"{p.done['finished']}: {stats.scored:,} scored, {stats.failed_total:,} failed); "
            "nothing to do",
            file=env.stderr,
        )
    elif started and not settings.run.quiet and status != ExitStatus.PIPE_CLOSED:
        if earlier is not None:
            print(earlier, file=env.stderr)
        for line in summary_lines(stats):
            print(line, file=env.stderr)
        complete = status in (ExitStatus.OK, ExitStatus.PARTIAL, ExitStatus.DRIFT)
        if complete and p.output != "-":
            print(f"scores written to {p.output}", file=env.stderr)
        if stats.failed_total and complete:
            where = f"see {p.errors_path}" if p.errors_path else "pass --errors PATH to keep them"
            were = "was" if stats.failed_total == 1 else "were"
            print(
                f"{counted(stats.failed_total, 'ID')} {were} not scored; {where}", file=env.stderr
            )
        header = _header_taken_for_an_id(settings, stats)
        if header is not None:
            print(
                f"batchscore: warning: line 1 {header!r} was not found and looks like a header, "
                "not an ID: pass --header to skip it (or --input-format csv for a CSV)",
                file=env.stderr,
            )
        if status == ExitStatus.OK and stats.read == 0 and not finished_earlier:
            print(
                "batchscore: warning: the input held no IDs (an empty export upstream?); "
                "pass --min-ids N to make an input with fewer than N IDs exit 2",
                file=env.stderr,
            )
    if status == ExitStatus.PARTIAL and not settings.run.quiet:
        run = settings.run
        allowance = f"--max-failed {run.max_failed}" + (
            f" / --max-failed-rate {run.max_failed_rate:g}" if run.max_failed_rate else ""
        )
        print(
            f"exit 3: {counted(stats.failed_total, 'failed ID')} "
            + ("is" if stats.failed_total == 1 else "are")
            + f" more than {allowance} allows; raise the allowance if "
            + ("it is" if stats.failed_total == 1 else "they are")
            + " expected",
            file=env.stderr,
        )
    if status == ExitStatus.DRIFT and stats.drift is not None and not settings.run.quiet:
        worst = max(stats.drift.scores, key=lambda c: c.psi)
        print(
            f"exit 5: {worst.column} moved from the baseline by PSI {worst.psi:.3f}, more than "
            f"--max-drift {settings.drift.max_psi:g}; the outputs are complete",
            file=env.stderr,
        )
    if started and settings.drift.baseline and p.baseline is None:
        print(  # also under --quiet: the comparison asked for did not happen
            f"batchscore: warning: no baseline at {settings.drift.baseline} yet (the first run "
            "of this job?); nothing compared, this run's report is the next run's baseline",
            file=env.stderr,
        )
    if started and p.unfinished:
        for day, state in p.unfinished:  # also under --quiet: work is waiting
            print(
                f"batchscore: warning: the run for {day} stopped before it finished (its state "
                f"{state} is still there); resume it with --date {day} --resume",
                file=env.stderr,
            )
    identity = {**_model_identity(p.models), "config_fingerprint": settings.fingerprint}
    unfinished = [{"date": day, "state": str(state)} for day, state in p.unfinished]
    notes = {
        **_run_facts(settings, stats, p.output, p.errors_path),
        **({"unfinished_runs": unfinished} if unfinished else {}),
    }
    features = _feature_lists(p.models)
    kept = p.done.get("monitoring") if p.done is not None else None
    noop = isinstance(kept, dict)
    if isinstance(kept, dict):  # a no-op: the figures of the run that wrote the output
        body = {**kept["report"], "noop": True, "noop_at": iso_time()}
        text = str(kept["metrics"])
    else:
        body = report_body(stats, features, status, p.run_id, identity | notes)
        text = metrics_text(stats, status, identity)
        local = settings.run.engine == "local"  # a Dask folder keeps its own record
        if p.done is None and p.resumable and settings.output.resume and local:
            done_record(p).attach({"report": body, "metrics": text})
    failures = _write_monitoring(settings, body, text, noop=noop)
    if failures and status in (ExitStatus.OK, ExitStatus.PARTIAL):
        # The output is complete, but a monitor reading the metrics would see an older run:
        # that is output that cannot be written.  What could be written says 74 too.
        status = ExitStatus.CANT_WRITE
        if not noop:
            body = report_body(stats, features, status, p.run_id, identity | notes)
            _write_monitoring(settings, body, metrics_text(stats, status, identity))
        failures = [f"{f}; the output is complete, only this file is missing" for f in failures]
    for failure in failures:
        print(f"batchscore: error: {failure}", file=env.stderr)
    return status


def _model_identity(models: ModelSet) -> dict[str, Any]:
    """The models in the report and metrics: ``model_version`` (``NAME=VERSION,...`` for named
    models: one metrics label) and, per model, its name, path and version."""
    listed = [
        {"name": m.name, "path": m.info.path, "version": m.info.version} for m in models.members
    ]
    return {"model_version": models.version_label, "models": listed}


def _feature_lists(models: ModelSet) -> list[tuple[str, tuple[str, ...]]]:
    """Each model's name and features, in its order (the report's data quality per model)."""
    return [(m.name, m.info.feature_names) for m in models.members]


def _header_taken_for_an_id(settings: Settings, stats: RunStats) -> str | None:
    """The first line of a plain text input, when it reads like a column name and no source
    found it (``cut -d, -f1 file.csv`` keeps the header): only a warning, since an ID may
    look like anything."""
    s = settings.input
    if (
        s.header is not None  # --header or --no-header: the user said what line 1 is
        or idmod.detect_format(s.path, s.format) != "text"
        or not stats.first_failures
    ):
        return None
    first = stats.first_failures[0]
    if first.line != 1 or first.reason != "not_found" or first.id is None:
        return None
    return first.id if idrows.looks_like_header(first.id, (s.id_column, s.id_field)) else None


def _write_outcome_files(
    settings: Settings,
    stats: RunStats,
    status: ExitStatus,
    run_id: str,
    identity: dict[str, Any],
    features: Sequence[tuple[str, Sequence[str]]],
    notes: dict[str, Any] | None = None,
) -> list[str]:
    """``--report`` (with ``notes``) and ``--metrics``, if asked for (see
    :func:`_write_monitoring`)."""
    facts = _run_facts(settings, stats, settings.output.path, settings.output.errors)
    body = report_body(stats, features, status, run_id, {**identity, **facts, **(notes or {})})
    return _write_monitoring(settings, body, metrics_text(stats, status, identity))


def _write_monitoring(
    settings: Settings, body: dict[str, Any], text: str, noop: bool = False
) -> list[str]:
    """Write the report ``body`` and the metrics ``text`` where the settings ask, each whatever
    became of the other; a message for each that could not be written, naming it and why."""
    failures = []
    report, metrics = settings.output.report, settings.output.metrics
    if report:
        try:
            write_report(report, body)
        except OSError as exc:
            failures.append(f"cannot write the --report file {report}: {exc.strerror or exc}")
    if metrics:
        try:
            write_metrics_text(metrics, text, noop=noop)
        except OSError as exc:
            failures.append(f"cannot write the --metrics file {metrics}: {exc.strerror or exc}")
    return failures


def _run_facts(
    settings: Settings, stats: RunStats, output: str, errors: str | None
) -> dict[str, Any]:
    """What an on-call reader of the report looks for first: which files, when, where, which
    batchscore.  Paths pass through :func:`~batchscore.redact.redact` (a URL-like path may
    hold a token)."""
    from batchscore import __version__
    from batchscore.redact import redact

    def shown(path: str) -> str:
        return redact(path if path == "-" else os.path.abspath(path))

    return {
        "input": shown(input_path(settings)),
        "output": shown(output),
        "errors": shown(errors) if errors else None,
        "started_at": iso_time(stats.started_at),
        "ended_at": iso_time(),
        "host": socket.gethostname(),
        "batchscore_version": __version__,
        "noop": False,
    }


def allowed(stats: RunStats, max_failed: int, max_failed_rate: float) -> bool:
    """Whether the failures stay within the allowance (exit 0) or not (exit 3)."""
    failed = stats.failed_total
    if failed == 0 or failed <= max_failed:
        return True
    attempted = stats.done
    return attempted > 0 and failed / attempted <= max_failed_rate
