"""The run-jobs flow: drive every row of a job DB through an openEO batch job.

Fan-out/fan-in: the flow alone owns the job DB. It validates and connects before any job is
created (`prepare`), takes the DB's lock, runs the cycle (flows/run_loop/cycle.py) with job slots shared
with other runs of the same accounts (tasks/accounts/slots.py), then reports. Its final state says
how the run went, one per outcome (flows/run_loop/outcomes.py): Completed, Failed, Completed "Incomplete"
(work left: run again), Completed "Skipped" (another run owns the DB), Cancelled (interrupted).
"""
from __future__ import annotations

if __name__ == "__main__":  # `python -m flows.run_jobs`: the package's command line (flows/__main__.py),
    # which checks the input before Prefect is imported and imports this module once, by its name.
    # Run as a module, not imported: the command line imports the flow, never the other way round.
    import runpy

    runpy.run_module("flows", run_name="__main__", alter_sys=True)

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Union

from prefect import flow, get_run_logger
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.results.credentials import StorageBlockError, check_writable, results_root_url
from tasks.results.run_results import RunResults
from tasks.accounts.slots import AccountSlots
from flows.run_loop.background import BackgroundPublisher
from flows.config.blocks import resolve_backend
from flows.config.limits import FIRST_READ_SECONDS, LimitOverrides, campaign_tags, pace_starts, tag_flow_run, task_tags
from flows.run_loop.cycle import Cycle, CycleEnd, CycleOptions
from flows.run_loop.interrupts import (StopSignal, catch_interrupts, exit_without_final_collection, heartbeat_stopper,
                                      watch_for_cancel)
from flows.run_loop.outcomes import RunOutcome
from flows.run_loop.owners import (ApiGoneAware, api_went_with_the_stop, fail_fast_without_api, record_unrecorded_end,
                                   settle_previous_owner)
from flows.run_loop.dispatcher import Dispatcher
from flows.run_loop.events import JobEvents
from flows.config.params import BackendConfig, ProcessCreatorConfig, SetupError, check_unique_names
from flows.config.run_parameters import RunParameters, takes_run_parameters
from flows.console.progress_display import current_display
from flows.report.reporting import ProgressReport, failed_rows, merge_request_counts, publish_final_artifacts
from flows.rules.plan import BackendPolicy
from flows.config.setup import (
    check_process_parameters,
    check_row_backends,
    connect_backend,
    load_start_job,
    make_process_creator,
)
from flows.report.tile_map import write_tile_map
from jobdb import JobDbError, JobDbLocked
from jobdb.status import CREATED, FAILED, HOLDS_SLOT, POSTPROCESS_FAILED
from jobdb.interface import CampaignStore, open_store
from jobdb.location import is_sql
from tasks.connection_registry import connection_key, register_connection, unregister_connection
from tasks.connections import ManagedConnection
from tasks.callables import load_hook
from tasks.health import describe_change
from tasks.retry_policy import unanswered_create_grace

# Polls, reconciles, downloads and error logs run on the flow's task runner with this many threads.
FLOW_TASK_WORKERS = 8
# Renew basic/OIDC access tokens this often, before they expire (expired ones are renewed on 403 too).
TOKEN_REFRESH_SECONDS = 30 * 60.0


class RunEnded(Exception):
    """A run that did not complete; `stats` says how far it went."""

    def __init__(self, message: str, stats: Dict[str, Any]):
        super().__init__(message)
        self.stats = stats


class RunFailed(RunEnded):
    """The run ended Failed: more rows failed than `failure_threshold` allows."""


class RunInterrupted(RunEnded):
    """The run was interrupted (Ctrl-C / SIGTERM); the same call resumes it."""


# An interrupted run waits this long for its last artifacts to reach Prefect (the stop takes <= 3 s).
INTERRUPTED_API_WAIT_SECONDS = 0.5
CRASHED_API_WAIT_SECONDS = 5.0  # a run that failed sends what it queued for Prefect (events, artifacts)


@dataclass
class PreparedRun:
    store: CampaignStore
    backends: Dict[str, BackendConfig]
    connections: Dict[str, ManagedConnection]
    creator: Callable[..., Any]
    root_dir: str  # a local folder or an fsspec URL (s3://bucket/prefix)
    hooks: Dict[str, str]  # "done" / "error" -> import path
    limit_sources: Dict[str, str] = field(default_factory=dict)  # backend -> "parameter" / "block <name>"


@flow(name="run-jobs", task_runner=ThreadPoolTaskRunner(max_workers=FLOW_TASK_WORKERS), log_prints=True,
      description="Create, start, poll and download one openEO batch job per job DB row until all are done.")
