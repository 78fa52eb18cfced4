"""The post-processing task: run a user's `on_job_done` / `on_job_error` hook for one ended job.

A hook is an import path "package.module:function" of a callable `(job_id, row, job_dir,
connection)` — openeo's `on_job_done` / `on_job_error` override points without subclassing. It
runs as its own named task run with Prefect retries; if it still raises, the row is marked
(`postprocess_status` = failed, the reason in `postprocess_error`) and the run goes on.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.callables import load_hook
from tasks.download import job_dir as job_dir_of
from tasks.outcome import Outcome, Step, deliver
from tasks.retry_policy import HOOK_RETRIES, HOOK_RETRY_DELAYS
from tasks.standalone import ConnectionSource, connection_for
from tasks.start import row_as_series

@task(name="post-process", task_run_name="on-job-{kind}-{label}", retries=HOOK_RETRIES,
      retry_delay_seconds=HOOK_RETRY_DELAYS, cache_policy=NO_CACHE)
def run_hook(
    hook: str,
    kind: str,
    backend: str,
    connection_key: ConnectionSource,
    job_id: str,
    row: Dict[str, Any],
    root_dir: str,
    label: str,
    inbox: Optional[str] = None,
) -> Outcome:
    """Call the hook for one job; raise (and be retried) if it raises."""
    function = load_hook(hook)
    # job_dir: a Path for a local results folder, its URL (str) on object storage
    function(job_id, row_as_series(row), job_dir_of(root_dir, job_id), connection_for(connection_key, backend))
    return deliver(inbox, Outcome(Step.HOOK, backend, {int(row["_row"]): {"kind": kind}}))
