"""One Prefect event per job status change, for automations (e.g. a deployment per finished tile).

Event `openeo.job.<status>` (created, queued, running, finished, error, canceled, start_failed),
resource `openeo.job.<job id>` labelled with the backend, the row and the tile; a row that failed
before it had a job (its start_job callback raised) is the resource `openeo.row.<job DB key>.<row>`.
`error` and `start_failed` events carry the reason in their payload (`{"reason": ...}`). The flow
thread only queues them (`JobEvents.changed`); a background thread builds and emits them, since
building ~35 000 events of a 10 000-row run cost the flow thread 45-53 s (bench/README.md).
"""
from __future__ import annotations

import logging
import queue
from typing import Optional, Tuple

from prefect.events import emit_event

from jobdb import JobDbPaths
from jobdb.status import BACKEND_STATUSES, START_FAILED

JOB_EVENT_STATUSES = BACKEND_STATUSES | {START_FAILED}
NEEDS_NO_JOB = frozenset({START_FAILED})  # a callback that raised may have created nothing
REASON_CHARS = 2000  # an event is a notification, the job DB keeps the whole message

log = logging.getLogger(__name__)


def emit_job_event(status: str, job_id: Optional[str], backend: str, row: int, label: str, job_db: str,
                   reason: Optional[str] = None) -> None:
    if status not in JOB_EVENT_STATUSES or not (job_id or status in NEEDS_NO_JOB):
        return
    resource_id = f"openeo.job.{job_id}" if job_id else f"openeo.row.{JobDbPaths.of(job_db).artifact_key_base}.{row}"
    try:
        emit_event(
            event=f"openeo.job.{status}",
            resource={
                "prefect.resource.id": resource_id,
                "prefect.resource.name": label,
                "openeo.backend": backend,
                "openeo.row": str(row),
                "openeo.tile": label,
                "openeo.job_db": job_db,
            },
            payload={"reason": reason[:REASON_CHARS]} if reason else None,
        )
    except Exception as exc:  # noqa: BLE001 - an event lost must never stop the run
        log.warning("could not emit event openeo.job.%s for %s: %s", status, job_id or f"row {row}", exc)


Change = Tuple[str, Optional[str], str, int, str, Optional[str]]


class JobEvents:
    """Status changes queued by the flow thread, emitted on the run's background publisher."""

    def __init__(self, publisher, job_db: str):
        self._publisher = publisher
        self._job_db = job_db
        self._queue: "queue.SimpleQueue[Change]" = queue.SimpleQueue()

    def changed(self, status: str, job_id: Optional[str], backend: str, row: int, label: str,
                reason: Optional[str] = None) -> None:
        if status in JOB_EVENT_STATUSES and (job_id or status in NEEDS_NO_JOB):
            self._queue.put((status, job_id, backend, row, label, reason))
            self._publisher.submit("job-events", self._emit_queued)  # one pending flush at a time

    def _emit_queued(self) -> None:
        while True:
            try:
                status, job_id, backend, row, label, reason = self._queue.get_nowait()
            except queue.Empty:
                return
            emit_job_event(status, job_id, backend, row, label, self._job_db, reason)