@takes_run_parameters
def run_jobs(**parameters: Any) -> State:
    """Create, start, poll and download one openEO batch job per job DB row until all are done.

    The parameters are `flows/config/run_parameters.py: RunParameters` (this function's signature,
    the deployment form, the preflight and the command line's flags all come from there).
    """
    params = RunParameters.model_validate(parameters)  # Prefect validated them; this adds the defaults
    logger = get_run_logger()
    t0 = time.monotonic()
    run = prepare(params.job_db, params.backends, params.start_job, params.process, params.root_dir,
                  {"done": params.on_job_done, "error": params.on_job_error}, campaign=params.campaign,
                  results_storage_block=params.results_storage_block)
    flow_run_id = current_flow_run_id()

    def tell_waiting(exc: JobDbLocked) -> None:
        logger.warning("%s; waiting for it (wait_for_lock)", exc.describe().split("; wait")[0])

    asked = time.monotonic()
    try:
        run.store.lock.acquire(flow_run_id, wait_seconds=float("inf") if params.wait_for_lock else 0.0,
                               on_wait=tell_waiting)
    except JobDbLocked as exc:
        return skipped_state(run, exc, logger)
    waited = time.monotonic() - asked
    if waited >= 1.0:
        logger.info("the job DB is ours after waiting %.0f s for the other run", waited)
    end: Optional[CycleEnd] = None
    api_gone = False  # interrupted together with its Prefect API (a script's temporary server)
    try:
        settle_previous_owner(run.store.lock.previous_holder, flow_run_id, str(run.store.path), logger)
        run.store.reload()  # as the lock's last holder left it (prepare read it before the lock was ours)
        if params.retry_failed:
            retried = run.store.retry_failed_rows()
            logger.info("retry_failed: %d failed rows put back to not_started", retried)
        # The run's own time (elapsed, rate, max_runtime_minutes) leaves out the wait for the lock.
        end, stats = drive(run, logger, flow_run_id, t0 + waited, params)
        stats["lock_wait_seconds"] = round(waited, 3)
        state = final_state(run, end, stats, params.failure_threshold, logger)
        if end.reason == "interrupted":
            exit_without_final_collection()
        api_gone = end.reason == "interrupted" and api_went_with_the_stop()
        if api_gone:
            fail_fast_without_api(logger, state)
    finally:
        run.store.persist(force=True)
        unrecorded = record_unrecorded_end(end, flow_run_id) if api_gone else None
        run.store.lock.release(leave_note=unrecorded)
    return state


class RunJobsFlow(ApiGoneAware, type(run_jobs)):
    """The run-jobs flow object: the Prefect Flow `@flow` built, plus flows/owners.ApiGoneAware."""


run_jobs = ApiGoneAware.around(run_jobs, RunJobsFlow)


