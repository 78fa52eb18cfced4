"""One flow run's cycle: collect what tasks returned, poll, claim free job slots, persist, submit.

The flow thread alone runs this and alone touches the job DB (`RunState.db`); tasks get plain
values and return plain results, which are applied here and persisted once per cycle.
"""
from __future__ import annotations

import concurrent.futures
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from prefect._internal.result_records import ResultRecord
from prefect.client.schemas.objects import State
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from flows import bookkeeping as bk
from flows.params import BackendConfig
from flows.reporting import ProgressReport, progress_bar, share_terminal, status_counts
from flows.slots import JobSlots
from jobdb import TERMINAL_STATUSES, JobDatabase
from tasks.connections import ManagedConnection
from tasks.download import download_results as download_results_task
from tasks.download import download_results_batch, save_error_logs
from tasks.poll import find_marked_jobs, poll_backend
from tasks.start import start_job as start_job_task
from tasks.start import start_jobs_batch

START_TAG_PREFIX = "openeo-start:"
# Persist at least this often while results stream in (intents are always persisted at once).
MIN_PERSIST_INTERVAL_SECONDS = 1.0
# Polls, downloads and error logs run on the flow's task runner with this many threads.
FLOW_TASK_WORKERS = 8
# More downloads than this for one backend in one cycle go in batch tasks of at most this
# size, and in at least FLOW_TASK_WORKERS of them, so downloads stay as parallel as before.
DOWNLOAD_BATCH_THRESHOLD = 8
DOWNLOAD_BATCH_SIZE = 25
# Batch start tasks when more rows wait than this many times the start workers.
START_BATCH_FACTOR = 4
# After a row was handed back (rate limit, job limit), wait this long before trying it again.
RETRY_HOLD_SECONDS = 5.0
# After a task returned, wait this long for others before the next cycle (10k rows: a cycle per
# returning task meant 2240 cycles, each scanning the whole DB; bench/README.md).
COALESCE_SECONDS = 0.1
# Renew basic/OIDC access tokens this often, before they expire (expired ones are renewed on 403 too).
TOKEN_REFRESH_SECONDS = 30 * 60.0


@dataclass
class RunState:
    """The flow's own state; only the flow thread touches it."""

    db: JobDatabase
    backends: Dict[str, BackendConfig]
    connections: Dict[str, ManagedConnection]
    creator: Callable[..., Any]
    root_dir: Path
    marker_prefix: str
    starts: Dict[PrefectFuture, List[int]] = field(default_factory=dict)  # future -> its rows
    finishers: Dict[PrefectFuture, tuple] = field(default_factory=dict)  # future -> ([(row, status, job id)], batched)
    polls: Dict[PrefectFuture, tuple] = field(default_factory=dict)  # future -> (backend, {job id: row})
    hold_until: Dict[int, float] = field(default_factory=dict)
    needs_reconcile: set = field(default_factory=set)
    pinned: set = field(default_factory=set)  # rows whose backend the user chose
    slots: Optional[JobSlots] = None  # job slots shared with other flow runs (flows/slots.py)
    counters: Dict[str, int] = field(default_factory=lambda: {
        "cycles": 0, "start_tasks": 0, "poll_tasks": 0, "download_tasks": 0, "error_log_tasks": 0, "persists": 0,
    })
    dirty: bool = False
    last_persist: float = 0.0

    def update(self, updates: Dict[int, Dict[str, Any]]) -> None:
        if updates:
            self.db.apply_updates(updates)
            self.dirty = True

    def persist(self, force: bool = False) -> None:
        if self.dirty and (force or time.monotonic() - self.last_persist >= MIN_PERSIST_INTERVAL_SECONDS):
            self.db.save()
            self.dirty = False
            self.last_persist = time.monotonic()
            self.counters["persists"] += 1

