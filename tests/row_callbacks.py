"""A start_job callback for tests that decides per row whether its job fails, deterministically."""
from __future__ import annotations

import openeo
import pandas as pd

# Put in the title of rows whose `fail` column is true; the simulator's `error_title` knob makes
# jobs with it in their title end in `error`.
MUST_FAIL = "must-fail"


def start_job(row: pd.Series, connection: openeo.Connection, provider: str, **kwargs) -> openeo.BatchJob:
    cube = connection.load_collection("SENTINEL2_L2A", spatial_extent={"west": 5.0, "south": 51.0, "east": 5.1,
                                                                       "north": 51.1}, bands=["B04"])
    fail = bool(row.get("fail")) if pd.notna(row.get("fail")) else False
    title = f"{MUST_FAIL + ' ' if fail else ''}composite {row.get('tile_id', row.name)}"
    return connection.create_job(cube.save_result("GTiff"), title=title)
