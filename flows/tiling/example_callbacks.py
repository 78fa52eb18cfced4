"""Ready-made job creators for job DBs made by the `tile-area` flow (or openeo's `create_job_db`).

Copy one into your own package and adapt it; run it with
`--start-job flows.tiling.example_callbacks:composite_over_tile_bbox` (or `start_job=...` in Python).

- `composite_over_tile_bbox`: reads `row["west"]` ... `row["north"]` (EPSG:4326) and `row["year"]`,
  exactly like openeo's MultiBackendJobManager examples, so it runs unchanged on either job DB.
- `ndvi_masked_to_tile`: also uses the row's `geometry` (a shapely geometry, EPSG:4326 with
  tile_area's default `output_crs`) to mask the cube to the tile (useful with `clip=True`).
- `TILE_COMPOSITE_UDP`: a user-defined process for `process=...`: its `geometry` parameter is
  filled from the row's geometry column and `year` from the `year` column, by name.
"""
from __future__ import annotations

from typing import Any, Dict

import openeo
import pandas as pd
import shapely.geometry

BBOX_COLUMNS = ("west", "south", "east", "north")


def tile_extent(row: pd.Series) -> Dict[str, float]:
    """The row's bounding box in EPSG:4326, from its west/south/east/north columns."""
    missing = [c for c in BBOX_COLUMNS if c not in row or pd.isna(row[c])]
    if missing:
        raise ValueError(f"row {row.name} has no {', '.join(missing)}: make the job DB with the tile-area flow, "
                         "or add these columns (EPSG:4326 bounds of the area to process)")
    return {c: float(row[c]) for c in BBOX_COLUMNS}


def year_range(row: pd.Series) -> list:
    """The row's calendar year as an openEO temporal extent."""
    if "year" not in row or pd.isna(row["year"]):
        raise ValueError(f"row {row.name} has no year: make the job DB with years=[...] (tile-area) or add a year column")
    year = int(row["year"])
    return [f"{year}-01-01", f"{year + 1}-01-01"]


def composite_over_tile_bbox(
    row: pd.Series, connection: openeo.Connection, provider: str = "", **kwargs: Any
) -> openeo.BatchJob:
    """A yearly Sentinel-2 median composite (B04, B08) over the row's bounding box."""
    cube = connection.load_collection(
        "SENTINEL2_L2A", spatial_extent=tile_extent(row), temporal_extent=year_range(row), bands=["B04", "B08"]
    ).reduce_dimension(dimension="t", reducer="median")
    title = f"composite {row.get('tile_id', row.name)} {int(row['year'])}"
    return connection.create_job(cube.save_result("GTiff"), title=title)


def ndvi_masked_to_tile(
    row: pd.Series, connection: openeo.Connection, provider: str = "", **kwargs: Any
) -> openeo.BatchJob:
    """Yearly maximum NDVI, loaded over the row's bbox and masked to its geometry."""
    cube = connection.load_collection(
        "SENTINEL2_L2A", spatial_extent=tile_extent(row), temporal_extent=year_range(row), bands=["B04", "B08"]
    )
    ndvi = cube.ndvi(red="B04", nir="B08").max_time()
    geometry = row.get("geometry")
    if isinstance(geometry, shapely.geometry.base.BaseGeometry) and not geometry.is_empty:
        ndvi = ndvi.mask_polygon(geometry)  # GeoJSON in EPSG:4326, as openEO expects by default
    title = f"ndvi {row.get('tile_id', row.name)} {int(row['year'])}"
    return connection.create_job(ndvi.save_result("GTiff"), title=title)


# A user-defined process for `process={"process_id": "tile_composite", "namespace": <URL of this
# document>}`: publish it as JSON at a URL the backend can read (or store it as your own UDP with
# `connection.save_user_defined_process` and leave `namespace` out). openeo's
# ProcessBasedJobCreator fills `geometry` from the job DB's geometry column (the only geometry
# parameter and column) and `year` from the `year` column; `max_cloud` comes from
# `parameter_defaults` or its default.
TILE_COMPOSITE_UDP: Dict[str, Any] = {
    "id": "tile_composite",
    "summary": "Yearly Sentinel-2 median composite over one tile",
    "parameters": [
        {"name": "geometry", "description": "The tile (GeoJSON, EPSG:4326)",
         "schema": {"type": "object", "subtype": "geojson"}},
        {"name": "year", "description": "Calendar year", "schema": {"type": "integer"}},
        {"name": "max_cloud", "description": "Maximum cloud cover (%)", "schema": {"type": "number"},
         "optional": True, "default": 80},
    ],
    "process_graph": {
        "load": {"process_id": "load_collection", "arguments": {
            "id": "SENTINEL2_L2A", "spatial_extent": {"from_parameter": "geometry"},
            "temporal_extent": None, "bands": ["B04", "B08"]}},
        "median": {"process_id": "reduce_dimension", "arguments": {
            "data": {"from_node": "load"}, "dimension": "t",
            "reducer": {"process_graph": {"m": {"process_id": "median", "arguments": {
                "data": {"from_parameter": "data"}}, "result": True}}}}},
        "save": {"process_id": "save_result", "arguments": {"data": {"from_node": "median"}, "format": "GTiff"},
                 "result": True},
    },
}
