"""Everything a run checks and opens before its first job: the flow's `prepare` step.

Parameters in, a `PreparedRun` out (the store, the backends' models and authenticated
connections, the job creator, the results root, the hooks), or one `SetupError` naming the
parameter that is wrong. Nothing here creates a job or takes the job DB's lock.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Union

from flows.config.blocks import resolve_backend
from flows.config.params import BackendConfig, ProcessCreatorConfig, SetupError, check_unique_names
from flows.config.setup import (
    check_process_parameters,
    check_row_backends,
    connect_backend,
    load_start_job,
    make_process_creator,
)
from jobdb import JobDbError
from jobdb.interface import CampaignStore, open_store
from tasks.callables import load_hook
from tasks.connections import ManagedConnection
from tasks.results.credentials import StorageBlockError, check_writable, results_root_url


@dataclass
class PreparedRun:
    store: CampaignStore
    backends: Dict[str, BackendConfig]
    connections: Dict[str, ManagedConnection]
    creator: Callable[..., Any]
    root_dir: str  # a local folder or an fsspec URL (s3://bucket/prefix)
    hooks: Dict[str, str]  # "done" / "error" -> import path
    limit_sources: Dict[str, str] = field(default_factory=dict)  # backend -> "parameter" / "block <name>"


def prepare(
    job_db: str,
    backends: List[Union[BackendConfig, str]],
    start_job: Optional[Union[str, Callable[..., Any]]],
    process: Optional[ProcessCreatorConfig],
    root_dir: Optional[str],
    hooks: Optional[Dict[str, Optional[str]]] = None,
    campaign: Optional[str] = None,
    results_storage_block: Optional[str] = None,
    pool_size: int = 32,  # HTTP connections per backend (flows/config/setup.py: connection_pool_size)
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
    connections = {b.name: connect_backend(b, pool_size) for b in configs}
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
