"""The tile map of a job DB: a PNG and an interactive HTML map beside it, tiles coloured by status.

One polygon per tile, coloured by its worst status (failures first, then work in progress,
then waiting, finished last), so a failed year is never hidden under a finished one. When
tiles have rows for several years the PNG gets one panel per year after the overview.
Tiles come from the `geometry` column, or from `west/south/east/north` (EPSG:4326) when a DB
has only those (openeo's CSV examples). A basemap is drawn only from a local vector file named
by `OPENEO_JOBS_BASEMAP` (e.g. Natural Earth countries); nothing is fetched from the internet.
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from tasks.results.storage import ResultsRoot, is_remote
from jobdb import JobDbPaths
from jobdb.atomic import atomic_path
from jobdb.status import (
    CANCELED, CREATED, CREATING, ERROR, FINISHED, NOT_STARTED, QUEUED, QUEUED_FOR_START, RUNNING, SKIPPED,
    START_FAILED,
)

log = logging.getLogger(__name__)

# Worst first: what needs attention, then work in progress, then waiting, then done.
WORST_FIRST: Sequence[str] = (
    ERROR, START_FAILED, CANCELED,
    RUNNING, QUEUED, QUEUED_FOR_START, CREATED, CREATING,
    NOT_STARTED, SKIPPED, FINISHED,
)
STATUS_COLOURS = {
    ERROR: "#de2d26", START_FAILED: "#a50f15", CANCELED: "#756bb1",
    RUNNING: "#fd8d3c", QUEUED: "#4292c6", QUEUED_FOR_START: "#6baed6", CREATED: "#9ecae1",
    CREATING: "#c6dbef", NOT_STARTED: "#d9d9d9", SKIPPED: "#969696", FINISHED: "#31a354",
}
UNKNOWN_COLOUR = "#000000"
BASEMAP_ENV = "OPENEO_JOBS_BASEMAP"
MAX_YEAR_PANELS = 11  # + the overview: at most a 3 x 4 grid of panels
POPUP_ROWS = 6  # rows listed in one tile's popup, then "and N more"


def write_tile_map(df: pd.DataFrame, job_db: str | Path, maps_root: Optional[str] = None) -> Optional[Dict[str, str]]:
    """Write `<stem>_map.png` and `<stem>_map.html` beside the job DB, or under `maps_root` when that
    is an fsspec URL (the results on object storage: the maps go with them); returns their paths/URLs.

    None (and nothing written) when the rows have no geometry; a failure to draw is logged
    and never fails a run.
    """
    tiles = tiles_with_status(df)
    if tiles is None:
        return None
    paths = JobDbPaths.of(job_db)
    remote = ResultsRoot(maps_root) if maps_root and is_remote(maps_root) else None
    written: Dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="tile-map-") as scratch:
        for kind, path, draw in (("png", paths.map_png, draw_png), ("html", paths.map_html, write_html)):
            try:
                if remote is None:
                    draw(tiles, path, title=paths.db.name)
                    written[kind] = str(path)
                    continue
                local = Path(scratch) / path.name
                draw(tiles, local, title=paths.db.name)
                remote.write_bytes(path.name, local.read_bytes())  # one PUT: whole or not at all
                written[kind] = remote.url_of(path.name)
            except Exception as exc:  # noqa: BLE001 - a map is a nice-to-have; never fail a run over it
                log.warning("tile map %s not written: %s", path.name, exc)
    return written or None


# --- data ----------------------------------------------------------------------------------
def row_geometries(df: pd.DataFrame):
    """A GeoSeries of the rows' geometries, or None when the DB has neither geometry nor bounds."""
    import geopandas as gpd
    import shapely

    geometry = df.get("geometry")
    if geometry is not None and getattr(geometry.dtype, "name", "") == "geometry" and not geometry.isna().all():
        return gpd.GeoSeries(geometry, crs=getattr(geometry, "crs", None), index=df.index)
    bounds = ["west", "south", "east", "north"]
    if all(c in df.columns for c in bounds):
        values = df[bounds].apply(pd.to_numeric, errors="coerce")
        complete = values.notna().all(axis=1)
        if complete.any():
            boxes = np.full(len(df), None, dtype=object)
            v = values[complete].to_numpy(dtype=float)
            boxes[complete.to_numpy()] = shapely.box(v[:, 0], v[:, 1], v[:, 2], v[:, 3])
            return gpd.GeoSeries(boxes, crs="EPSG:4326", index=df.index)
    return None


def tiles_with_status(df: pd.DataFrame):
    """One row per tile x year (year None without a `year` column): geometry, worst status, rows.

    A tile is its `tile_id`, or its geometry when the DB has no tile_id.
    """
    import geopandas as gpd

    geometry = row_geometries(df)
    if geometry is None:
        return None
    rows = pd.DataFrame(index=df.index)
    rows["status"] = df["status"].astype(str)
    rows["tile"] = df["tile_id"].astype(str) if "tile_id" in df.columns else bounds_labels(geometry)
    rows["year"] = df["year"] if "year" in df.columns else None
    for column in ("id", "backend_name", "error_message"):
        rows[column] = df[column] if column in df.columns else None
    rows["geometry"] = geometry
    rows = rows[geometry.notna() & ~geometry.is_empty]
    rank = {s: i for i, s in enumerate(WORST_FIRST)}
    rows["rank"] = rows["status"].map(rank).fillna(-1).astype(int)  # unknown statuses sort worst
    rows["label"] = [popup_line(r) for r in rows.itertuples(index=False)]
    return gpd.GeoDataFrame(rows, geometry="geometry", crs=geometry.crs)


