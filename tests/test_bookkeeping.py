"""The flow's pure rules: slots, backend assignment, status changes, labels, CLI parsing."""
from datetime import datetime, timedelta, timezone

import argparse
import pytest

from flows import bookkeeping as bk
from flows.cli import parse_backend


def test_free_slots_never_negative():
    assert bk.free_slots({"a": 3, "b": 2}, {"a": 1, "b": 5}) == {"a": 2, "b": 0}


def test_assign_spreads_over_backends_and_respects_pinned_rows():
    rows = [{"_row": i, "backend_name": None} for i in range(4)] + [{"_row": 9, "backend_name": "b"}]
    assigned = bk.assign_backends(rows, {"a": 2, "b": 1})
    by_backend = {}
    for row, backend in assigned:
        by_backend.setdefault(backend, []).append(row["_row"])
    assert len(by_backend["a"]) == 2
    assert len(by_backend["b"]) == 1
    assert sum(len(v) for v in by_backend.values()) == 3  # only 3 slots
    # a row pinned to a full backend waits instead of going elsewhere
    assert bk.assign_backends([{"_row": 9, "backend_name": "b"}], {"a": 5, "b": 0}) == []


def test_status_change_fills_openeo_columns():
    metadata = {"usage": {"cpu": {"value": 12, "unit": "cpu-seconds"}, "memory": {"value": 5, "unit": "mb-seconds"}},
                "costs": 1.5}
    update = bk.status_change({"status": "running", "running_start_time": "2024-01-01T00:00:00Z"}, "finished", metadata)
    assert update == {"status": "finished", "cpu": "12 cpu-seconds", "memory": "5 mb-seconds", "costs": 1.5}
    started = bk.status_change({"status": "queued", "running_start_time": None}, "running", None)
    assert started["status"] == "running" and started["running_start_time"].endswith("Z")


def test_overdue_running():
    now = datetime(2024, 1, 1, 1, 0, tzinfo=timezone.utc)
    rows = [
        {"id": "old", "status": "running", "running_start_time": (now - timedelta(hours=1)).isoformat()},
        {"id": "new", "status": "running", "running_start_time": (now - timedelta(seconds=10)).isoformat()},
        {"id": "q", "status": "queued", "running_start_time": None},
    ]
    assert [r["id"] for r in bk.overdue_running(rows, 60, now)] == ["old"]
    assert bk.overdue_running(rows, None, now) == []


def test_labels_and_markers():
    assert bk.row_label({"_row": 3, "tile_id": "T1", "year": 2024}) == "T1-2024"
    assert bk.row_label({"_row": 3, "tile_id": float("nan")}) == "row-3"
    assert bk.row_marker(bk.db_marker_prefix("/x/jobs.csv"), 7).endswith("-r7")
    assert bk.db_marker_prefix("/x/jobs.csv") != bk.db_marker_prefix("/y/jobs.csv")


def test_cli_backend_option():
    assert parse_backend("cdse=https://x.test,parallel_jobs=4,user=al,password_env=PW") == {
        "name": "cdse", "url": "https://x.test", "parallel_jobs": 4,
        "auth": {"type": "basic", "username": "al", "password_env": "PW"},
    }
    with pytest.raises(argparse.ArgumentTypeError, match="parallel_jobs must be an integer"):
        parse_backend("a=http://x,parallel_jobs=many")
    with pytest.raises(argparse.ArgumentTypeError, match="name=URL"):
        parse_backend("http://x")


def test_progress_bar():
    from flows.reporting import progress_bar

    assert progress_bar(0, width=10) == "[----------]   0%"
    assert progress_bar(50, width=10) == "[#####-----]  50%"
    assert progress_bar(100, width=10) == "[##########] 100%"