def drive(run: PreparedRun, logger, flow_run_id: Optional[str], t0: float,
          params: RunParameters) -> tuple[CycleEnd, Dict[str, Any]]:
    run_key = uuid.uuid4().hex[:12]
    keys = {name: connection_key(run_key, name) for name in run.backends}
    for name, connection in run.connections.items():
        register_connection(keys[name], connection)
        connection.health.name = name
        connection.health.listen(lambda change, health: logger.warning(describe_change(change, health)))
    slots = account_slots(run, run_key, flow_run_id)
    restore_start_turns = share_start_turns(run)
    publisher = BackgroundPublisher(logger)
    progress = publisher.call(lambda: ProgressReport(run.store.path))
    if flow_run_id:
        campaign = getattr(run.store, "campaign", None) or run.store.path.stem
        publisher.call(lambda: tag_flow_run(flow_run_id, campaign_tags(campaign)))
    display = current_display(logger)

    def on_progress(snapshot) -> None:
        by_backend, elapsed = run.store.status_by_backend(), time.monotonic() - t0
        down = {n: since for n, c in run.connections.items() if (since := c.health.down_since()) is not None}
        display.waiting_for_slots(slots.waiting_by_backend())
        display.update(by_backend, snapshot.rows, elapsed, down)
        limits = overrides.describe()
        publisher.submit("progress", lambda: progress.result().update(by_backend, snapshot.rows, elapsed, down, limits))

    stop = StopSignal()
    stop.wakers.append(heartbeat_stopper(flow_run_id))  # Prefect joins its heartbeat thread at the end: up to 1 s
    end_cancel_watch = watch_for_cancel(stop, flow_run_id)
    max_attempts, max_start_workers = params.max_attempts, params.max_start_workers
    options = CycleOptions(
        poll_interval=params.poll_interval_seconds, download=params.download_results,
        cancel_after=params.cancel_running_job_after,
        deadline=t0 + 60.0 * params.max_runtime_minutes if params.max_runtime_minutes else None,
        hooks=frozenset(run.hooks), max_attempts=max_attempts,
        max_consecutive_failures=params.max_consecutive_failures,
    )
    run.store.track_hooks = bool(run.hooks)
    run.store.track_retries = max_attempts > 1
    run.store.track_downloads = params.download_results
    run.store.max_attempts = max_attempts

    events = JobEvents(publisher, str(run.store.path))

    def on_change(row: int, old: str, new: str) -> None:
        reason = run.store.value(row, "error_message") if new in FAILED else None
        events.changed(new, run.store.value(row, "id"), run.store.value(row, "backend_name") or "", row,
                       run.store.label(row), reason)

    policies = {n: BackendPolicy(b.parallel_jobs, b.max_parallel_starts, create_ahead=b.jobs_created_ahead,
                                 create_grace=unanswered_create_grace(run.connections[n].default_timeout))
                for n, b in run.backends.items()}
    run.store.retry_failed_downloads()
    if run.hooks:
        run.store.retry_failed_hooks()  # a hook fixed since the last run runs again where it failed
    results = RunResults(run.root_dir, run.store.dataframe, run.store.row, run.store.name, logger,
                         campaign=run.store.campaign)
    results.start()
    overrides = LimitOverrides(run.backends, run.limit_sources, params.poll_interval_seconds, logger,
                               on_rate=pace_starts(run.connections))
    try:
        with ThreadPoolTaskRunner(max_workers=max_start_workers) as start_runner, \
                ThreadPoolTaskRunner(max_workers=create_workers(run.backends.values(), max_start_workers)) as create_runner, \
                catch_interrupts(stop):
            dispatcher = Dispatcher(keys, run.creator, run.root_dir, start_runner, max_start_workers,
                                    FLOW_TASK_WORKERS, run.store.row, run.store.label, TOKEN_REFRESH_SECONDS,
                                    hooks=run.hooks, footprint=results.footprint, collection_id=results.collection_id,
                                    tags={n: task_tags(n, c.account) for n, c in run.connections.items()},
                                    create_runner=create_runner)
            overrides.on_change = dispatcher.wake  # a changed limit: decide again now
            overrides.wait_first_read(FIRST_READ_SECONDS)  # a campaign resumed under an override obeys it at once
            cycle = Cycle(run.store, policies, dispatcher, options, logger, slots=slots, stop=stop,
                          on_progress=on_progress, on_change=on_change, on_downloaded=results.on_downloaded,
                          limits=overrides.policies)
            try:
                end = cycle.run()
            finally:
                display.close()
                run.store.persist(force=True)
                dispatcher.stop()
                dispatcher.close()
    except BaseException:
        publisher.close(timeout=CRASHED_API_WAIT_SECONDS)  # the events of the last changes still go out
        raise
    finally:
        overrides.close()
        end_cancel_watch()
        slots.close()
        restore_start_turns()
        results.close()
        for key in keys.values():
            unregister_connection(key)
        for connection in run.connections.values():
            connection.health.listen(None)
    stats = build_stats(run, end, dispatcher.counters, t0)
    stats.update(results.where())
    stats["limits"] = overrides.as_stats()
    interrupted = end.reason == "interrupted"
    if not interrupted:  # an interrupted run ends in seconds; the next run draws the map
        stats["tile_map"] = write_tile_map(run.store.dataframe(), run.store.path, maps_root=run.root_dir)
    publisher.call(lambda: publish_final_artifacts(run.store.path, run.store.dataframe(), stats,
                                                   failed_rows(run.store.dataframe())))
    publisher.close(timeout=INTERRUPTED_API_WAIT_SECONDS if interrupted else 15.0)
    return end, stats


def create_workers(backends, max_start_workers: int) -> int:
    """Create tasks at once: the slots to fill follow the backends, so `max_start_workers` per
    backend, or its `max_concurrent_requests` where that is lower (more would only wait)."""
    return sum(min(max_start_workers, b.max_concurrent_requests or max_start_workers) for b in backends)


