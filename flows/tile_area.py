"""Tiling flow: turn an area of interest into a tile grid and write it as a GeoParquet job DB.

`make_tile_grid` does the work as plain Python (testable without Prefect);
`write_job_db` persists it; the `tile-area` flow wires both together for the UI.

Differences with openeo's ``split_area`` (openeo 0.53), on purpose:

* tiles are aligned on multiples of ``tile_size`` in the tiling CRS (not anchored at the
  AOI's lower-left corner), so every tile is full-size and the same tile gets the same
  ``tile_id`` whatever AOI it came from;
* a multipolygon AOI yields each tile once (split_area tiles every part separately,
  which can produce overlapping duplicate tiles);
* tiles are kept only if they share area with the AOI (split_area also keeps tiles that
  merely touch its boundary when the AOI is concave);
* the AOI is densified before reprojection, so curved edges (e.g. a lon/lat bbox seen
  in UTM) are still covered;
* the tiling CRS defaults to the AOI's UTM zone, and the output is reprojected to
  ``output_crs`` (EPSG:4326 by default) while the exact tile bounds in the tiling CRS are
  kept as columns (``tile_crs``, ``tile_west`` ...).
"""
from __future__ import annotations

import json
import math
import os
import re
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import geopandas as gpd
import numpy as np
import pyproj
import shapely
import shapely.geometry
from pydantic import BaseModel, Field
from shapely.geometry.base import BaseGeometry

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

OnExists = Literal["error", "skip", "overwrite"]
JOB_DB_SUFFIXES = (".parquet", ".geoparquet")

# Columns this module generates, plus the ones the openEO job manager owns:
# user constants must not silently clobber them.
GENERATED_COLUMNS = ("tile_id", "year", "tile_crs", "tile_west", "tile_south", "tile_east", "tile_north", "geometry")
RESERVED_COLUMNS = GENERATED_COLUMNS + (
    "id",
    "backend_name",
    "status",
    "start_time",
    "running_start_time",
    "cpu",
    "memory",
    "duration",
    "costs",
)

# Refuse to even build a candidate grid this large: it is almost always a unit mistake
# (e.g. tile_size=10 in metres when 10 km was meant).
_MAX_CANDIDATES = 20_000_000


class TilingError(ValueError):
    """Invalid tiling input (bad AOI, tile size, CRS, columns ...)."""


class BBox(BaseModel):
    """Bounding box of the area of interest (renders as a form in the Prefect UI)."""

    west: float
    south: float
    east: float
    north: float
    crs: Union[int, str] = Field(default=4326, description="CRS of the coordinates (EPSG code or 'EPSG:xxxx').")


AoiInput = Union[BBox, dict, str, Path, BaseGeometry, gpd.GeoDataFrame, gpd.GeoSeries]
ColumnValue = Union[str, int, float, bool, None]


# --------------------------------------------------------------------------- AOI parsing


def _to_crs(value: Any, what: str) -> pyproj.CRS:
    try:
        return pyproj.CRS.from_user_input(value)
    except (pyproj.exceptions.CRSError, TypeError, ValueError) as e:
        raise TilingError(f"Invalid {what} {value!r}: {e}") from e


def _to_epsg(value: Any, what: str) -> int:
    """An integer EPSG code: needed because tile ids and the `tile_crs` column carry it."""
    crs = _to_crs(value, what)
    epsg = crs.to_epsg()
    if epsg is None:
        raise TilingError(f"{what} {value!r} has no EPSG code; give an EPSG code such as 32631.")
    return epsg


def _bbox_geometry(d: dict) -> tuple[BaseGeometry, Optional[pyproj.CRS]]:
    try:
        west, south, east, north = (float(d[k]) for k in ("west", "south", "east", "north"))
    except (TypeError, ValueError) as e:
        raise TilingError(f"Bounding box values must be numbers, got {d!r}.") from e
    if not all(map(math.isfinite, (west, south, east, north))):
        raise TilingError(f"Bounding box values must be finite, got {d!r}.")
    if south >= north:
        raise TilingError(f"Invalid bounding box: south ({south}) must be less than north ({north}).")
    if west >= east:
        # In lon/lat this would mean crossing the antimeridian: not supported (like split_area);
        # split the AOI into two boxes on either side instead.
        raise TilingError(
            f"Invalid bounding box: west ({west}) must be less than east ({east}); "
            "antimeridian-crossing boxes are not supported, pass a MultiPolygon instead."
        )
    crs = d.get("crs")
    return shapely.geometry.box(west, south, east, north), None if crs is None else _to_crs(crs, "bbox crs")