# --- the cycle -----------------------------------------------------------------------------
def drive(
    state: RunState,
    max_start_workers: int,
    poll_interval: float,
    download: bool,
    cancel_after: Optional[float],
    progress: ProgressReport,
    logger: logging.Logger,
) -> Optional[float]:
    """Cycle until every row is terminal and every task has returned. Returns when all started."""
    t0 = time.monotonic()
    next_poll = 0.0
    all_started_at = None
    # Tags only where a tag limit is wanted: Prefect 3.8 asks the server for a lease on every
    # tagged task run (limit or not), serialized per tag set: ~0.1-0.5 s per start (bench/).
    start_runs = {}
    for name, backend in state.backends.items():
        tags = [f"{START_TAG_PREFIX}{name}"] if backend.max_parallel_starts else []
        # (one row, a batch of rows): both count against the backend's tag limit
        start_runs[name] = (start_job_task.with_options(tags=tags), start_jobs_batch.with_options(tags=tags))
    resume_finishers(state, download)
    with ThreadPoolTaskRunner(max_workers=max_start_workers) as start_runner:
        while True:
            state.counters["cycles"] += 1
            collect_starts(state, logger)
            collect_polls(state, download, logger)
            if time.monotonic() >= next_poll:
                for connection in state.connections.values():
                    connection.refresh_token_if_older(TOKEN_REFRESH_SECONDS)
                reconcile(state, logger)
                submit_polls(state, cancel_after)
                next_poll = time.monotonic() + poll_interval
                log_histogram(state, logger)
                progress.update(state.db.df)
            collect_finishers(state, logger)
            intents = claim_rows(state)
            state.persist(force=bool(intents))
            submit_starts(state, intents, start_runner, start_runs, max_start_workers)
            if all_started_at is None and not state.db.df["status"].isin(["not_started", "creating"]).any():
                all_started_at = time.monotonic() - t0
            if finished(state):
                state.persist(force=True)
                progress.update(state.db.df)
                return all_started_at
            wait_for_progress(state, timeout=max(0.05, next_poll - time.monotonic()))


def claim_rows(state: RunState) -> List[Dict[str, Any]]:
    """Pick rows for the free slots and record the intent (status + marker) before any POST.

    Rows `created` on the backend but not started are started first: they already hold a slot.
    """
    df = state.db.df
    now = time.monotonic()
    busy = starting_rows(state)
    state.hold_until = {i: until for i, until in state.hold_until.items() if until > now}
    held = set(state.hold_until)
    claims: List[tuple] = []
    waiting_start = df.index[(df["status"] == "created") & df["id"].notna()]
    for i in waiting_start:
        if int(i) not in busy and int(i) not in held:
            claims.append((int(i), df.at[i, "backend_name"], "queued_for_start"))
    holding = df.loc[df["status"].isin(bk.SLOT_STATUSES), "backend_name"]
    slots = bk.free_slots({n: b.parallel_jobs for n, b in state.backends.items()}, holding.value_counts().to_dict())
    if state.slots is not None:  # leases for rows holding a slot; slots other flow runs left free
        state.slots.sync({int(i): b for i, b in holding.items()})
    if sum(slots.values()) > 0:
        waiting = [i for i in df.index[df["status"] == "not_started"] if int(i) not in held and int(i) not in busy]
        if state.slots is not None:
            slots = state.slots.grant(slots, len(waiting))
        candidates = [{"_row": int(i), "backend_name": str_or_none(df.at[i, "backend_name"])}
                      for i in waiting[: sum(slots.values()) * 2 + len(state.backends)]]
        for row, backend in bk.assign_backends(candidates, slots):
            claims.append((row["_row"], backend, "creating"))
        if state.slots is not None:
            state.slots.bind([(i, backend) for i, backend, status in claims if status == "creating"])
    if not claims:
        return []
    updates = {}
    for i, backend, status in claims:
        update = {"status": status, "backend_name": backend}
        if status == "creating":
            update["job_marker"] = bk.row_marker(state.marker_prefix, i)
        updates[i] = update
    state.update(updates)
    rows = {r["_row"]: r for r in state.db.rows(statuses=["creating", "queued_for_start"])}
    return [(rows[i], backend) for i, backend, _ in claims]


