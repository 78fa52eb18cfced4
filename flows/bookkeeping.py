"""Pure functions turning task results into job DB updates; no I/O, no Prefect.

Kept apart from the flow so the rules (what a status change writes, which rows may start
where) can be read and tested on their own.
"""
from __future__ import annotations

import hashlib
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional

from jobdb import ACTIVE_STATUSES, utc_now

# Statuses in which a row holds one of its backend's job slots.
SLOT_STATUSES = ACTIVE_STATUSES
# Our own rows whose backend job we track by polling.
POLLED_STATUSES = frozenset({"created", "queued_for_start", "queued", "running"})
USAGE_FIELDS = ("cpu", "memory", "duration", "network", "disk")


def db_marker_prefix(db_path: str | Path) -> str:
    """A short stable id of the job DB, so markers of different DBs never collide."""
    return hashlib.sha1(str(Path(db_path).resolve()).encode()).hexdigest()[:8]


def row_marker(db_prefix: str, row_index: int) -> str:
    return f"{db_prefix}-r{row_index}"


def row_label(row: Mapping[str, Any]) -> str:
    """A readable name for a row's task runs: its tile id (and year) when it has one."""
    parts = [str(row[key]) for key in ("tile_id", "year") if _present(row.get(key))]
    if not parts and _present(row.get("title")):
        parts = [str(row["title"])]
    return "-".join(parts) if parts else f"row-{row['_row']}"


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and value != ""


def free_slots(parallel_jobs: Mapping[str, int], used: Mapping[str, int]) -> Dict[str, int]:
    """Free job slots per backend: its parallel_jobs minus the rows holding a slot there."""
    return {name: max(0, limit - int(used.get(name, 0))) for name, limit in parallel_jobs.items()}


def assign_backends(
    candidates: List[Mapping[str, Any]], slots: Dict[str, int]
) -> List[tuple]:
    """Pair waiting rows with backends that have a free slot.

    A row that names a backend waits for that one; the others go to the backend with the
    most free slots at that moment, which spreads the work over all backends.
    """
    slots = dict(slots)
    assigned = []
    for row in candidates:
        wanted = row.get("backend_name")
        if wanted:
            if slots.get(wanted, 0) > 0:
                slots[wanted] -= 1
                assigned.append((row, wanted))
            continue
        best = max(slots, key=lambda name: slots[name], default=None)
        if best is None or slots[best] <= 0:
            continue
        slots[best] -= 1
        assigned.append((row, best))
    return assigned


def format_usage(metadata: Mapping[str, Any]) -> Dict[str, Any]:
    """openeo's usage columns: `"1234 cpu-seconds"` strings, plus `costs` as a float."""
    fields: Dict[str, Any] = {}
    usage = metadata.get("usage") or {}
    if isinstance(usage, Mapping):
        for key in USAGE_FIELDS:
            entry = usage.get(key)
            if isinstance(entry, Mapping):
                fields[key] = f"{entry.get('value', 0)} {entry.get('unit', '')}".strip()
    costs = metadata.get("costs")
    if isinstance(costs, (int, float)):
        fields["costs"] = float(costs)
    return fields


def status_change(row: Mapping[str, Any], new_status: str, metadata: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """The DB fields a polled status change writes (openeo's manager fills the same columns)."""
    update: Dict[str, Any] = {"status": new_status}
    if new_status == "running" and not _present(row.get("running_start_time")):
        update["running_start_time"] = utc_now()
    if metadata:
        update.update(format_usage(metadata))
    return update


def overdue_running(rows: Iterable[Mapping[str, Any]], limit_seconds: Optional[float], now: datetime) -> List[Mapping]:
    """Running rows that have been running longer than `limit_seconds`."""
    if not limit_seconds:
        return []
    overdue = []
    for row in rows:
        started = row.get("running_start_time")
        if row.get("status") != "running" or not _present(started):
            continue
        try:
            since = datetime.fromisoformat(str(started).replace("Z", "+00:00"))
        except ValueError:
            continue
        if since.tzinfo is None:
            since = since.replace(tzinfo=timezone.utc)
        if (now - since).total_seconds() > limit_seconds:
            overdue.append(row)
    return overdue
