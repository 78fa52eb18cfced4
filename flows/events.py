"""One Prefect event per job status change, for automations (e.g. a deployment per finished tile).

Event `openeo.job.<status>` (created, queued, running, finished, error, canceled), resource
`openeo.job.<job id>` labelled with the backend, the row and the tile. The flow thread only queues
them (`JobEvents.changed`); a background thread builds and emits them, since building ~35 000
events of a 10 000-row run cost the flow thread 45-53 s (bench/README.md).
"""
from __future__ import annotations

import logging
import queue
from typing import Optional, Tuple

from prefect.events import emit_event

JOB_EVENT_STATUSES = frozenset({"created", "queued", "running", "finished", "error", "canceled"})

log = logging.getLogger(__name__)


def emit_job_event(status: str, job_id: Optional[str], backend: str, row: int, label: str, job_db: str) -> None:
    if status not in JOB_EVENT_STATUSES or not job_id:
        return
    try:
        emit_event(
            event=f"openeo.job.{status}",
            resource={
                "prefect.resource.id": f"openeo.job.{job_id}",
                "prefect.resource.name": label,
                "openeo.backend": backend,
                "openeo.row": str(row),
                "openeo.tile": label,
                "openeo.job_db": job_db,
            },
        )
    except Exception as exc:  # noqa: BLE001 - an event lost must never stop the run
        log.warning("could not emit event openeo.job.%s for %s: %s", status, job_id, exc)


class JobEvents:
    """Status changes queued by the flow thread, emitted on the run's background publisher."""

    def __init__(self, publisher, job_db: str):
        self._publisher = publisher
        self._job_db = job_db
        self._queue: "queue.SimpleQueue[Tuple[str, Optional[str], str, int, str]]" = queue.SimpleQueue()

    def changed(self, status: str, job_id: Optional[str], backend: str, row: int, label: str) -> None:
        if status in JOB_EVENT_STATUSES and job_id:
            self._queue.put((status, job_id, backend, row, label))
            self._publisher.submit("job-events", self._emit_queued)  # one pending flush at a time

    def _emit_queued(self) -> None:
        while True:
            try:
                status, job_id, backend, row, label = self._queue.get_nowait()
            except queue.Empty:
                return
            emit_job_event(status, job_id, backend, row, label, self._job_db)