def bounds_labels(geometry) -> List[str]:
    """A readable tile name for DBs without tile_id: its bounds (equal boxes get equal names)."""
    return [f"W{b[0]:.5g} S{b[1]:.5g} E{b[2]:.5g} N{b[3]:.5g}" if np.isfinite(b).all() else "?"
            for b in geometry.bounds.to_numpy()]


def popup_line(row) -> str:
    parts = [str(row.year) if row.year is not None and not pd.isna(row.year) else "", str(row.status)]
    if isinstance(row.id, str) and row.id:
        parts.append(f"job {row.id}")
    if isinstance(row.backend_name, str) and row.backend_name:
        parts.append(f"on {row.backend_name}")
    line = " ".join(p for p in parts if p)
    if isinstance(row.error_message, str) and row.error_message:
        line += f": {row.error_message[:200]}"
    return line


def worst_per_tile(tiles) -> "pd.DataFrame":
    """One row per tile: its geometry and worst status over all its rows, and a popup text."""
    ordered = tiles.sort_values(["tile", "rank"], kind="stable")
    first = ordered.groupby("tile", sort=False).head(1).set_index("tile")
    counts = ordered.groupby("tile", sort=False).size()
    details = ordered.groupby("tile", sort=False)["label"].agg(
        lambda labels: "<br>".join(list(labels)[:POPUP_ROWS])
        + (f"<br>… and {len(labels) - POPUP_ROWS} more" if len(labels) > POPUP_ROWS else "")
    )
    out = first[["geometry", "status"]].copy()
    out["rows"] = counts
    out["details"] = details
    return out.reset_index()


# --- PNG -----------------------------------------------------------------------------------
def map_panels(tiles) -> List[tuple]:
    """(title, frame with geometry and status) per panel: the worst status of each tile over all
    its rows, then, when tiles have rows for several years, one panel per year (worst status of
    the tile's rows in that year)."""
    panels = [("all rows: worst status per tile", worst_per_tile(tiles))]
    years = sorted(tiles["year"].dropna().unique()) if tiles["year"].notna().any() else []
    if len(years) > 1:
        panels += [(str(y), worst_per_tile(tiles[tiles["year"] == y])) for y in years[:MAX_YEAR_PANELS]]
    return panels


