"""A PNG map of the job DB's tiles coloured by status, written next to the job DB after a run."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import pandas as pd

log = logging.getLogger(__name__)

STATUS_COLOURS = {
    "not_started": "#d9d9d9", "creating": "#c6dbef", "created": "#9ecae1", "queued_for_start": "#6baed6",
    "queued": "#4292c6", "running": "#fd8d3c", "finished": "#31a354", "error": "#de2d26",
    "start_failed": "#a50f15", "canceled": "#756bb1", "skipped": "#969696",
}


def tile_map_path(job_db: str | Path) -> Path:
    job_db = Path(job_db)
    return job_db.with_name(f"{job_db.stem}_map.png")


def write_tile_map(df: pd.DataFrame, job_db: str | Path) -> Optional[str]:
    """Draw each row's geometry coloured by its status; None (and nothing written) without geometry."""
    geometry = df.get("geometry") if hasattr(df, "get") else None
    if geometry is None or getattr(geometry.dtype, "name", "") != "geometry" or geometry.isna().all():
        return None
    try:
        return str(_draw(df, geometry, tile_map_path(job_db)))
    except Exception as exc:  # noqa: BLE001 - a map is a nice-to-have; never fail a run over it
        log.warning("tile map not written: %s", exc)
        return None


def _draw(df: pd.DataFrame, geometry, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PatchCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Polygon

    figure = Figure(figsize=(8, 8), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    patches, colours, points = [], [], []
    for geom, status in zip(geometry, df["status"].astype(str)):
        if geom is None or geom.is_empty:
            continue
        colour = STATUS_COLOURS.get(status, "#000000")
        parts = getattr(geom, "geoms", [geom])
        for part in parts:
            if part.geom_type == "Polygon":
                patches.append(Polygon(list(part.exterior.coords), closed=True))
                colours.append(colour)
            else:
                points.append((part.centroid.x, part.centroid.y, colour))
    if patches:
        ax.add_collection(PatchCollection(patches, facecolors=colours, edgecolors="white", linewidths=0.5))
    if points:
        ax.scatter([p[0] for p in points], [p[1] for p in points], c=[p[2] for p in points], s=12)
    ax.autoscale_view()
    ax.set_aspect("equal")
    crs = getattr(geometry, "crs", None)
    ax.set_title(f"{path.stem[:-4]}: {len(df)} rows" + (f" ({crs.to_string()})" if crs is not None else ""))
    counts = df["status"].astype(str).value_counts()
    ax.legend(handles=[Patch(color=STATUS_COLOURS.get(s, "#000000"), label=f"{s} ({n})") for s, n in counts.items()],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    figure.savefig(tmp, format="png")
    tmp.replace(path)
    return path