def account_slots(run: PreparedRun, run_key: str, flow_run_id: Optional[str]):
    """Job slots shared with the other runs of the same accounts: through the database for a SQL
    job DB (runs on any machine), through the flock ledger on this machine for a file."""
    accounts = {name: connection.account for name, connection in run.connections.items()}
    limits = {name: backend.parallel_jobs for name, backend in run.backends.items()}
    if is_sql(run.store.name):
        from jobdb.sql.slots import SqlAccountSlots

        # Waiting rows enough for every slot and every job created ahead at once: a run starts at most
        # as many jobs per cycle as it holds waiting rows (the ramp-up, and the refill as jobs end).
        run.store.waiting_batch = max(run.store.waiting_batch, sum(
            b.parallel_jobs + b.jobs_created_ahead for b in run.backends.values()))
        return SqlAccountSlots(run.store, accounts, limits=limits)
    return AccountSlots(accounts, run_key, note={"flow_run_id": flow_run_id, "job_db": str(run.store.path)},
                        limits=limits)


def share_start_turns(run: PreparedRun) -> Callable[[], None]:
    """For a SQL job DB, `max_starts_per_minute` turns come from the database while this run runs."""
    if not is_sql(run.store.name):
        return lambda: None
    from jobdb.sql.slots import share_start_turns as from_the_store

    return from_the_store(run.store, run.connections.values())


def final_state(run: PreparedRun, end: CycleEnd, stats: Dict[str, Any], threshold: float, logger) -> State:
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
        waiting = f", {ahead} created and not started" if ahead else ""
        message = (f"interrupted: {active - ahead} jobs still running on backends{waiting}; run the same command "
                   f"again to resume ({stats['rows']} rows: {summary})")
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


def skipped_state(run: PreparedRun, exc: JobDbLocked, logger) -> State:
    """Another live run owns the job DB: this run changes nothing and ends Completed "Skipped" (a
    schedule firing while a long pass goes on is no failure)."""
    message = f"skipped: {exc.describe()}"
    logger.warning(message)
    snapshot = run.store.snapshot()
    stats = {"job_db": str(run.store.path), "rows": snapshot.rows, "terminal": snapshot.terminal,
             "status": dict(sorted(snapshot.counts.items())), "ended": "skipped", "outcome": "skipped",
             "exit_code": RunOutcome.SKIPPED.exit_code, "holder": exc.holder, "message": message}
    return RunOutcome.SKIPPED.state(message, stats)


# --- setup ---------------------------------------------------------------------------------
def prepare(
    job_db: str,
    backends: List[Union[BackendConfig, str]],
    start_job: Optional[Union[str, Callable[..., Any]]],
    process: Optional[ProcessCreatorConfig],
    root_dir: Optional[str],
    hooks: Optional[Dict[str, Optional[str]]] = None,
    campaign: Optional[str] = None,
    results_storage_block: Optional[str] = None,
) -> PreparedRun:
    """Validate everything and connect, before any job is created. Raises SetupError."""
    hooks = {kind: spec for kind, spec in (hooks or {}).items() if spec}
    for kind, spec in hooks.items():
        try:
            load_hook(spec)
        except ValueError as exc:
            raise SetupError(f"on_job_{kind}: {exc}", parameter=f"on_job_{kind}") from None
    configs = [resolve_backend(b) for b in backends]
    limit_sources = {c.name: f"block {b}" if isinstance(b, str) else "parameter" for b, c in zip(backends, configs)}
    check_unique_names(configs)
    if (start_job is None) == (process is None):
        raise SetupError("give exactly one of start_job (an import path) or process (a process-based creator)",
                         parameter="start_job")
    creator = load_start_job(start_job) if start_job is not None else None
    try:
        store = open_store(job_db, campaign, root_dir)
    except JobDbError as exc:
        raise SetupError(str(exc), parameter="campaign" if "campaign" in str(exc) else "job_db") from exc
    check_row_backends(store.named_backends(), {b.name for b in configs})
    connections = {b.name: connect_backend(b) for b in configs}
    if process is not None:
        creator = make_process_creator(process)
        check_process_parameters(creator, process, next(iter(connections.values())), store.columns())
    try:
        results_root = results_root_url(root_dir, str(store.paths.default_results_root), results_storage_block)
    except StorageBlockError as exc:
        raise SetupError(str(exc), parameter="results_storage_block") from None
    try:
        check_writable(results_root)
    except StorageBlockError as exc:
        raise SetupError(str(exc), parameter="root_dir") from None
    return PreparedRun(store, {b.name: b for b in configs}, connections, creator, results_root, hooks, limit_sources)


# --- results -------------------------------------------------------------------------------
def build_stats(run: PreparedRun, end: CycleEnd, counters: Dict[str, int], t0: float) -> Dict[str, Any]:
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


def current_flow_run_id() -> Optional[str]:
    from prefect.runtime import flow_run

    return flow_run.id

