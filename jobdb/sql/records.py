"""Rows between a job DB frame (CSV / Parquet / GeoParquet) and the SQL store's tables.

A record is one row as plain python values keyed by column name, the way the flow sees it; in the
table its fixed columns are real columns, the rest sits in `extra` (JSON) and the geometry is WKB.
"""
from __future__ import annotations

import datetime as dt
import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import pandas as pd

from jobdb.schema import GEOMETRY_COLUMN, JobDbError, normalize_df, validate_df
from jobdb.sql.schema import FIXED_COLUMNS

INTERNAL = ("campaign", "row_index", "extra", "account", "owner")


def json_safe(value: Any) -> Any:
    """A value JSON can carry: numpy scalars -> python, NaN/NaT -> None, times -> RFC3339 text."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (pd.Timestamp, dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def crs_text(df: pd.DataFrame) -> Optional[str]:
    crs = getattr(df, "crs", None) if GEOMETRY_COLUMN in df.columns else None
    if crs is None:
        return None
    authority = crs.to_authority()
    return f"{authority[0]}:{authority[1]}" if authority else crs.to_wkt()


def frame_to_rows(df: pd.DataFrame, campaign: str, source: str) -> Tuple[List[Dict[str, Any]], List[str], Optional[str]]:
    """Validate a job DB frame; return its table rows, its column order and its CRS."""
    import shapely

    df = normalize_df(df, source)
    validate_df(df, source)
    columns = [str(c) for c in df.columns]
    crs = crs_text(df)
    geometry: List[Optional[bytes]] = [None] * len(df)
    if GEOMETRY_COLUMN in df.columns:
        values = df[GEOMETRY_COLUMN].to_numpy(dtype=object)
        if any(isinstance(v, str) for v in values):
            values = shapely.from_wkt(np.array([v if isinstance(v, str) else None for v in values], dtype=object))
        geometry = [None if g is None else bytes(shapely.to_wkb(g)) for g in values]
    extra_columns = [c for c in columns if c not in FIXED_COLUMNS and c != GEOMETRY_COLUMN]
    plain = pd.DataFrame(df).drop(columns=[GEOMETRY_COLUMN], errors="ignore")
    fixed = {c: safe_column(plain[c]) if c in plain.columns else [None] * len(df) for c in FIXED_COLUMNS}
    fixed["attempt"] = [None if v is None else int(v) for v in fixed["attempt"]]
    extras = {c: safe_column(plain[c]) for c in extra_columns}
    rows = []
    for i in range(len(df)):
        row = {c: fixed[c][i] for c in FIXED_COLUMNS}
        row.update(campaign=campaign, row_index=i, geometry=geometry[i],
                   extra={c: extras[c][i] for c in extra_columns}, account=None, owner=None)
        rows.append(row)
    return rows, columns, crs


def safe_column(series: pd.Series) -> List[Any]:
    """`json_safe` of every value of a column; whole columns of plain numbers, or of nothing, at once."""
    if not isinstance(series.dtype, np.dtype):  # pandas' own dtypes (Int64, string, ...): pd.NA inside
        return [json_safe(v) for v in series.tolist()]
    if series.dtype.kind in "iub":
        return series.tolist()  # python ints / bools: nothing to convert, nothing missing
    if series.dtype.kind == "f":
        return [None if v != v else v for v in series.tolist()]  # NaN -> None
    if series.isna().all():
        return [None] * len(series)
    return [json_safe(v) for v in series.tolist()]


def record_of(db_row: Mapping[str, Any]) -> Dict[str, Any]:
    """A table row -> the flow's view: fixed columns and the campaign's own columns, one dict."""
    record = {c: db_row[c] for c in FIXED_COLUMNS}
    record.update(db_row.get("extra") or {})
    record[GEOMETRY_COLUMN] = db_row.get("geometry")
    return record


def table_values(record: Mapping[str, Any]) -> Dict[str, Any]:
    """The flow's view of a row -> the table's columns (fixed, extra; geometry is never written)."""
    values = {c: json_safe(record.get(c)) for c in FIXED_COLUMNS}
    if values["attempt"] is not None:
        values["attempt"] = int(values["attempt"])
    if values["costs"] is not None:
        values["costs"] = float(values["costs"])
    values["extra"] = {k: json_safe(v) for k, v in record.items()
                       if k not in FIXED_COLUMNS and k != GEOMETRY_COLUMN}
    return values


def decode_geometry(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        import shapely

        return shapely.from_wkb(bytes(value))
    return value


def rows_to_frame(db_rows: Iterable[Mapping[str, Any]], columns: List[str], crs: Optional[str]) -> pd.DataFrame:
    """Table rows (in row order) -> the job DB frame, columns in their original order, geometry
    as a GeoSeries with the campaign's CRS."""
    records = [record_of(r) for r in db_rows]
    has_geometry = GEOMETRY_COLUMN in columns
    order = list(columns)
    for record in records:
        for key, value in record.items():
            if key not in order and value is not None and key != GEOMETRY_COLUMN:
                order.append(key)
    df = pd.DataFrame.from_records(records, columns=order) if records else pd.DataFrame(columns=order)
    df["costs"] = pd.to_numeric(df["costs"], errors="coerce").astype("float64")
    if not has_geometry:
        return df
    import geopandas
    import shapely

    geoms = [None if v is None else shapely.from_wkb(bytes(v)) for v in df[GEOMETRY_COLUMN]]
    df[GEOMETRY_COLUMN] = geopandas.GeoSeries(geoms, index=df.index, crs=crs)
    return geopandas.GeoDataFrame(df, geometry=GEOMETRY_COLUMN, crs=crs)


def check_rows_known(updates: Mapping[int, Any], total: int, name: str) -> None:
    unknown = [r for r in updates if not (isinstance(r, (int, np.integer)) and not isinstance(r, bool)
                                          and 0 <= r < total)]
    if unknown:
        raise JobDbError(f"{name}: update for unknown row(s) {unknown[:10]} (campaign has {total} rows)")
