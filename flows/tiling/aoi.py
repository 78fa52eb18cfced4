"""Areas of interest: every accepted AOI input (bbox, GeoJSON, vector file, shapely, GeoPandas)
normalised into one valid shapely geometry and its CRS, plus the CRS helpers the grid needs."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional, Union

import geopandas as gpd
import numpy as np
import pyproj
import shapely
import shapely.geometry
from pydantic import BaseModel, Field
from shapely.geometry.base import BaseGeometry

PARQUET_SUFFIXES = (".parquet", ".geoparquet")


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


def to_crs(value: Any, what: str) -> pyproj.CRS:
    try:
        return pyproj.CRS.from_user_input(value)
    except (pyproj.exceptions.CRSError, TypeError, ValueError) as e:
        raise TilingError(f"Invalid {what} {value!r}: {e}") from e


def to_epsg(value: Any, what: str) -> int:
    """An integer EPSG code: needed because tile ids and the `tile_crs` column carry it."""
    crs = to_crs(value, what)
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
    return shapely.geometry.box(west, south, east, north), None if crs is None else to_crs(crs, "bbox crs")


def _geojson_crs(d: dict) -> Optional[pyproj.CRS]:
    # RFC 7946 GeoJSON is lon/lat (the caller's default); honour the legacy (2008) "crs" member.
    legacy = d.get("crs")
    if isinstance(legacy, dict):
        name = (legacy.get("properties") or {}).get("name")
        if name:
            return to_crs(name, "GeoJSON crs")
    return None


def _read_aoi_file(path: Path) -> gpd.GeoDataFrame:
    if not path.exists():
        raise TilingError(f"AOI file not found: {str(path)!r}.")
    try:
        if path.suffix.lower() in PARQUET_SUFFIXES:
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
        crs = to_crs(aoi_crs, "aoi_crs") if aoi_crs is not None else pyproj.CRS.from_epsg(4326)
    elif not isinstance(crs, pyproj.CRS):
        crs = to_crs(crs, "AOI crs")

    # make_valid: hand-drawn GeoJSON often self-intersects, which breaks union/intersects.
    geom = shapely.union_all([shapely.make_valid(g) for g in geoms if g is not None and not g.is_empty])
    if geom.is_empty:
        raise TilingError("AOI is empty: it contains no (non-empty) geometry.")
    return geom, crs


def reproject(geom: BaseGeometry, src: pyproj.CRS, dst: pyproj.CRS) -> BaseGeometry:
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


def utm_epsg(geom: BaseGeometry, crs: pyproj.CRS) -> int:
    """UTM zone of the AOI's bbox centre, exactly as GeoSeries.estimate_utm_crs() picks it."""
    try:
        return gpd.GeoSeries([geom], crs=crs).estimate_utm_crs().to_epsg()
    except Exception as e:  # e.g. polar AOIs: no UTM zone
        raise TilingError(f"Could not pick a UTM zone for this AOI ({e}); pass tiling_crs explicitly.") from e