def _geojson_crs(d: dict) -> Optional[pyproj.CRS]:
    # RFC 7946 GeoJSON is lon/lat (the caller's default); honour the legacy (2008) "crs" member.
    legacy = d.get("crs")
    if isinstance(legacy, dict):
        name = (legacy.get("properties") or {}).get("name")
        if name:
            return _to_crs(name, "GeoJSON crs")
    return None


def _read_aoi_file(path: Path) -> gpd.GeoDataFrame:
    if not path.exists():
        raise TilingError(f"AOI file not found: {str(path)!r}.")
    try:
        if path.suffix.lower() in JOB_DB_SUFFIXES:
            return gpd.read_parquet(path)
        return gpd.read_file(path)
    except Exception as e:  # pyogrio/pyarrow raise many types; one clear message is enough
        raise TilingError(f"Could not read AOI file {str(path)!r}: {e}") from e


def load_aoi(aoi: AoiInput, *, aoi_crs: Union[int, str, None] = None) -> tuple[BaseGeometry, pyproj.CRS]:
    """Normalise any supported AOI input into one valid shapely geometry and its CRS.

    Accepted: a `BBox` or bbox dict ``{"west","south","east","north"[,"crs"]}`` (default
    EPSG:4326); a GeoJSON geometry / Feature / FeatureCollection dict (or its JSON text);
    a path to a file geopandas reads (GeoJSON, GeoPackage, shapefile, GeoParquet ...);
    a shapely geometry, GeoSeries or GeoDataFrame. ``aoi_crs`` is the CRS for inputs that
    carry none (bbox without "crs", GeoJSON, shapely geometries: EPSG:4326 if not given;
    files and GeoDataFrames without CRS are an error).
    """
    crs: Optional[pyproj.CRS] = None
    if isinstance(aoi, BBox):
        aoi = aoi.model_dump()
    if isinstance(aoi, str) and aoi.lstrip().startswith("{"):
        # The Prefect UI may hand over pasted GeoJSON as text.
        try:
            aoi = json.loads(aoi)
        except json.JSONDecodeError as e:
            raise TilingError(f"AOI looks like JSON but does not parse: {e}") from e

    if isinstance(aoi, dict):
        kind = aoi.get("type")
        if {"west", "south", "east", "north"} <= aoi.keys():
            geom, crs = _bbox_geometry(aoi)
            geoms = [geom]
        elif kind == "FeatureCollection":
            features = aoi.get("features") or []
            geoms = [shapely.geometry.shape(f["geometry"]) for f in features if f.get("geometry")]
            crs = _geojson_crs(aoi)
        elif kind == "Feature":
            geoms = [shapely.geometry.shape(aoi["geometry"])] if aoi.get("geometry") else []
            crs = _geojson_crs(aoi)
        elif isinstance(kind, str):
            try:
                geoms = [shapely.geometry.shape(aoi)]
            except Exception as e:
                raise TilingError(f"Invalid GeoJSON geometry of type {kind!r}: {e}") from e
            crs = _geojson_crs(aoi)
        else:
            raise TilingError(
                "AOI dict must be a bbox {'west','south','east','north'} or GeoJSON "
                f"(geometry/Feature/FeatureCollection); got keys {sorted(aoi)}."
            )
    elif isinstance(aoi, (str, Path)):
        gdf = _read_aoi_file(Path(aoi))
        geoms, crs = list(gdf.geometry.dropna()), gdf.crs
        if crs is None and aoi_crs is None:
            raise TilingError(f"AOI file {str(aoi)!r} has no CRS; pass aoi_crs.")
    elif isinstance(aoi, (gpd.GeoDataFrame, gpd.GeoSeries)):
        geoms = list(aoi.geometry.dropna()) if isinstance(aoi, gpd.GeoDataFrame) else list(aoi.dropna())
        crs = aoi.crs
        if crs is None and aoi_crs is None:
            raise TilingError("AOI GeoDataFrame/GeoSeries has no CRS; set one or pass aoi_crs.")
    elif isinstance(aoi, BaseGeometry):
        geoms = [aoi]
    else:
        raise TilingError(f"Unsupported AOI type {type(aoi).__name__}.")

    if crs is None:
        crs = _to_crs(aoi_crs, "aoi_crs") if aoi_crs is not None else pyproj.CRS.from_epsg(4326)
    elif not isinstance(crs, pyproj.CRS):
        crs = _to_crs(crs, "AOI crs")

    # make_valid: hand-drawn GeoJSON often self-intersects, which breaks union/intersects.
    geom = shapely.union_all([shapely.make_valid(g) for g in geoms if g is not None and not g.is_empty])
    if geom.is_empty:
        raise TilingError("AOI is empty: it contains no (non-empty) geometry.")
    return geom, crs


