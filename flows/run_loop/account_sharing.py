"""What a run shares with the other runs of the same accounts: job slots and start turns.

Through the database for a SQL job DB (runs on any machine), through the flock ledger on this
machine (tasks/accounts/slots.py) for a file job DB.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional

from flows.config.prepare import PreparedRun
from flows.config.setup import CREATE_WORKERS_PER_START_WORKER
from jobdb.location import is_sql
from tasks.accounts.slots import AccountSlots


def create_workers(backends: Mapping[str, Any], max_start_workers: int) -> Dict[str, int]:
    """Create tasks at once per backend: the workers follow the slots to fill (a run's first cycle
    fills every slot; issue 21: with 5 per backend, 10 running slots took two rounds of creates),
    `max_start_workers` at least and twice that at most, never more than its
    `max_concurrent_requests` (more would only wait for the account's request slots)."""
    most = CREATE_WORKERS_PER_START_WORKER * max_start_workers
    return {name: min(max(max_start_workers, min(b.parallel_jobs, most)), b.max_concurrent_requests or most)
            for name, b in backends.items()}


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
