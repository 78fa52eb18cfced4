"""Reading and (atomically) writing job databases as CSV, Parquet and GeoParquet.

Formats follow openeo's CsvJobDatabase/ParquetJobDatabase so files stay readable both ways:
- CSV: `to_csv(index=False)`, geometries as WKT. CSV cannot carry a CRS: a CSV db read back
  with geometries is a GeoDataFrame without CRS.
- Parquet: `to_parquet(index=False)`; a GeoDataFrame is written as GeoParquet (`geo` metadata,
  CRS kept) and detected on read through that metadata, like openeo does.

Writes go through jobdb/atomic.py: a temp file `.<name>.<pid>.tmp` in the same directory, fsync'ed,
then `os.replace`d onto the target, so a reader (or a crash) only ever sees a complete old or new file.
A process killed mid-write may leave its temp file behind; it never matches a db extension, so it
is never mistaken for the db. `remove_stale_temp_files` deletes those whose writer pid is gone.
"""
from __future__ import annotations

import csv
import os
import re
import threading
from pathlib import Path

import pandas as pd

from jobdb.atomic import atomic_path
from jobdb.schema import GEOMETRY_COLUMN, JobDbError, check_unique_columns, dtype_mapping, format_rows

CSV_SUFFIXES = frozenset({".csv"})
PARQUET_SUFFIXES = frozenset({".parquet", ".geoparquet"})

# One write at a time per process: all threads would otherwise share the same temp file name.
_write_lock = threading.Lock()


def db_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise JobDbError(f"{path}: unknown job database extension {path.suffix!r} (use .csv, .parquet or .geoparquet)")


def is_geodataframe(df: pd.DataFrame) -> bool:
    try:
        import geopandas
    except ImportError:  # pragma: no cover - geopandas is a project dependency
        return False
    return isinstance(df, geopandas.GeoDataFrame)


def read_db(path: Path) -> pd.DataFrame:
    """Read a job db file; every failure becomes a JobDbError naming the file. Never writes."""
    fmt = db_format(path)
    if not path.exists():
        raise JobDbError(f"{path}: job database does not exist")
    if not path.is_file():
        raise JobDbError(f"{path}: job database is not a regular file")
    if path.stat().st_size == 0:
        raise JobDbError(f"{path}: job database file is empty")
    df = _read_csv(path) if fmt == "csv" else _read_parquet(path)
    return df


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        with path.open("rb") as f:
            if b"\x00" in f.read():
                raise JobDbError(f"{path}: not a text CSV file (contains NUL bytes)")
        # pandas silently renames a repeated header "x" to "x.1", so check the raw header.
        with path.open(newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), None)
        if not header:
            raise JobDbError(f"{path}: CSV file has no header")
        check_unique_columns(header, path)
        try:
            df = pd.read_csv(path, dtype=dtype_mapping(), encoding="utf-8")
        except ValueError:
            _locate_bad_float(path)
            raise
    except JobDbError:
        raise
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, csv.Error) as e:
        raise JobDbError(f"{path}: unreadable CSV job database: {e}") from e
    if not isinstance(df.index, pd.RangeIndex):
        # pandas turns the first field into the index when rows have more fields than the header
        raise JobDbError(f"{path}: CSV rows have more fields than the header")
    if GEOMETRY_COLUMN in df.columns:
        df = _parse_wkt_geometry(df, path)
    return df


def _locate_bad_float(path: Path) -> None:
    """pandas' float parse error names no row: re-read float columns as text to name it."""
    floats = [c for c, t in dtype_mapping().items() if t.startswith("float")]
    raw = pd.read_csv(path, dtype={**dtype_mapping(), **{c: "object" for c in floats}}, encoding="utf-8")
    for col in floats:
        if col in raw.columns:
            bad = raw[col].notna() & pd.to_numeric(raw[col], errors="coerce").isna()
            if bad.any():
                raise JobDbError(f"{path}: non-numeric value(s) in column {col!r} at {format_rows(raw.index[bad])}")


def _parse_wkt_geometry(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    import geopandas
    import shapely

    raw = df[GEOMETRY_COLUMN]
    present = raw.notna()
    if not present.any():
        return df  # nothing to decode; keep a plain frame like openeo would
    not_str = present & ~raw.map(lambda v: isinstance(v, str))
    geoms = shapely.from_wkt(raw.where(present & ~not_str, None).to_numpy(dtype=object), on_invalid="ignore")
    bad = (present & pd.Series(pd.isna(geoms), index=df.index)) | not_str
    if bad.any():
        raise JobDbError(f"{path}: unparseable WKT in column {GEOMETRY_COLUMN!r} at {format_rows(df.index[bad])}")
    df = df.copy()
    df[GEOMETRY_COLUMN] = geopandas.GeoSeries(geoms, index=df.index)
    return geopandas.GeoDataFrame(df, geometry=GEOMETRY_COLUMN)


def _read_parquet(path: Path) -> pd.DataFrame:
    import pyarrow
    import pyarrow.parquet

    try:
        metadata = pyarrow.parquet.read_metadata(path)
        check_unique_columns(metadata.schema.to_arrow_schema().names, path)
        if metadata.metadata and b"geo" in metadata.metadata:
            import geopandas

            return geopandas.read_parquet(path)
        return pd.read_parquet(path)
    except JobDbError:
        raise
    except (pyarrow.ArrowException, OSError, ValueError, TypeError) as e:
        raise JobDbError(f"{path}: unreadable Parquet job database: {e}") from e


def write_db_atomic(path: Path, df: pd.DataFrame) -> None:
    """Write the whole frame to `path` atomically (jobdb/atomic.py: temp file + fsync + os.replace)."""
    fmt = db_format(path)
    with _write_lock:
        try:
            with atomic_path(path) as tmp:
                if fmt == "csv":
                    _to_csv_frame(df).to_csv(tmp, index=False)
                else:
                    df.to_parquet(tmp, index=False)
        except Exception as e:
            if isinstance(e, JobDbError):
                raise
            raise JobDbError(f"{path}: writing job database failed: {e}") from e


def _to_csv_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Plain frame with geometry columns as full-precision WKT (what openeo's CSV reader decodes)."""
    if not is_geodataframe(df):
        return df
    import shapely

    out = pd.DataFrame(df).copy()
    for col in out.columns:
        if getattr(out[col].dtype, "name", "") == "geometry":
            out[col] = shapely.to_wkt(out[col].to_numpy(dtype=object), rounding_precision=-1)
    return out


_TMP_RE_TEMPLATE = r"^\.{name}\.(\d+)\.tmp$"  # the names of jobdb.atomic.temp_path_for


def remove_stale_temp_files(path: Path) -> list[Path]:
    """Delete temp files of `path` left by writers that no longer run; returns what was removed."""
    pattern = re.compile(_TMP_RE_TEMPLATE.format(name=re.escape(path.name)))
    removed = []
    if not path.parent.is_dir():
        return removed
    for sibling in path.parent.iterdir():
        m = pattern.match(sibling.name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            sibling.unlink()
            removed.append(sibling)
        except OSError:
            pass
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