def submit_starts(
    state: RunState, intents: List[tuple], runner: ThreadPoolTaskRunner, start_runs: Dict[str, Any], workers: int
) -> None:
    """One start task run per row, named after its tile; when many more rows wait than there
    are start workers (thousands of rows, hundreds of slots), rows go in batches so that each
    worker gets about one batch: the same parallelism with far fewer task runs."""
    def job_id_of(row: Dict[str, Any]) -> Optional[str]:
        return row.get("id") if row["status"] == "queued_for_start" else None

    if len(intents) <= START_BATCH_FACTOR * workers:
        for row, backend in intents:
            future = runner.submit(start_runs[backend][0], parameters=dict(
                row=row, backend=backend, creator=state.creator, marker=row["job_marker"],
                label=f"{bk.row_label(row)}@{backend}", job_id=job_id_of(row),
            ))
            state.starts[future] = [row["_row"]]
            state.counters["start_tasks"] += 1
        return
    size = math.ceil(len(intents) / workers)
    by_backend: Dict[str, List[Dict[str, Any]]] = {}
    for row, backend in intents:
        by_backend.setdefault(backend, []).append({**row, "job_id": job_id_of(row)})
    for backend, rows in by_backend.items():
        for first in range(0, len(rows), size):
            batch = rows[first:first + size]
            future = runner.submit(start_runs[backend][1], parameters=dict(
                rows=batch, backend=backend, creator=state.creator,
                label=f"{bk.row_label(batch[0])}+{len(batch) - 1}@{backend}",
            ))
            state.starts[future] = [row["_row"] for row in batch]
            state.counters["start_tasks"] += 1


def starting_rows(state: RunState) -> set:
    """Rows whose start task has not returned yet."""
    return {i for rows in state.starts.values() for i in rows}


def collect_starts(state: RunState, logger: logging.Logger) -> None:
    updates = {}
    # wrapped_future only: `f.state` of an unfinished future is one API call (read_task_run) per
    # pending start per cycle, which stalled the flow thread for seconds with hundreds of starts.
    for future in [f for f in state.starts if f.wrapped_future.done()]:
        rows = state.starts.pop(future)
        try:
            results = task_result(future)
            if not isinstance(results, list):  # a one-row task
                results = [results]
        except Exception as exc:  # noqa: BLE001 - the task crashed: we can't know if a job was created
            results = [{"_row": i, "crashed": str(exc)} for i in rows]
        for result in results:
            apply_start_result(state, result, updates, logger)
    state.update(updates)


def apply_start_result(state: RunState, result: Dict[str, Any], updates: Dict[int, Dict[str, Any]],
                       logger: logging.Logger) -> None:
    i = result["_row"]
    if "crashed" in result:
        logger.warning("start of row %s crashed (%s); looking for its job on the next poll", i, result["crashed"])
        state.needs_reconcile.add(i)
        return
    update = {k: v for k, v in result.items() if k != "_row"}
    if update["status"] in ("not_started", "created"):
        state.hold_until[i] = time.monotonic() + RETRY_HOLD_SECONDS
    if update["status"] == "not_started":
        update["job_marker"] = None  # nothing was created under this marker
        update.pop("id", None)
        if i not in state.pinned:
            update["backend_name"] = None  # free to go to another backend next time
    logger.info("row %s: %s%s", i, update["status"], f" (job {update['id']})" if update.get("id") else "")
    updates[i] = update


def reconcile(state: RunState, logger: logging.Logger) -> None:
    """Rows left in `creating` (a crash, a crashed task): adopt their job if the backend has it."""
    busy = starting_rows(state)
    pending = [i for i in state.needs_reconcile if i not in busy]
    if not pending:
        return
    df = state.db.df
    by_backend: Dict[str, Dict[str, int]] = {}
    for i in pending:
        marker = df.at[i, "job_marker"] if "job_marker" in df.columns else None
        backend = df.at[i, "backend_name"]
        if isinstance(marker, str) and marker and isinstance(backend, str) and backend in state.backends:
            by_backend.setdefault(backend, {})[marker] = i
    updates: Dict[int, Dict[str, Any]] = {
        i: {"status": "not_started", "job_marker": None, **({} if i in state.pinned else {"backend_name": None})}
        for i in pending
    }
    futures = {name: find_marked_jobs.submit(name, list(markers)) for name, markers in by_backend.items()}
    for name, future in futures.items():
        try:
            found = future.result()
        except Exception as exc:  # noqa: BLE001 - keep the rows for the next cycle
            logger.warning("could not look up unfinished creations on %s: %s", name, exc)
            for i in by_backend[name].values():
                updates.pop(i, None)
            continue
        for marker, i in by_backend[name].items():
            job = found.get(marker)
            if job is not None:
                logger.info("row %s: adopted job %s found on %s", i, job["id"], name)
                status = job.get("status") or "created"
                # A job that ended meanwhile is taken up as `queued`: the next poll sees it end and
                # records usage and downloads results (or saves error logs), as for any other job.
                updates[i] = {"status": status if status in ("created", "queued", "running") else "queued",
                              "id": job["id"]}
    for i in updates:
        state.needs_reconcile.discard(i)
    state.update(updates)


