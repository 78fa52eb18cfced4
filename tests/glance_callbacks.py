"""A start_job callback with a bug for one tile, as users write them (tests/test_at_a_glance.py)."""
from __future__ import annotations

from flows.tiling.demo_callbacks import start_job as demo_start_job

BROKEN_TILE = "T005"


def breaks_on_one_tile(row, connection, provider, **kwargs):
    if row["tile_id"] == BROKEN_TILE:
        raise KeyError("no_such_column")
    return demo_start_job(row=row, connection=connection, provider=provider)
