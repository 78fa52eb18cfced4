"""Callbacks for the tests and benchmarks, written exactly as for openeo's MultiBackendJobManager.

They accept any row: rows without a geometry get a fixed demo area, which is fine against the
simulator and wrong for real work. For real jobs use your own callback, or start from
`flows/tiling/example_callbacks.py` (which refuses rows without coordinates instead of guessing).
"""
from __future__ import annotations

import openeo
import pandas as pd


def start_job(row: pd.Series, connection: openeo.Connection, provider: str, **kwargs) -> openeo.BatchJob:
    """Create (not start) a job computing a Sentinel-2 median composite over the row's tile."""
    geometry = row.get("geometry")
    if geometry is not None and hasattr(geometry, "bounds"):
        west, south, east, north = geometry.bounds
    else:
        west, south, east, north = 5.0, 51.0, 5.1, 51.1
    year = int(row["year"]) if "year" in row and pd.notna(row["year"]) else 2024
    cube = connection.load_collection(
        "SENTINEL2_L2A",
        spatial_extent={"west": west, "south": south, "east": east, "north": north},
        temporal_extent=[f"{year}-01-01", f"{year + 1}-01-01"],
        bands=["B04", "B08"],
    ).reduce_dimension(dimension="t", reducer="median")
    title = f"composite {row.get('tile_id', row.name)} {year}"
    return connection.create_job(cube.save_result("GTiff"), title=title)


def start_and_run_job(row: pd.Series, connection: openeo.Connection, provider: str, **kwargs) -> openeo.BatchJob:
    """A callback that starts the job itself, as many existing scripts do."""
    job = start_job(row=row, connection=connection, provider=provider)
    job.start()
    return job
