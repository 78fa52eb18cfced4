"""What the command line prints around a run: Prefect's console kept quiet, the end-of-run report."""
from __future__ import annotations

import logging
from typing import Any, Dict


def end_of_run_report(stats: Dict[str, Any], params: Dict[str, Any]) -> str:
    from flows.report.reporting import failed_rows, format_run_report, run_paths
    from jobdb import JobDatabase
    from jobdb.location import is_sql

    if is_sql(params["job_db"]):  # the run's own statistics carry the first failures; no file to read
        failures = stats.get("failures") or []
        paths = {"results": f"{params.get('root_dir') or './' + str(stats.get('campaign', ''))}/job_<id>/",
                 "job DB": stats["job_db"]}
        if stats.get("tile_map"):
            paths.update({f"map ({k})": v for k, v in stats["tile_map"].items()})
        return format_run_report(stats, failures, paths)
    failures = failed_rows(JobDatabase.open(params["job_db"]).df)
    paths = run_paths(params["job_db"], stats.get("results") or params.get("root_dir"), stats.get("tile_map"),
                      stats.get("collection"))
    return format_run_report(stats, failures, paths)


def configure_terminal(verbose: bool) -> None:
    """Keep Prefect's per-task-run lines ("Task run 'x' - Finished in state Completed()") off the
    terminal unless --verbose. They come from the `prefect.task_runs` logger, which also feeds
    the Prefect API; a filter on the console handler alone keeps them in the UI."""
    if verbose:
        return
    for handler in logging.getLogger().handlers:
        if type(handler).__name__ == "PrefectConsoleHandler":
            handler.addFilter(quiet_task_runs)


def quiet_task_runs(record: logging.LogRecord) -> bool:
    """Task-run lines below WARNING, `Finished in state Failed(...)` (a failed start task run: the
    cycle already printed that row's line with its reason) and task-run tracebacks (a raising hook
    printed one per retry: 30 rows, 698 lines): the flow prints one line per failure, the Prefect UI
    keeps the rest."""
    if record.name != "prefect.task_runs":
        return True
    return record.levelno >= logging.WARNING and not record.exc_info \
        and not str(record.msg).startswith("Finished in state") \
        and "Traceback (most recent call last)" not in record.getMessage()
