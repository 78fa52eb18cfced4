"""Job slots shared by every flow run on one Prefect server: one global concurrency limit per
backend account, one lease per job that holds a slot.

Within a run the flow counts its own active rows (bookkeeping.free_slots). Across runs (two job
DBs, one account) it also needs a slot from the Prefect global concurrency limit
`openeo-jobs:<host>:<user>` (limit = parallel_jobs). Slots are taken without waiting, one lease
per row holding a backend slot. When a row stops holding its slot (job ended, start handed
back) its lease goes to the next row this run starts on that backend, or back to the server
when none is waiting. Leases are renewed in the background while held.

The leases of a run's rows are also written next to the job DB (`.<db name>.slot-leases.json`),
so a run that resumes the DB after a crash adopts (renews) the leases its predecessor held for
rows still active instead of waiting for them to expire. Leases nobody adopts expire after
lease_seconds (the server's minimum is 60 s).
"""
from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple
from urllib.parse import urlparse
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLeaseHolder

from flows.params import BackendConfig

LIMIT_PREFIX = "openeo-jobs:"
MIN_LEASE_SECONDS = 60.0  # the Prefect server refuses shorter leases

log = logging.getLogger(__name__)


def limit_name(backend: BackendConfig) -> str:
    """One limit per backend account (host + user), whatever name a run gives the backend."""
    url = urlparse(backend.url)
    account = backend.auth.username or backend.auth.client_id or backend.auth.type
    where = (url.netloc + url.path.rstrip("/")).replace("/", "_").replace("%", "_")
    return f"{LIMIT_PREFIX}{where}:{account}"


def lease_seconds_for(poll_interval: float) -> float:
    return max(MIN_LEASE_SECONDS, 3.0 * poll_interval)


def lease_file(job_db: str | Path) -> Path:
    job_db = Path(job_db)
    return job_db.with_name(f".{job_db.name}.slot-leases.json")


