"""How a run ended, told: its statistics, its final Prefect state and message, one per outcome.

The outcome itself (exit code, state type and name) is defined once in flows/run_loop/outcomes.py;
this module decides which outcome a run's end is and words it, with the campaign's totals. A run
that did not complete returns its stats inside a `RunEnded` (the state's result), so a script
calling `run_jobs()` gets them with the exception.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Dict

from flows.report.reporting import failed_rows, merge_request_counts
from flows.run_loop.outcomes import RunOutcome
from jobdb import JobDbLocked
from jobdb.status import CREATED, CREATING, FAILED, HOLDS_SLOT, POSTPROCESS_FAILED

if TYPE_CHECKING:
    from prefect.states import State

    from flows.config.prepare import PreparedRun
    from flows.run_loop.cycle import CycleEnd


class RunEnded(Exception):
    """A run that did not complete; `stats` says how far it went."""

    def __init__(self, message: str, stats: Dict[str, Any]):
        super().__init__(message)
        self.stats = stats


class RunFailed(RunEnded):
    """The run ended Failed: more rows failed than `failure_threshold` allows."""


class RunInterrupted(RunEnded):
    """The run was interrupted (Ctrl-C / SIGTERM); the same call resumes it."""


def final_state(run: "PreparedRun", end: "CycleEnd", stats: Dict[str, Any], threshold: float,
                logger) -> "State":
    """One state per outcome (flows/run_loop/outcomes.py). The threshold judges the rows this run worked on
    (a pass that only looks at old failures is not a failed pass); the message gives the campaign's
    totals too."""
    counts = stats["status"]
    active = sum(counts.get(s, 0) for s in HOLDS_SLOT)
    left = stats["rows"] - stats["terminal"]
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))  # "9 finished, 2 error"
    failed, worked = stats["failed_this_run"], stats["worked_this_run"]
    retry = " (rerun with --retry-failed / retry_failed=True to retry them)" if failed else ""
    if end.reason == "interrupted":
        outcome = RunOutcome.INTERRUPTED
        ahead = counts.get(CREATED, 0)  # created ahead of a free slot: on the backend, not running
        creating = counts.get(CREATING, 0)  # no job id yet: the resume adopts the job or creates it, once
        waiting = "".join(text for n, text in ((ahead, f", {ahead} created and not started"),
                                                (creating, f", {creating} being created")) if n)
        message = (f"interrupted: {active - ahead - creating} jobs still running on backends{waiting}; run the same "
                   f"command again to resume ({stats['rows']} rows: {summary})")
    elif failed > threshold * worked:
        outcome = RunOutcome.FAILED
        hooks = f", {stats['hook_failures']} of them in a hook" if stats.get("hook_failures") else ""
        message = (f"{failed} of {worked} rows failed in this run{hooks} (allowed: {threshold:.0%}){retry}; "
                   f"campaign: {summary}")
    elif left:
        outcome = RunOutcome.WORK_LEFT
        if end.refused or end.halted:
            why = "; ".join(f"backends {kind} ({'; '.join(f'{n}: {w}' for n, w in stopped.items())})"
                            for kind, stopped in (("refused new jobs", end.refused),
                                                  ("stopped after repeated failures", end.halted)) if stopped)
        elif end.reason == "time_up":
            why = "time is up"
        else:
            why = "rows remain"
        message = f"{why}: {left} rows left; run again to continue; campaign: {summary}"
    else:
        outcome = RunOutcome.DONE
        message = f"run finished in {stats['elapsed_seconds']:.1f} s: {summary}"
        if counts_failed(counts):
            message += " (earlier failures: rerun with --retry-failed / retry_failed=True to retry them)"
    stats.update(outcome=outcome.name.lower(), exit_code=outcome.exit_code)
    log = {RunOutcome.DONE: logger.info, RunOutcome.WORK_LEFT: logger.warning}.get(outcome, logger.error)
    (logger.warning if outcome is RunOutcome.INTERRUPTED else log)(message)
    data = {RunOutcome.INTERRUPTED: RunInterrupted, RunOutcome.FAILED: RunFailed}.get(outcome)
    return outcome.state(message, data(message, stats) if data else stats)


def counts_failed(counts: Dict[str, int]) -> int:
    return sum(counts.get(s, 0) for s in FAILED)


def skipped_state(run: "PreparedRun", exc: JobDbLocked, logger) -> "State":
    """Another live run owns the job DB: this run changes nothing and ends Completed "Skipped" (a
    schedule firing while a long pass goes on is no failure)."""
    message = f"skipped: {exc.describe()}"
    logger.warning(message)
    snapshot = run.store.snapshot()
    stats = {"job_db": str(run.store.path), "rows": snapshot.rows, "terminal": snapshot.terminal,
             "status": dict(sorted(snapshot.counts.items())), "ended": "skipped", "outcome": "skipped",
             "exit_code": RunOutcome.SKIPPED.exit_code, "holder": exc.holder, "message": message}
    return RunOutcome.SKIPPED.state(message, stats)


def build_stats(run: "PreparedRun", end: "CycleEnd", counters: Dict[str, int], t0: float) -> Dict[str, Any]:
    snapshot = run.store.snapshot()
    requests_by_backend = {n: dict(c.request_counts) for n, c in run.connections.items()}
    return {
        "job_db": run.store.name,
        "campaign": getattr(run.store, "campaign", None),
        "rows": snapshot.rows,
        "terminal": snapshot.terminal,
        "status": dict(sorted(snapshot.counts.items())),
        "by_backend": run.store.status_by_backend(),
        "failures": failed_rows(run.store.dataframe())[:50],
        "ended": end.reason,
        "refused_backends": end.refused,
        "requests": requests_by_backend,
        "requests_by_route": merge_request_counts(requests_by_backend.values()),
        "requests_total": int(sum(sum(c.values()) for c in requests_by_backend.values())),
        "elapsed_seconds": round(time.monotonic() - t0, 3),
        "time_to_all_started_seconds": None if end.all_started_at is None else round(end.all_started_at, 3),
        "cycles": end.cycles,
        "persists": run.store.persist_count,
        "halted_backends": end.halted,
        "worked_this_run": len(end.worked),
        "failed_this_run": len(end.failed),
        "hook_failures": sum(1 for row in end.failed if run.store.value(row, "postprocess_status") == POSTPROCESS_FAILED),
        **counters,
    }