def submit_polls(state: RunState, cancel_after: Optional[float]) -> None:
    """One poll task per backend, unless its previous poll is still running (a slow or down
    backend must not hold up the others: the flow collects polls as they return)."""
    df = state.db.df
    busy = starting_rows(state)
    polling = {backend for backend, _ in state.polls.values()}
    tracked = df[df["status"].isin(bk.POLLED_STATUSES) & df["id"].notna()]
    tracked = tracked[~tracked.index.isin(list(busy))]
    overdue = {r["id"] for r in bk.overdue_running(
        tracked[["status", "running_start_time", "id"]].to_dict("records"), cancel_after, datetime.now(timezone.utc))}
    for name in state.backends:
        mine = tracked[tracked["backend_name"] == name]
        if len(mine) and name not in polling:
            active = dict(zip(mine["id"].astype(str), mine["status"].astype(str)))
            future = poll_backend.submit(name, active, [j for j in active if j in overdue])
            state.polls[future] = (name, dict(zip(mine["id"].astype(str), mine.index.astype(int))))
            state.counters["poll_tasks"] += 1


def collect_polls(state: RunState, download: bool, logger: logging.Logger) -> None:
    """Apply the status changes returned by finished poll tasks."""
    df = state.db.df
    updates: Dict[int, Dict[str, Any]] = {}
    ended: List[tuple] = []
    for future in [f for f in state.polls if f.wrapped_future.done()]:
        name, rows_by_id = state.polls.pop(future)
        try:
            changes = task_result(future)
        except Exception as exc:  # noqa: BLE001 - a backend that is down: keep waiting, others go on
            logger.warning("polling %s failed, will retry next cycle: %s", name, exc)
            continue
        for job_id, change in changes.items():
            i = rows_by_id[job_id]
            row = {"status": df.at[i, "status"], "running_start_time": df.at[i, "running_start_time"]}
            if row["status"] not in bk.POLLED_STATUSES:
                continue  # changed meanwhile (e.g. a start task returned)
            update = bk.status_change(row, change["status"], change.get("metadata"))
            if change.get("error"):
                update["error_message"] = change["error"]
            if update["status"] != row["status"]:
                logger.info("job %s (row %s, %s): %s -> %s", job_id, i, name, row["status"], update["status"])
            updates[i] = update
            if update["status"] in ("finished", "error") and row["status"] != update["status"]:
                ended.append((i, name, job_id, update["status"], change.get("metadata")))
    state.update(updates)
    submit_finishers(state, ended, download)


def submit_finishers(state: RunState, ended: List[tuple], download: bool) -> None:
    """Download tasks for finished jobs, error-log tasks for failed ones.

    One task run per job, named after it; but when many jobs of a backend end in one cycle
    their downloads go in batches (Prefect's server falls behind on thousands of task runs).
    """
    downloads: Dict[str, List[tuple]] = {}
    for i, backend, job_id, status, metadata in ended:
        if status == "finished" and download:
            downloads.setdefault(backend, []).append((i, job_id, metadata))
        elif status == "error":
            future = save_error_logs.submit(backend, job_id, str(state.root_dir))
            state.counters["error_log_tasks"] += 1
            state.finishers[future] = ([(i, status, job_id)], False)
    for backend, jobs in downloads.items():
        if len(jobs) <= DOWNLOAD_BATCH_THRESHOLD:
            for i, job_id, metadata in jobs:
                future = download_results_task.submit(backend, job_id, str(state.root_dir), metadata)
                state.finishers[future] = ([(i, "finished", job_id)], False)
                state.counters["download_tasks"] += 1
            continue
        size = min(DOWNLOAD_BATCH_SIZE, math.ceil(len(jobs) / FLOW_TASK_WORKERS))
        for start in range(0, len(jobs), size):
            batch = jobs[start:start + size]
            future = download_results_batch.submit(
                backend, [{"job_id": job_id, "metadata": metadata} for _, job_id, metadata in batch],
                str(state.root_dir), label=f"{backend}-{len(batch)}-jobs-{batch[0][1]}",
            )
            state.finishers[future] = ([(i, "finished", job_id) for i, job_id, _ in batch], True)
            state.counters["download_tasks"] += 1


