"""What the flow knows of a row for its STAC item: footprint in EPSG:4326, period, provenance.

Computed by the flow (which owns the job DB) and handed to the download task as plain values.
All rows are reprojected at once, the first time one is asked for (10 000 rows: one vectorised
`to_crs`, not one transformer per row).
"""
from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any, Dict, Mapping, Optional
from urllib.parse import urlsplit, urlunsplit

import pandas as pd

ROW_TIME_COLUMNS = ("year", "start_date", "end_date")


def campaign_id(job_db: str, campaign: Optional[str] = None) -> str:
    """The collection id: the campaign's name if given, else the job DB's stem (`jobs.parquet` -> `jobs`)."""
    name = campaign or PurePosixPath(urlsplit(str(job_db)).path or str(job_db)).stem or "results"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "results"


def without_credentials(location: str) -> str:
    """A job DB location safe to publish: `postgresql://user:secret@host/db` -> `postgresql://host/db`."""
    parts = urlsplit(str(location))
    if not parts.scheme or "@" not in parts.netloc:
        return str(location)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


class Footprints:
    """`of(row, values)` -> the footprint dict `tasks.results.items.build_item` takes."""

    def __init__(self, df: pd.DataFrame, job_db: str, campaign: Optional[str] = None):
        self._df = df
        self.collection_id = campaign_id(job_db, campaign)
        self.job_db = without_credentials(job_db)
        self._shapes: Optional[Dict[int, Any]] = None

    def _geometries(self) -> Dict[int, Any]:
        if self._shapes is None:
            from flows.report.tile_map import row_geometries

            series = row_geometries(self._df)
            if series is None:
                self._shapes = {}
            else:
                if series.crs is not None and not series.crs.equals("EPSG:4326"):
                    series = series.to_crs("EPSG:4326")
                self._shapes = {int(i): g for i, g in series.items() if g is not None and not g.is_empty}
        return self._shapes

    def of(self, row: int, values: Mapping[str, Any]) -> Dict[str, Any]:
        import shapely

        shape = self._geometries().get(int(row))
        footprint: Dict[str, Any] = {
            "row": {k: _plain(values.get(k)) for k in ROW_TIME_COLUMNS if _plain(values.get(k)) is not None},
            "provenance": {
                "openeo:job_id": values.get("id"),
                "openeo:backend": values.get("backend_name"),
                "openeo:campaign": self.collection_id,
                "openeo:job_db": self.job_db,
                "openeo:row": int(row),
                "openeo:tile_id": _plain(values.get("tile_id")),
                "openeo:year": _plain(values.get("year")),
                "openeo:attempt": _plain(values.get("attempt")) or 1,
            },
        }
        if shape is not None:
            footprint["geometry"] = shapely.geometry.mapping(shape)
            footprint["bbox"] = [float(v) for v in shape.bounds]
        return footprint


def _plain(value: Any) -> Any:
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value
