"""The tile grid: square tiles aligned on multiples of the tile size in a tiling CRS, with
stable ids, covering an area of interest (see `flows/tiling/aoi.py` for the accepted inputs).

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
  ``output_crs`` (EPSG:4326 by default) while the tile bounds are kept as columns both in
  EPSG:4326 (``west``, ``south``, ``east``, ``north``: what openeo-style callbacks read) and
  in the tiling CRS (``tile_crs``, ``tile_west`` ...).
"""
from __future__ import annotations

import math
from typing import Optional, Union

import geopandas as gpd
import numpy as np
import pyproj
import shapely
from shapely.geometry.base import BaseGeometry

from flows.tiling.aoi import AoiInput, TilingError, load_aoi, reproject, to_epsg, utm_epsg

ColumnValue = Union[str, int, float, bool, None]

# Columns this module generates, plus the ones the openEO job manager owns:
# user constants must not silently clobber them.
GENERATED_COLUMNS = (
    "tile_id", "year", "west", "south", "east", "north",
    "tile_crs", "tile_west", "tile_south", "tile_east", "tile_north", "geometry",
)
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
    ``year`` (if ``years``), ``west/south/east/north`` (bounds of the row's geometry in
    EPSG:4326, as openeo's job DB examples use them), ``tile_crs`` and
    ``tile_west/south/east/north`` (the same bounds in the tiling CRS), the ``extra_columns``
    constants, and ``geometry`` (the tile, clipped to the AOI if ``clip``) in ``output_crs``.
    """
    if isinstance(tile_size, bool) or not isinstance(tile_size, (int, float)) or not math.isfinite(tile_size):
        raise TilingError(f"tile_size must be a finite number, got {tile_size!r}.")
    if tile_size <= 0:
        raise TilingError(f"tile_size must be positive, got {tile_size!r}.")
    out_epsg = to_epsg(output_crs, "output_crs")
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
    epsg = to_epsg(tiling_crs, "tiling_crs") if tiling_crs is not None else utm_epsg(geom, src_crs)
    grid_crs = pyproj.CRS.from_epsg(epsg)
    local = reproject(geom, src_crs, grid_crs)

    xs, ys = _grid_tiles(local, float(tile_size))
    if len(xs) > max_tiles:
        raise TilingError(f"{len(xs)} tiles exceed max_tiles={max_tiles}; use a larger tile_size or raise max_tiles.")
    if len(xs) == 0:  # only possible for degenerate AOIs; say so rather than write an empty DB
        raise TilingError("No tile intersects the AOI.")
    tiles = shapely.box(xs, ys, xs + tile_size, ys + tile_size)
    if clip:
        tiles = shapely.intersection(tiles, local)

    bounds = shapely.bounds(tiles)
    lonlat = lonlat_bounds(tiles, grid_crs, float(tile_size))
    df = gpd.GeoDataFrame(
        {
            "tile_id": [tile_id(epsg, x, y, tile_size) for x, y in zip(xs, ys)],
            "west": lonlat[:, 0],
            "south": lonlat[:, 1],
            "east": lonlat[:, 2],
            "north": lonlat[:, 3],
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




def lonlat_bounds(tiles: np.ndarray, crs: pyproj.CRS, tile_size: float) -> np.ndarray:
    """(west, south, east, north) of each tile in EPSG:4326, covering the whole tile.

    Edges are densified first: a straight UTM edge is a curve in lon/lat, and the bounds of
    the reprojected corners alone would cut slivers off the tile.
    """
    if crs.to_epsg() == 4326:
        return shapely.bounds(tiles)
    dense = shapely.segmentize(tiles, tile_size / 16)
    return np.asarray(gpd.GeoSeries(dense, crs=crs).to_crs(epsg=4326).bounds.to_numpy(), dtype=float)
