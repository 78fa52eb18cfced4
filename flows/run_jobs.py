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
from typing import Any, Dict, Optional

from prefect import flow, get_run_logger
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner

from flows.config.limits import FIRST_READ_SECONDS, LimitOverrides, campaign_tags, pace_starts, tag_flow_run, task_tags
from flows.config.prepare import PreparedRun, prepare
from flows.config.run_parameters import RunParameters, takes_run_parameters
from flows.config.setup import connection_pool_size
from flows.console.progress_display import current_display
from flows.report.reporting import ProgressReport, failed_rows, publish_final_artifacts
from flows.report.tile_map import write_tile_map
from flows.rules.plan import BackendPolicy
from flows.run_loop.account_sharing import account_slots, create_workers, share_start_turns
from flows.run_loop.tag_limits import TagLimitWatch
from flows.run_loop.api_gone import api_went_with_the_stop, prefect_requests_refused, watch_api_after_stop
from flows.run_loop.background import BackgroundPublisher
from flows.run_loop.cycle import Cycle, CycleEnd, CycleOptions
from flows.run_loop.dispatcher import Dispatcher
from flows.run_loop.ending import RunEnded, RunFailed, RunInterrupted, build_stats, final_state, skipped_state
from flows.run_loop.events import JobEvents
from flows.run_loop.interrupts import (StopSignal, catch_interrupts, exit_without_final_collection, heartbeat_stopper,
                                      watch_for_cancel)
from flows.run_loop.owners import (ApiGoneAware, fail_fast_without_api, record_unrecorded_end,
                                   settle_previous_owner)
from jobdb import JobDbLocked
from jobdb.status import FAILED
from tasks.connection_registry import connection_key, register_connection, unregister_connection
from tasks.health import describe_change
from tasks.results.run_results import RunResults
from tasks.requests_in_flight import cut_session
from tasks.retry_policy import unanswered_create_grace

# What a script calling `run_jobs()` catches: a run that did not complete (flows/run_loop/ending.py).
__all__ = ["run_jobs", "RunEnded", "RunFailed", "RunInterrupted"]

# Polls, reconciles, downloads and error logs run on the flow's task runner with this many threads.
FLOW_TASK_WORKERS = 8
# Renew basic/OIDC access tokens this often, before they expire (expired ones are renewed on 403 too).
TOKEN_REFRESH_SECONDS = 30 * 60.0
# An interrupted run waits this long for its last artifacts to reach Prefect (the stop takes <= 3 s).
INTERRUPTED_API_WAIT_SECONDS = 0.5
CRASHED_API_WAIT_SECONDS = 5.0  # a run that failed sends what it queued for Prefect (events, artifacts)


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
                  results_storage_block=params.results_storage_block,
                  pool_size=connection_pool_size(params.max_start_workers, FLOW_TASK_WORKERS))
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
        api_gone = end.reason == "interrupted" and (prefect_requests_refused() or api_went_with_the_stop())
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
    # Prefect joins its heartbeat thread after the flow function returned: up to 1 s of every run's end,
    # unless the thread was told to end earlier, at a stop or once the cycle is over (its last seconds
    # are the run's own teardown; heartbeats come every 180 s).
    end_heartbeat = heartbeat_stopper(flow_run_id)
    stop.wakers.append(end_heartbeat)
    end_cancel_watch = watch_for_cancel(stop, flow_run_id)
    end_api_watch = watch_api_after_stop(stop)  # a script's temporary server may go with the Ctrl-C
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
        creating = create_workers(run.backends, max_start_workers)
        with ThreadPoolTaskRunner(max_workers=max_start_workers) as start_runner, \
                ThreadPoolTaskRunner(max_workers=sum(creating.values())) as create_runner, \
                catch_interrupts(stop):
            dispatcher = Dispatcher(keys, run.creator, run.root_dir, start_runner, max_start_workers,
                                    FLOW_TASK_WORKERS, run.store.row, run.store.label, TOKEN_REFRESH_SECONDS,
                                    hooks=run.hooks, footprint=results.footprint, collection_id=results.collection_id,
                                    tags={n: task_tags(n, c.account) for n, c in run.connections.items()},
                                    create_runner=create_runner, create_workers=creating)
            overrides.on_change = dispatcher.wake  # a changed limit: decide again now
            overrides.wait_first_read(FIRST_READ_SECONDS)  # a campaign resumed under an override obeys it at once
            cycle = Cycle(run.store, policies, dispatcher, options, logger, slots=slots, stop=stop,
                          on_progress=on_progress, on_change=on_change, on_downloaded=results.on_downloaded,
                          limits=overrides.policies)
            tag_watch = TagLimitWatch(dispatcher.tag_sets()).start()  # Prefect's tag-limit check off the tasks' path
            try:
                end = cycle.run()
            finally:
                end_heartbeat()
                display.close()
                tag_watch.close()
                run.store.persist(force=True)
                dispatcher.stop()
                dispatcher.close()
                if stop.event.is_set():  # interrupted: requests still on the wire end now, not at their answer
                    for connection in run.connections.values():
                        cut_session(connection.session)
    except BaseException:
        publisher.close(timeout=CRASHED_API_WAIT_SECONDS)  # the events of the last changes still go out
        raise
    finally:
        overrides.close()
        end_cancel_watch()
        end_api_watch()
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


def current_flow_run_id() -> Optional[str]:
    from prefect.runtime import flow_run

    return flow_run.id