def _reproject(geom: BaseGeometry, src: pyproj.CRS, dst: pyproj.CRS) -> BaseGeometry:
    if src == dst:
        return geom
    # Densify first: straight edges in one CRS are curves in another, and reprojecting
    # only the vertices would let the grid miss slivers along long edges.
    minx, miny, maxx, maxy = geom.bounds
    extent = max(maxx - minx, maxy - miny)
    if extent > 0:
        geom = shapely.segmentize(geom, extent / 256)
    out = gpd.GeoSeries([geom], crs=src).to_crs(dst).iloc[0]
    if out is None or out.is_empty or not np.isfinite(out.bounds).all():
        raise TilingError(f"AOI cannot be reprojected to EPSG:{dst.to_epsg()} (outside its area of use?).")
    return out


def _utm_epsg(geom: BaseGeometry, crs: pyproj.CRS) -> int:
    """UTM zone of the AOI's bbox centre, exactly as GeoSeries.estimate_utm_crs() picks it."""
    try:
        return gpd.GeoSeries([geom], crs=crs).estimate_utm_crs().to_epsg()
    except Exception as e:  # e.g. polar AOIs: no UTM zone
        raise TilingError(f"Could not pick a UTM zone for this AOI ({e}); pass tiling_crs explicitly.") from e


# --------------------------------------------------------------------------- grid


def _coord_format(size: float) -> str:
    # One format per grid so ids sort and compare consistently: zero-padded integers for
    # metric grids, as many decimals as the tile size needs otherwise (e.g. 0.25 degrees).
    if float(size).is_integer():
        return "07d"
    decimals = len(f"{size:.6f}".rstrip("0").split(".")[1])
    return f".{decimals}f"


def tile_id(epsg: int, west: float, south: float, size: float) -> str:
    """Stable tile id from the tiling CRS and the tile's lower-left corner: ``32631_E0500000_N5650000``."""
    fmt = _coord_format(size)
    if fmt == "07d":
        west, south = round(west), round(south)  # type: ignore[assignment]
    return f"{epsg}_E{west:{fmt}}_N{south:{fmt}}"


def _grid_tiles(geom: BaseGeometry, size: float) -> tuple[np.ndarray, np.ndarray]:
    """Lower-left corners (x, y) of grid-aligned tiles sharing area (or, for points/lines, any point) with geom."""
    minx, miny, maxx, maxy = geom.bounds
    # round(): reprojection noise must not add a row/column of tiles that only touch the AOI.
    i0, i1 = math.floor(round(minx / size, 9)), math.ceil(round(maxx / size, 9))
    j0, j1 = math.floor(round(miny / size, 9)), math.ceil(round(maxy / size, 9))
    i1, j1 = max(i1, i0 + 1), max(j1, j0 + 1)  # a point/line exactly on a grid line still gets a tile
    if (i1 - i0) * (j1 - j0) > _MAX_CANDIDATES:
        raise TilingError(
            f"tile_size {size} would need a {i1 - i0} x {j1 - j0} candidate grid over this AOI; "
            "is tile_size in the units of the tiling CRS (metres for UTM)?"
        )
    areal = geom.area > 0
    shapely.prepare(geom)
    xs, ys = [], []
    # Row by row, limited to the AOI's extent within that row: keeps big concave AOIs cheap.
    for j in range(j0, j1):
        strip = geom.intersection(shapely.geometry.box(minx, j * size, maxx, (j + 1) * size))
        if strip.is_empty:
            continue
        sx0, _, sx1, _ = strip.bounds
        c0 = max(i0, math.floor(round(sx0 / size, 9)))
        c1 = min(i1, max(math.ceil(round(sx1 / size, 9)), c0 + 1))
        cols = np.arange(c0, c1)
        boxes = shapely.box(cols * size, j * size, (cols + 1) * size, (j + 1) * size)
        hit = shapely.intersects(geom, boxes)
        if areal:
            # Tiles that only share a boundary with the AOI hold no data to process.
            hit &= ~shapely.touches(geom, boxes)
        xs.append(cols[hit] * size)
        ys.append(np.full(int(hit.sum()), j * size, dtype=float))
    if not xs:
        return np.empty(0), np.empty(0)
    return np.concatenate(xs).astype(float), np.concatenate(ys)