class JobSlots:
    """The leases of one flow run. Only the flow thread calls its methods; renewals run in a
    background thread so a slow Prefect API never holds up the cycle."""

    def __init__(
        self,
        backends: Dict[str, BackendConfig],
        lease_seconds: float,
        flow_run_id: Optional[str] = None,
        job_db: Optional[str | Path] = None,
    ):
        self.limits = {name: limit_name(b) for name, b in backends.items()}
        self.path = lease_file(job_db) if job_db is not None else None
        self.adoptable = self._load()  # row -> (limit name, lease id) written by an earlier run
        self._saved: Optional[dict] = None
        self.lease_seconds = lease_seconds
        self.holder = ConcurrencyLeaseHolder(type="flow_run", id=UUID(flow_run_id)) if flow_run_id else None
        self.leases: Dict[int, Tuple[str, UUID]] = {}  # row -> (backend, lease id)
        self.renewed_at: Dict[UUID, float] = {}
        self.spare: Dict[str, List[UUID]] = {}
        self.counters = {"acquired": 0, "denied": 0, "released": 0, "reused": 0, "renewed": 0, "lost": 0,
                         "adopted": 0}
        self._lost: set = set()
        self._lock = threading.Lock()
        self._renewer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="slot-leases")
        self._client_context = get_client(sync_client=True)
        self.client = self._client_context.__enter__()
        limits: Dict[str, int] = {}
        for name, backend in backends.items():  # two names for one account: the smaller limit
            limit = self.limits[name]
            limits[limit] = min(limits.get(limit, backend.parallel_jobs), backend.parallel_jobs)
        for limit, value in limits.items():
            self.client.upsert_global_concurrency_limit_by_name(limit, value)

    # --- server calls ---------------------------------------------------------------------
    def _acquire(self, backend: str) -> Optional[UUID]:
        try:
            response = self.client.increment_concurrency_slots_with_lease(
                names=[self.limits[backend]], slots=1, mode="concurrency",
                lease_duration=self.lease_seconds, holder=self.holder,
            )
        except Exception as exc:  # noqa: BLE001 - 423 Locked: no slot free across runs
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status != 423:
                log.warning("could not take a job slot on %s: %s", self.limits[backend], exc)
            self.counters["denied"] += 1
            return None
        self.counters["acquired"] += 1
        lease_id = UUID(response.json()["lease_id"])
        self.renewed_at[lease_id] = time.monotonic()
        return lease_id

    def _release(self, lease_id: UUID) -> None:
        self.renewed_at.pop(lease_id, None)
        try:
            self.client.release_concurrency_slots_with_lease(lease_id)
            self.counters["released"] += 1
        except Exception as exc:  # noqa: BLE001 - an expired lease is already released
            log.info("releasing job slot lease %s: %s", lease_id, exc)

    def _renew_in_background(self, lease_ids: List[UUID]) -> None:
        for lease_id in lease_ids:
            try:
                self.client.renew_concurrency_lease(lease_id, lease_duration=self.lease_seconds)
                with self._lock:
                    self.counters["renewed"] += 1
            except Exception as exc:  # noqa: BLE001 - expired (the run stalled): take a new one
                log.warning("job slot lease %s could not be renewed: %s", lease_id, exc)
                with self._lock:
                    self._lost.add(lease_id)

    def _adopt(self, i: int, backend: str) -> Optional[UUID]:
        """The lease an earlier run of this job DB held for row i, if it is still alive."""
        limit, lease_id = self.adoptable.pop(i, (None, None))
        if lease_id is None or limit != self.limits[backend]:
            return None
        try:
            self.client.renew_concurrency_lease(lease_id, lease_duration=self.lease_seconds)
        except Exception:  # noqa: BLE001 - expired: its slot is free again
            return None
        self.counters["adopted"] += 1
        self.renewed_at[lease_id] = time.monotonic()
        return lease_id

    def _load(self) -> Dict[int, Tuple[str, UUID]]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            return {int(i): (limit, UUID(lease_id)) for i, (limit, lease_id) in data["leases"].items()}
        except (ValueError, KeyError, TypeError, OSError) as exc:
            log.warning("ignoring unreadable slot lease file %s: %s", self.path, exc)
            return {}

    def _save(self) -> None:
        """Write the row -> lease map when it changed (atomically), for a run resuming this DB."""
        if self.path is None:
            return
        data = {"leases": {str(i): [self.limits[b], str(lease_id)] for i, (b, lease_id) in sorted(self.leases.items())}}
        if data == self._saved:
            return
        try:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.path)
            self._saved = data
        except OSError as exc:
            log.warning("could not write slot lease file %s: %s", self.path, exc)

    def _take(self, backend: str) -> Optional[UUID]:
        if self.spare.get(backend):
            self.counters["reused"] += 1
            return self.spare[backend].pop()
        return self._acquire(backend)

    # --- per cycle ------------------------------------------------------------------------
    def sync(self, holding: Dict[int, str]) -> None:
        """Match leases to the rows holding a backend slot ({row: backend_name}).

        Leases of rows that no longer hold a slot become spare (for the next row started on
        that backend); rows holding a slot without a lease (rows active when the run started)
        get one if a slot is free; leases due for renewal are renewed in the background.
        """
        holding = {i: b for i, b in holding.items() if b in self.limits}
        with self._lock:
            lost, self._lost = self._lost, set()
        self.counters["lost"] += len(lost)
        for i in [i for i, (b, lease_id) in self.leases.items() if lease_id in lost]:
            self.renewed_at.pop(self.leases.pop(i)[1], None)
        for i in [i for i, (b, _) in self.leases.items() if holding.get(i) != b]:
            backend, lease_id = self.leases.pop(i)
            self.spare.setdefault(backend, []).append(lease_id)
        denied = set()
        for i, backend in holding.items():
            if i not in self.leases and backend not in denied:
                lease_id = self._adopt(i, backend) if i in self.adoptable else None
                lease_id = lease_id or self._take(backend)
                if lease_id is not None:
                    self.leases[i] = (backend, lease_id)
                else:
                    denied.add(backend)  # the account is full: try again next cycle
        if self.adoptable:  # leases of rows that ended while no run was watching
            for i, (_, lease_id) in list(self.adoptable.items()):
                if i not in holding:
                    self._release(self.adoptable.pop(i)[1])
        self._save()
        now = time.monotonic()
        due = [lease_id for lease_id, at in self.renewed_at.items() if now - at > self.lease_seconds / 3]
        if due:
            for lease_id in due:
                self.renewed_at[lease_id] = now
            self._renewer.submit(self._renew_in_background, due)

    def grant(self, wanted: Dict[str, int], waiting: int) -> Dict[str, int]:
        """Take up to `wanted[backend]` slots (never more than `waiting` in all); what was taken."""
        granted: Dict[str, int] = {}
        left = waiting
        for backend, count in wanted.items():
            # spare leases are already ours: bind() hands them over first
            granted[backend] = min(count, left, len(self.spare.get(backend, [])))
            left -= granted[backend]
            self.counters["reused"] += granted[backend]
            while count > granted[backend] and left > 0:
                lease_id = self._acquire(backend)
                if lease_id is None:
                    break
                self.spare.setdefault(backend, []).append(lease_id)
                granted[backend] += 1
                left -= 1
        return granted

    def bind(self, claims: Iterable[Tuple[int, str]]) -> None:
        """Give the slots taken by grant() to the rows claimed with them; release the rest."""
        for i, backend in claims:
            if self.spare.get(backend):
                self.leases[i] = (backend, self.spare[backend].pop())
        self.release_spare()
        self._save()

    def release_spare(self) -> None:
        for lease_ids in self.spare.values():
            for lease_id in lease_ids:
                self._release(lease_id)
        self.spare.clear()

    def close(self) -> None:
        """Spare leases go back; leases of rows still active stay until they expire (their jobs
        still run on the backend, so the slots are still taken)."""
        self.release_spare()
        self._save()
        if self.path is not None and not self.leases:
            self.path.unlink(missing_ok=True)
        self._renewer.shutdown(wait=True)
        self._client_context.__exit__(None, None, None)