def resume_finishers(state: RunState, download: bool) -> None:
    """Jobs that ended in an earlier run whose results (or error logs) were never saved."""
    df = state.db.df
    results = df["results_status"] if "results_status" in df.columns else None
    ended = []
    for i in df.index[(df["status"] == "finished") & df["id"].notna()]:
        if results is None or results.at[i] != "downloaded":
            ended.append((int(i), df.at[i, "backend_name"], df.at[i, "id"], "finished", None))
    logs_missing = df["error_message"].isna() if "error_message" in df.columns else True
    for i in df.index[(df["status"] == "error") & df["id"].notna() & logs_missing]:
        ended.append((int(i), df.at[i, "backend_name"], df.at[i, "id"], "error", None))
    submit_finishers(state, ended, download)


def collect_finishers(state: RunState, logger: logging.Logger) -> None:
    updates = {}
    for future in [f for f in state.finishers if f.wrapped_future.done()]:
        jobs, batched = state.finishers.pop(future)
        try:
            result = task_result(future)
            if not batched:  # a one-job task returns that job's result
                result = {jobs[0][2]: result}
        except Exception as exc:  # noqa: BLE001 - recorded in the DB, retried on the next run
            result = {job_id: {"error": str(exc)} for _, _, job_id in jobs}
        for i, status, job_id in jobs:
            outcome = result.get(job_id) or {"error": "no result returned"}
            if outcome.get("error"):
                logger.warning("row %s: %s handling failed: %s", i, status, outcome["error"])
                key = "results_status" if status == "finished" else "error_message"
                updates[i] = {key: f"failed: {outcome['error']}"}
            elif status == "finished":
                updates[i] = {"results_status": "downloaded", "error_message": None}
            elif outcome.get("error_message"):
                updates[i] = {"error_message": outcome["error_message"]}
    state.update(updates)


def finished(state: RunState) -> bool:
    return not state.starts and not state.finishers and not state.polls and not state.needs_reconcile and bool(
        state.db.df["status"].isin(TERMINAL_STATUSES).all()
    )


def task_result(future: PrefectFuture) -> Any:
    """The return value of a finished task run, or its exception raised.

    `future.result()` resolves the state through Prefect's global event loop thread
    (run_coro_as_sync), ~10 ms per future when hundreds of task threads compete for it (10k-row
    bench: most of collect_starts' 90 s). A completed in-process run already holds its value in
    `state.data` (a ResultRecord); anything else goes the usual way.
    """
    state = future.wrapped_future.result()
    if isinstance(state, State) and state.is_completed() and isinstance(state.data, ResultRecord):
        return state.data.result
    return future.result(raise_on_failure=True)


def wait_for_progress(state: RunState, timeout: float) -> None:
    """Sleep until a task returns or the next poll is due, whichever comes first."""
    pending = [f.wrapped_future for f in (*state.starts, *state.finishers, *state.polls)]
    held = [until - time.monotonic() for until in state.hold_until.values() if until > time.monotonic()]
    if held:
        timeout = min(timeout, max(0.05, min(held)))
    if pending:
        t0 = time.monotonic()
        done, _ = concurrent.futures.wait(pending, timeout=timeout, return_when=concurrent.futures.FIRST_COMPLETED)
        if done:  # let tasks finishing about now join this cycle: every cycle scans the whole job DB
            time.sleep(max(0.0, min(COALESCE_SECONDS, timeout - (time.monotonic() - t0))))
    else:
        time.sleep(timeout)


def log_histogram(state: RunState, logger: logging.Logger) -> None:
    df = state.db.df
    logger.info("%s terminal; job status histogram: %s", progress_bar(share_terminal(df)), status_counts(df))


def str_or_none(value: Any) -> Optional[str]:
    if value is None or (isinstance(value, float) and value != value):
        return None
    return str(value)