def make_tile_grid(
    aoi: AoiInput,
    tile_size: float,
    *,
    tiling_crs: Optional[int] = None,
    output_crs: int = 4326,
    years: Optional[list[int]] = None,
    extra_columns: Optional[dict[str, ColumnValue]] = None,
    clip: bool = False,
    aoi_crs: Union[int, str, None] = None,
    max_tiles: int = 100_000,
) -> gpd.GeoDataFrame:
    """Cover an AOI with a grid of square tiles and return one row per tile (x year).

    Tiles are aligned on multiples of ``tile_size`` in ``tiling_crs`` (default: the AOI's
    UTM zone) and kept only if they share area with the AOI. Columns: ``tile_id``,
    ``year`` (if ``years``), ``tile_crs`` and ``tile_west/south/east/north`` (bounds of the
    row's geometry in the tiling CRS), the ``extra_columns`` constants, and ``geometry``
    (the tile, clipped to the AOI if ``clip``) in ``output_crs``.
    """
    if isinstance(tile_size, bool) or not isinstance(tile_size, (int, float)) or not math.isfinite(tile_size):
        raise TilingError(f"tile_size must be a finite number, got {tile_size!r}.")
    if tile_size <= 0:
        raise TilingError(f"tile_size must be positive, got {tile_size!r}.")
    out_epsg = _to_epsg(output_crs, "output_crs")
    if years is not None:
        if not years:
            raise TilingError("years is empty; pass None for no year column.")
        if len(set(years)) != len(years) or not all(isinstance(y, int) and not isinstance(y, bool) for y in years):
            raise TilingError(f"years must be distinct integers, got {years!r}.")
    extra_columns = dict(extra_columns or {})
    clash = sorted(set(extra_columns) & set(RESERVED_COLUMNS))
    if clash:
        raise TilingError(f"extra_columns may not redefine generated/reserved columns: {clash}.")
    for k, v in extra_columns.items():
        if not isinstance(v, (str, int, float, bool, type(None))):
            raise TilingError(f"extra_columns[{k!r}] must be a scalar (str/int/float/bool/None), got {type(v).__name__}.")

    geom, src_crs = load_aoi(aoi, aoi_crs=aoi_crs)
    epsg = _to_epsg(tiling_crs, "tiling_crs") if tiling_crs is not None else _utm_epsg(geom, src_crs)
    grid_crs = pyproj.CRS.from_epsg(epsg)
    local = _reproject(geom, src_crs, grid_crs)

    xs, ys = _grid_tiles(local, float(tile_size))
    if len(xs) > max_tiles:
        raise TilingError(f"{len(xs)} tiles exceed max_tiles={max_tiles}; use a larger tile_size or raise max_tiles.")
    if len(xs) == 0:  # only possible for degenerate AOIs; say so rather than write an empty DB
        raise TilingError("No tile intersects the AOI.")
    tiles = shapely.box(xs, ys, xs + tile_size, ys + tile_size)
    if clip:
        tiles = shapely.intersection(tiles, local)

    bounds = shapely.bounds(tiles)
    df = gpd.GeoDataFrame(
        {
            "tile_id": [tile_id(epsg, x, y, tile_size) for x, y in zip(xs, ys)],
            "tile_crs": epsg,
            "tile_west": bounds[:, 0],
            "tile_south": bounds[:, 1],
            "tile_east": bounds[:, 2],
            "tile_north": bounds[:, 3],
        },
        geometry=tiles,
        crs=grid_crs,
    )
    if years is not None:
        # tile-major order: all years of a tile next to each other
        df = df.loc[df.index.repeat(len(years))].reset_index(drop=True)
        df.insert(1, "year", np.tile(np.asarray(years, dtype="int64"), len(xs)))
    for k, v in extra_columns.items():
        df[k] = v
    # Keep geometry last: easier to read in tables.
    df = df[[c for c in df.columns if c != "geometry"] + ["geometry"]]
    return df.to_crs(epsg=out_epsg) if out_epsg != epsg else df


# --------------------------------------------------------------------------- writing


def check_job_db_args(job_db: Union[str, Path], on_exists: str) -> Path:
    """Validate the output path/on_exists up front, before any (possibly long) tiling."""
    if on_exists not in ("error", "skip", "overwrite"):
        raise TilingError(f"on_exists must be one of 'error', 'skip', 'overwrite'; got {on_exists!r}.")
    path = Path(job_db)
    if path.suffix.lower() not in JOB_DB_SUFFIXES:
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
        tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}{path.suffix}")
        try:
            _create_db(tmp, gdf)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
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
        key="tile-area-" + (re.sub(r"[^a-z0-9]+", "-", path.stem.lower()).strip("-") or "db"),
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
