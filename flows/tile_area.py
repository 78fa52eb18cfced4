"""The `tile-area` flow: area of interest -> tile grid -> GeoParquet job DB.

AOI parsing lives in `flows/tiling/aoi.py`, the grid maths in `flows/tiling/grid.py`; this module writes the
grid as a job DB (atomically, with openeo's columns added) and wires it up as a Prefect flow.
The job DB's columns are documented in README.md ("Job DB from an area of interest").
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import geopandas as gpd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from flows.tiling.aoi import PARQUET_SUFFIXES, BBox, TilingError, load_aoi
from flows.tiling.grid import ColumnValue, make_tile_grid, tile_id
from jobdb import JobDbPaths
from jobdb.atomic import atomic_path

__all__ = ["BBox", "TilingError", "load_aoi", "make_tile_grid", "tile_area", "tile_id", "write_job_db"]

OnExists = Literal["error", "skip", "overwrite"]


# --------------------------------------------------------------------------- writing


def check_job_db_args(job_db: Union[str, Path], on_exists: str) -> Path:
    """Validate the output path/on_exists up front, before any (possibly long) tiling."""
    if on_exists not in ("error", "skip", "overwrite"):
        raise TilingError(f"on_exists must be one of 'error', 'skip', 'overwrite'; got {on_exists!r}.")
    path = Path(job_db)
    if path.suffix.lower() not in PARQUET_SUFFIXES:
        raise TilingError(f"job_db must end with .parquet or .geoparquet (GeoParquet), got {str(path)!r}.")
    if path.exists() and on_exists == "error":
        raise FileExistsError(f"Job database {str(path)!r} already exists (use on_exists='skip' or 'overwrite').")
    return path


def _create_db(path: Path, gdf: gpd.GeoDataFrame) -> None:
    # jobdb adds openeo's columns (id, status="not_started", ...) and writes atomically.
    from jobdb import JobDatabase

    JobDatabase.create(path, gdf, on_exists="error")


def write_job_db(gdf: gpd.GeoDataFrame, job_db: Union[str, Path], *, on_exists: OnExists = "error") -> bool:
    """Write the tile grid as a job DB; return False if skipped because it already exists."""
    path = check_job_db_args(job_db, on_exists)
    if path.exists() and on_exists == "skip":
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():  # overwrite: write aside then rename, so readers never see a missing/half file
        # the temp name keeps the suffix: it tells JobDatabase.create the format
        with atomic_path(path, temp=path.with_name(f".{path.stem}.{uuid.uuid4().hex}{path.suffix}")) as tmp:
            _create_db(tmp, gdf)
    else:
        _create_db(path, gdf)
    return True


def _count_rows(path: Path) -> int:
    import pyarrow.parquet

    return pyarrow.parquet.read_metadata(path).num_rows


# --------------------------------------------------------------------------- flow


@flow(name="tile-area")
def tile_area(
    aoi: Union[BBox, dict[str, Any], str],
    tile_size: Annotated[float, Field(gt=0)],
    job_db: str,
    tiling_crs: Optional[int] = None,
    output_crs: int = 4326,
    years: Optional[list[int]] = None,
    extra_columns: Optional[dict[str, ColumnValue]] = None,
    clip: bool = False,
    on_exists: OnExists = "error",
    max_tiles: Annotated[int, Field(gt=0)] = 100_000,
) -> dict[str, Any]:
    """Tile an area of interest and write the tiles as an openEO job database (GeoParquet).

    Args:
        aoi: Area of interest: a bbox {west, south, east, north, crs (default EPSG:4326)},
            a GeoJSON geometry/Feature/FeatureCollection, or a path to a vector file.
        tile_size: Tile edge length in units of the tiling CRS (metres for UTM).
        job_db: Output job DB path, ending with .parquet or .geoparquet.
        tiling_crs: EPSG code of the tiling grid; default: UTM zone of the AOI centre.
        output_crs: EPSG code of the geometries written to the job DB.
        years: If set, one row per tile and year, with a 'year' column.
        extra_columns: Constant columns added to every row.
        clip: Clip tile geometries to the AOI.
        on_exists: What to do if job_db already exists: error, skip (keep it) or overwrite.
        max_tiles: Safety limit on the number of tiles.

    Returns:
        {"job_db", "row_count", "tile_count", "written"}; tile_count is None when skipped.
    """
    logger = get_run_logger()
    path = check_job_db_args(job_db, on_exists)
    if path.exists() and on_exists == "skip":
        rows = _count_rows(path)
        logger.info("Job DB %s exists (%d rows); skipping (on_exists='skip').", path, rows)
        return {"job_db": str(path), "row_count": rows, "tile_count": None, "written": False}

    gdf = make_tile_grid(
        aoi,
        tile_size,
        tiling_crs=tiling_crs,
        output_crs=output_crs,
        years=years,
        extra_columns=extra_columns,
        clip=clip,
        max_tiles=max_tiles,
    )
    n_tiles = int(gdf["tile_id"].nunique())
    tile_crs = int(gdf["tile_crs"].iloc[0])
    write_job_db(gdf, path, on_exists=on_exists)
    logger.info("Wrote %d rows (%d tiles, EPSG:%d grid of %g) to %s.", len(gdf), n_tiles, tile_crs, tile_size, path)

    west, south, east, north = (float(v) for v in gdf.total_bounds)
    create_markdown_artifact(
        key=JobDbPaths.of(path).artifact_key("tile-grid"),
        description=f"Tile grid written to {path}",
        markdown="\n".join(
            [
                "# Tile grid",
                "",
                "| | |",
                "|---|---|",
                f"| Job DB | `{path}` |",
                f"| Tiles | {n_tiles} |",
                f"| Rows | {len(gdf)}" + (f" ({len(years)} years: {', '.join(map(str, years))})" if years else "") + " |",
                f"| Tiling CRS | EPSG:{tile_crs}, tile size {tile_size:g} |",
                f"| Output CRS | EPSG:{gdf.crs.to_epsg()} |",
                f"| Bounds (output CRS) | W {west:.6f}, S {south:.6f}, E {east:.6f}, N {north:.6f} |",
                f"| Clipped to AOI | {clip} |",
            ]
        ),
    )
    return {"job_db": str(path), "row_count": len(gdf), "tile_count": n_tiles, "written": True}