def draw_png(tiles, path: Path, title: str = "") -> Path:
    """Overview (worst status per tile) and, for several years, one panel per year."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    panels = map_panels(tiles)
    overview = panels[0][1]
    minx, miny, maxx, maxy = tiles.total_bounds
    pad = 0.02 * max(maxx - minx, maxy - miny, 1e-9)
    bounds = (minx - pad, miny - pad, maxx + pad, maxy + pad)
    # Degrees: one degree of longitude is cos(latitude) of one of latitude on the ground.
    stretch = 1.0 if not _is_geographic(tiles) else 1 / max(math.cos(math.radians((miny + maxy) / 2)), 0.05)
    aspect = stretch * (bounds[3] - bounds[1]) / max(bounds[2] - bounds[0], 1e-12)
    ncols = min(len(panels), 3 if len(panels) > 4 else len(panels))
    nrows = math.ceil(len(panels) / ncols)
    panel_width = 4.5 if len(panels) > 1 else 7.0
    panel_width = min(panel_width, 8.0 / aspect)  # tall areas: narrower panels, not taller ones
    panel_height = panel_width * aspect
    figure = Figure(figsize=(panel_width * ncols + 2.2, panel_height * nrows + 0.5 * nrows + 0.5), dpi=100)
    FigureCanvasAgg(figure)
    basemap = load_basemap(tiles.crs, bounds)
    for n, (label, frame) in enumerate(panels):
        ax = figure.add_subplot(nrows, ncols, n + 1)
        if basemap is not None:
            basemap.plot(ax=ax, facecolor="none", edgecolor="#bdbdbd", linewidth=0.6, zorder=0)
        draw_tiles(ax, frame.geometry.to_numpy(), frame["status"].to_numpy())
        ax.set_xlim(bounds[0], bounds[2])
        ax.set_ylim(bounds[1], bounds[3])
        ax.set_aspect(stretch)
        ax.set_title(label, fontsize=10)
        ax.tick_params(labelsize=7)
    counts = tiles["status"].value_counts()
    order = [s for s in WORST_FIRST if s in counts.index] + [s for s in counts.index if s not in WORST_FIRST]
    figure.legend(handles=[Patch(color=STATUS_COLOURS.get(s, UNKNOWN_COLOUR), label=f"{s} ({counts[s]})") for s in order],
                  loc="upper right", fontsize=8, title="rows per status", title_fontsize=8)
    crs = f" ({tiles.crs.to_string()})" if tiles.crs is not None else ""
    figure.suptitle(f"{title}: {len(overview)} tiles, {len(tiles)} rows{crs}", fontsize=11)
    figure.tight_layout(rect=(0, 0, 1 - 2.0 / figure.get_figwidth(), 0.97))
    with atomic_path(path, durable=False) as tmp:  # drawn anew by every run: no disk flush needed
        figure.savefig(tmp, format="png")
    return path


def draw_tiles(ax, geometries: np.ndarray, statuses: np.ndarray) -> None:
    """Polygons as one PolyCollection (fast for 10 000s of tiles), other shapes as points."""
    import shapely
    from matplotlib.collections import PolyCollection

    colours = np.array([STATUS_COLOURS.get(s, UNKNOWN_COLOUR) for s in statuses], dtype=object)
    parts, owner = shapely.get_parts(geometries, return_index=True)
    is_polygon = shapely.get_type_id(parts) == 3
    rings = shapely.get_exterior_ring(parts[is_polygon])
    coords, ring_index = shapely.get_coordinates(rings, return_index=True)
    if len(rings):
        splits = np.flatnonzero(np.diff(ring_index)) + 1
        ax.add_collection(PolyCollection(np.split(coords, splits), facecolors=list(colours[owner[is_polygon]]),
                                         edgecolors="white", linewidths=0.3 if len(rings) < 2000 else 0.0))
    others = parts[~is_polygon]
    if len(others):
        centroids = shapely.get_coordinates(shapely.centroid(others))
        ax.scatter(centroids[:, 0], centroids[:, 1], c=list(colours[owner[~is_polygon]]), s=10)


def load_basemap(crs, bounds):
    """Outlines from the local vector file in $OPENEO_JOBS_BASEMAP, clipped to the map; else None."""
    source = os.environ.get(BASEMAP_ENV)
    if not source:
        return None
    try:
        import geopandas as gpd
        import shapely

        base = gpd.read_file(source)
        if crs is not None and base.crs is not None:
            base = base.to_crs(crs)
        base = base.clip(shapely.box(*bounds))
        return base if len(base) else None
    except Exception as exc:  # noqa: BLE001 - no basemap is better than no map
        log.warning("basemap %s not drawn: %s", source, exc)
        return None


# --- HTML ----------------------------------------------------------------------------------
def write_html(tiles, path: Path, title: str = "") -> Path:
    """An interactive folium map: one polygon per tile, worst status colour, popup with its rows.

    The page loads Leaflet and OpenStreetMap tiles in the viewer's browser; this process
    fetches nothing. Offline (no Leaflet) the page shows the same tiles as an inline SVG instead
    (flows/report/tile_svg.py). (folium directly: `GeoDataFrame.explore()` would also need mapclassify.)
    """
    from flows.report.tile_svg import offline_svg_block

    import folium
    import shapely

    overview = worst_per_tile(tiles)
    overview["geometry"] = shapely.set_precision(overview.geometry.to_numpy(), 1e-6 if _is_geographic(tiles) else 0.01)
    overview = overview.set_geometry("geometry").set_crs(tiles.crs, allow_override=True)
    if tiles.crs is not None and tiles.crs.to_epsg() != 4326:
        overview = overview.to_crs(epsg=4326)
    overview["colour"] = [STATUS_COLOURS.get(s, UNKNOWN_COLOUR) for s in overview["status"]]
    overview = overview[["tile", "status", "rows", "details", "colour", "geometry"]]
    minx, miny, maxx, maxy = overview.total_bounds
    fmap = folium.Map(tiles="OpenStreetMap", control_scale=True)
    fmap.fit_bounds([[miny, minx], [maxy, maxx]])
    folium.GeoJson(
        overview.to_json(drop_id=True),
        name=title or "tiles",
        style_function=lambda feature: {"fillColor": feature["properties"]["colour"], "color": "white",
                                        "weight": 0.5, "fillOpacity": 0.7},
        tooltip=folium.GeoJsonTooltip(["tile", "status"]),
        popup=folium.GeoJsonPopup(["tile", "status", "rows", "details"]),
    ).add_to(fmap)
    folium.LayerControl().add_to(fmap)
    fmap.get_root().html.add_child(folium.Element(offline_svg_block(overview, STATUS_COLOURS, title)))
    with atomic_path(path, durable=False) as tmp:
        fmap.save(str(tmp))
    return path


def _is_geographic(tiles) -> bool:
    return tiles.crs is None or tiles.crs.is_geographic


def html_features(path: Path) -> List[dict]:
    """The GeoJSON features embedded in a map written by `write_html` (for tests and checks)."""
    import json
    import re

    text = Path(path).read_text()
    decoder = json.JSONDecoder()
    features: List[dict] = []
    for match in re.finditer(r"geo_json_[0-9a-f]+_add\(", text):
        document, _ = decoder.raw_decode(text, match.end())
        features += document.get("features", [])
    return features
