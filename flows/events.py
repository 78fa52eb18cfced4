"""One Prefect event per job status change, for automations (e.g. a deployment per finished tile).

Event `openeo.job.<status>` (created, queued, running, finished, error, canceled), resource
`openeo.job.<job id>` labelled with the backend, the row and the tile. Emitting only queues the
event for Prefect's background events worker: the cycle never waits on the API for it.
"""
from __future__ import annotations

import logging
from typing import Optional

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
