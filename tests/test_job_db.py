"""Job database: compatibility with openeo 0.53's job dbs both ways, validation, atomic writes."""
from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from openeo.extra.job_management import JobDatabaseInterface, create_job_db, get_job_db

from jobdb import (
    ACTIVE_STATUSES,
    STATUSES,
    TERMINAL_STATUSES,
    JobDatabase,
    JobDbError,
    load_job_db,
    remove_stale_temp_files,
)

OPENEO_STR_COLUMNS = ["id", "backend_name", "status", "start_time", "running_start_time"]


# -- helpers ----------------------------------------------------------------------------------


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def norm(v: object) -> object:
    """Comparable plain value: NaN/None -> None, numpy -> python, geometry -> exact WKT."""
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, shapely.Geometry):
        return shapely.to_wkt(v, rounding_precision=-1)
    return v


def table(df: pd.DataFrame) -> list[list[object]]:
    return [[norm(v) for v in row] for row in pd.DataFrame(df).itertuples(index=False, name=None)]


def same_geometries(a: gpd.GeoSeries, b: gpd.GeoSeries) -> bool:
    """Exactly equal coordinates, row by row (CRS is checked separately)."""
    return len(a) == len(b) and bool(shapely.equals_exact(np.asarray(a), np.asarray(b), tolerance=0).all())


def user_df() -> pd.DataFrame:
    n = 6
    """Input frame with some openeo columns pre-set (as a resumed job db would have)."""
    df = pd.DataFrame(
        {
            "name": [f"tile-{i}" for i in range(n)],
            "year": [2000 + i for i in range(n)],
            "ratio": [0.5 * i if i % 3 else np.nan for i in range(n)],
        }
    )
    status = ["not_started"] * n
    ids: list = [None] * n
    status[1], ids[1] = "running", "00123"  # numeric-looking id must stay a string
    status[2], ids[2] = "finished", "j-2"
    status[3] = "start_failed"
    df["status"] = status
    df["id"] = ids
    df["start_time"] = [None, "2024-01-02T03:04:05Z", "2024-01-01T00:00:00Z", None, None, None][:n]
    return df


def geo_df(crs: str) -> gpd.GeoDataFrame:
    df = user_df()
    n = len(df)
    if crs == "EPSG:4326":
        geoms = [shapely.box(3.1 + i, 50.1, 3.2 + i, 50.23456789) for i in range(n)]
    else:
        geoms = [shapely.Point(500000.125 + 1000 * i, 5600000.5) for i in range(n)]
    return gpd.GeoDataFrame(df, geometry=geoms, crs=crs)


# -- openeo -> jobdb ---------------------------------------------------------------------------

CASES = {
    "csv": ("db.csv", lambda: user_df()),
    "parquet": ("db.parquet", lambda: user_df()),
    "parquet-costs": ("db.parquet", lambda: user_df().assign(costs=[1.5, None, 2.0, None, None, 3.25])),
    "geoparquet-4326": ("db.geoparquet", lambda: geo_df("EPSG:4326")),
    "geoparquet-32631": ("db.parquet", lambda: geo_df("EPSG:32631")),
    "csv-geometry": ("db.csv", lambda: geo_df("EPSG:4326")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_openeo_created_db_opens_intact(tmp_path: Path, case: str) -> None:
    name, make = CASES[case]
    path = tmp_path / name
    src = make()
    create_job_db(path, src)
    before = sha(path)
    theirs = get_job_db(path).read()

    db = JobDatabase.open(path)

    assert sha(path) == before  # open never writes
    assert list(db.df.columns) == list(theirs.columns)
    assert isinstance(db.df.index, pd.RangeIndex) and len(db.df) == len(src)
    assert table(db.df) == table(theirs)
    for col in OPENEO_STR_COLUMNS:
        assert db.df[col].dtype == object, col
    # openeo's parquet round trip leaves an all-None "costs" as object; we keep it float64
    assert db.df["costs"].dtype == np.float64
    assert db.df.loc[1, "id"] == "00123"
    assert db.df["status"].tolist() == src["status"].tolist()
    for col in ["name", "year", "ratio"]:
        assert db.df[col].dtype == theirs[col].dtype, col
    if isinstance(src, gpd.GeoDataFrame):
        assert isinstance(db.df, gpd.GeoDataFrame)
        assert same_geometries(db.df.geometry, src.geometry)
        if path.suffix == ".csv":
            assert db.df.crs is None  # CSV cannot carry a CRS
        else:
            assert db.df.crs == src.crs
    else:
        assert not isinstance(db.df, gpd.GeoDataFrame)


# -- jobdb -> openeo ---------------------------------------------------------------------------


def _apply_typical_updates(db: JobDatabase) -> None:
    db.apply_updates(
        {
            0: {"status": "queued", "id": "j-0", "backend_name": "foo", "start_time": "2024-05-01T10:00:00Z"},
            4: {"status": "error", "id": "j-4", "costs": 7, "cpu": "1234 cpu-seconds", "error_message": "boom"},
            5: {"status": "running", "id": "j-5", "memory": "5678 mb-seconds", "duration": "42 seconds"},
            2: {"costs": 1.25, "cpu": "99 cpu-seconds"},
        }
    )


@pytest.mark.parametrize("case", ["csv", "parquet", "geoparquet-4326", "geoparquet-32631", "csv-geometry"])
def test_db_written_here_reads_in_openeo(tmp_path: Path, case: str) -> None:
    name, make = CASES[case]
    path = tmp_path / name
    src = make()
    db = JobDatabase.create(path, src)
    _apply_typical_updates(db)
    db.save()

    theirs_db = get_job_db(path)
    theirs = theirs_db.read()

    assert list(theirs.columns) == list(db.df.columns)
    assert table(theirs) == table(db.df)
    assert theirs["status"].tolist() == ["queued", "running", "finished", "start_failed", "error", "running"]
    assert theirs["id"].tolist()[:3] == ["j-0", "00123", "j-2"]
    assert theirs["costs"].dtype == np.float64 and theirs["costs"].tolist()[2] == 1.25
    assert theirs.loc[4, "cpu"] == "1234 cpu-seconds" and theirs.loc[4, "costs"] == 7.0
    # MultiBackendJobManager's view of the db
    running = theirs_db.get_by_status(["running"])
    assert running.index.tolist() == [1, 5] and running["id"].tolist() == ["00123", "j-5"]
    assert theirs_db.count_by_status(["queued", "error"]) == {"queued": 1, "error": 1}
    if isinstance(src, gpd.GeoDataFrame):
        assert isinstance(theirs, gpd.GeoDataFrame)
        assert same_geometries(theirs.geometry, src.geometry)
        assert theirs.crs == (None if path.suffix == ".csv" else src.crs)
    if path.suffix == ".csv" and isinstance(src, gpd.GeoDataFrame):
        assert "POLYGON ((" in path.read_text()


@pytest.mark.parametrize("name", ["db.csv", "db.geoparquet"])
def test_round_trip_through_openeo_persist(tmp_path: Path, name: str) -> None:
    """openeo's manager-style persist (subset frame, new usage column) on our file, then we reopen it."""
    path = tmp_path / name
    JobDatabase.create(path, geo_df("EPSG:4326"))
    theirs = get_job_db(path)
    active = theirs.get_by_status(["running"]).copy()
    active.loc[1, "status"] = "finished"
    active["cpu"] = None
    active.loc[1, "cpu"] = "5 cpu-seconds"
    active.loc[1, "costs"] = 0.5
    theirs.persist(active)

    db = JobDatabase.open(path)
    assert db.df.loc[1, ["status", "id", "cpu", "costs"]].tolist() == ["finished", "00123", "5 cpu-seconds", 0.5]
    assert db.count_by_status() == {"not_started": 3, "finished": 2, "start_failed": 1}


def test_our_db_serves_as_openeo_job_database_interface(tmp_path: Path) -> None:
    """persist(subset) like MultiBackendJobManager: merges by index, NaN does not overwrite, one write."""
    path = tmp_path / "db.parquet"
    db = JobDatabase.create(path, user_df())
    assert isinstance(db, JobDatabaseInterface)
    active = db.get_by_status(["running"])
    active.loc[1, "status"] = "finished"
    active["cpu"] = None
    active.loc[1, "cpu"] = "5 cpu-seconds"
    active.loc[1, "start_time"] = np.nan  # missing values in the subset must not erase stored ones
    db.persist(active)

    again = JobDatabase.open(path)
    assert again.df.loc[1, ["status", "cpu", "start_time"]].tolist() == [
        "finished",
        "5 cpu-seconds",
        "2024-01-02T03:04:05Z",
    ]
    assert get_job_db(path).read().loc[1, "status"] == "finished"
    with pytest.raises(JobDbError, match="unknown row"):
        db.persist(pd.DataFrame({"status": ["finished"]}, index=[99]))


# -- queries and updates ----------------------------------------------------------------------


def test_statuses_constants() -> None:
    assert ACTIVE_STATUSES | TERMINAL_STATUSES | {"not_started"} == set(STATUSES)
    assert not ACTIVE_STATUSES & TERMINAL_STATUSES
    assert len(STATUSES) == 11


def test_queries_return_copies_and_plain_rows(tmp_path: Path) -> None:
    db = JobDatabase.create(tmp_path / "db.geoparquet", geo_df("EPSG:4326"))
    _apply_typical_updates(db)

    assert db.count_by_status() == {"queued": 1, "running": 2, "finished": 1, "start_failed": 1, "error": 1}
    assert db.count_by_status(["running", "skipped"]) == {"running": 2}
    got = db.get_by_status(["running"], max=1)
    assert got.index.tolist() == [1]
    got.loc[1, "status"] = "error"
    assert db.df.loc[1, "status"] == "running"
    by_idx = db.get_by_indices([5, 0, 77])
    assert by_idx.index.tolist() == [5, 0]
    by_idx.loc[5, "id"] = "changed"
    assert db.df.loc[5, "id"] == "j-5"

    rows = db.rows(["running", "error"])
    assert [r["_row"] for r in rows] == [1, 4, 5]
    r4 = rows[1]
    assert type(r4["_row"]) is int and type(r4["year"]) is int and type(r4["costs"]) is float
    assert r4["ratio"] == 2.0 and db.rows(["start_failed"])[0]["ratio"] is None  # NaN -> None
    assert r4["cpu"] == "1234 cpu-seconds" and rows[0]["cpu"] is None and r4["error_message"] == "boom"
    assert isinstance(r4["geometry"], shapely.Polygon)
    assert len(db.rows(None)) == 6 and len(db.rows(["running"], max=1)) == 1


def test_apply_updates_dtypes_and_unknown_rows(tmp_path: Path) -> None:
    path = tmp_path / "db.csv"
    # An existing, all-empty usage column is read back by pandas as float64 NaN.
    JobDatabase.create(path, user_df().assign(cpu=None))
    db = JobDatabase.open(path)
    assert db.df["cpu"].dtype == np.float64
    db.apply_updates({1: {"cpu": "12 cpu-seconds", "costs": 3, "year": 1999, "job_title_marker": "m-1"}})
    assert db.df["cpu"].dtype == object and db.df.loc[1, "cpu"] == "12 cpu-seconds"
    assert db.df["costs"].dtype == np.float64 and db.df.loc[1, "costs"] == 3.0
    assert db.df["year"].dtype == np.int64 and db.df.loc[1, "year"] == 1999
    assert db.df["job_title_marker"].dtype == object and db.df.loc[0, "job_title_marker"] is None

    snapshot = db.df.copy()
    for bad in ({6: {"status": "running"}}, {-1: {"x": 1}}, {"0": {"x": 1}}, {0: {"status": "bogus"}}):
        with pytest.raises(JobDbError):
            db.apply_updates({0: {"name": "changed"}, **bad})
        pd.testing.assert_frame_equal(db.df, snapshot)  # nothing applied
    with pytest.raises(JobDbError, match="costs"):
        db.apply_updates({0: {"costs": "a lot"}})


def test_create_on_exists(tmp_path: Path) -> None:
    path = tmp_path / "db.csv"
    JobDatabase.create(path, user_df())
    before = sha(path)
    with pytest.raises(JobDbError, match="already exists") as info:
        JobDatabase.create(path, user_df().head(2))
    assert isinstance(info.value, FileExistsError)  # same exception family as openeo's create_job_db
    db = JobDatabase.create(path, user_df().head(2), on_exists="skip")
    assert len(db.df) == 6 and sha(path) == before
    with pytest.raises(JobDbError, match="on_exists"):
        JobDatabase.create(path, user_df(), on_exists="overwrite")
    assert load_job_db(path).df["name"].tolist() == user_df()["name"].tolist()


def test_create_rejects_invalid_frame_without_writing(tmp_path: Path) -> None:
    path = tmp_path / "db.parquet"
    with pytest.raises(JobDbError, match=r"row 3"):  # an unknown status on a row without a job id
        JobDatabase.create(path, user_df().assign(status=["not_started", "running", "finished", "bogus",
                                                          *["skipped"] * 2]))
    dup = pd.DataFrame([[1, 2]], columns=["a", "a"])
    with pytest.raises(JobDbError, match="duplicated"):
        JobDatabase.create(path, dup)
    with pytest.raises(JobDbError, match="extension"):
        JobDatabase.create(tmp_path / "db.xlsx", user_df())
    assert list(tmp_path.iterdir()) == []


# -- bad input on open ------------------------------------------------------------------------


def _csv(text: str):
    return lambda p: p.write_text(text)


def _truncated_parquet(p: Path) -> None:
    user_df().to_parquet(p, index=False)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


BAD_INPUTS = {
    "unknown-extension": ("db.txt", _csv("status\nnot_started\n"), "extension"),
    "empty-csv": ("db.csv", _csv(""), "empty"),
    "empty-parquet": ("db.parquet", _csv(""), "empty"),
    "binary-garbage-csv": ("db.csv", lambda p: p.write_bytes(random.Random(1).randbytes(4096)), "db.csv"),
    "utf8-invalid-csv": ("db.csv", lambda p: p.write_bytes(b"status,name\nnot_started,\xff\xfe\n"), "unreadable"),
    "text-as-parquet": ("db.parquet", _csv("status\nnot_started\n"), "unreadable Parquet"),
    "truncated-parquet": ("db.parquet", _truncated_parquet, "unreadable Parquet"),
    "too-many-fields-csv": ("db.csv", _csv("status,name\nnot_started,a,extra\n"), "more fields"),
    "unbalanced-quote-csv": ("db.csv", _csv('status,name\nnot_started,"a\nnot_started,b,c,d\n'), "db.csv"),
    "bad-status": ("db.csv", _csv("status,id\nnot_started,\nrunnin,\nnot_started,\nfoo,\n"), r"rows 1, 3"),  # no job id: unreadable
    "missing-status-value": ("db.csv", _csv("status,id\nnot_started,\n,\n"), r"row 1\b"),
    "duplicate-columns-csv": ("db.csv", _csv("name,status,name\na,not_started,b\n"), r"duplicated.*'name'"),
    "bad-wkt": (
        "db.csv",
        _csv('status,geometry\nnot_started,POINT (1 2)\nnot_started,POINT (1\nnot_started,"POLYGON ((0 0, 1"\n'),
        r"WKT.*'geometry'.*rows 1, 2",
    ),
    "id-on-not-started": ("db.csv", _csv("status,id\nnot_started,\nnot_started,j-1\n"), r"not_started row 1\b"),
    "active-without-id": ("db.csv", _csv("status,id\ncreating,\nqueued,\nrunning,j-2\n"), r"without.*id.*row 1\b"),
    "non-numeric-costs": ("db.csv", _csv("status,costs\nnot_started,1.5\nnot_started,cheap\n"), r"'costs'.*row 1\b"),
    "duplicate-columns-parquet": (
        "db.parquet",
        lambda p: __import__("pyarrow.parquet").parquet.write_table(
            __import__("pyarrow").table([[1], ["not_started"], [2]], names=["a", "status", "a"]), p
        ),
        "duplicated",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_and_changes_nothing(tmp_path: Path, case: str) -> None:
    name, write, pattern = BAD_INPUTS[case]
    path = tmp_path / name
    write(path)
    before = sha(path)
    with pytest.raises(JobDbError, match=pattern) as info:
        JobDatabase.open(path)
    assert str(path) in str(info.value)
    assert sha(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_missing_file_and_required_columns(tmp_path: Path) -> None:
    with pytest.raises(JobDbError, match="does not exist"):
        JobDatabase.open(tmp_path / "nope.parquet")
    assert list(tmp_path.iterdir()) == []

    path = tmp_path / "db.csv"
    JobDatabase.create(path, user_df())
    before = sha(path)
    assert load_job_db(path, required_columns=["name", "year"]).df.shape[0] == 6
    with pytest.raises(JobDbError, match=r"missing required column.*'tile_size'"):
        JobDatabase.open(path, required_columns=["name", "tile_size"])
    assert sha(path) == before


# -- atomicity under SIGKILL ------------------------------------------------------------------


def _version(tag: str, n: int, geo: bool) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "tag": [tag] * n,
            "name": [f"{tag}-{i}-" + "x" * 30 for i in range(n)],
            "value": np.arange(n, dtype=float) * (1.5 if tag == "A" else 2.5),
            "status": ["finished" if tag == "B" else "not_started"] * n,
            "id": [f"job-{i}" if tag == "B" else None for i in range(n)],
        }
    )
    if geo:
        df = gpd.GeoDataFrame(df, geometry=gpd.points_from_xy(np.arange(n), np.arange(n)), crs="EPSG:32631")
    return df


def _rewrite_forever(path: str, version_a: pd.DataFrame, version_b: pd.DataFrame, started) -> None:
    db = JobDatabase(path, version_b)
    started.set()
    while True:
        db.df = version_b
        db.save()
        db.df = version_a
        db.save()


def _kill_when(proc, condition, deadline: float) -> None:
    """SIGKILL the writer as soon as `condition()` holds (read from the files it writes)."""
    while not condition() and time.monotonic() < deadline:
        pass  # a tight loop: a write takes milliseconds, the moment must not be missed by sleeping
    os.kill(proc.pid, signal.SIGKILL)


# 4 kills: each kind (mid-write, after a rewrite, anywhere) lands at least once, and the loop below
# goes on until the first two did; the slow variants add many kills at random moments, and GeoParquet:
# it is written by the same call as Parquet (`df.to_parquet` in `atomic_path`, jobdb/storage.py).
@pytest.mark.parametrize("name,kills", [("db.csv", 4), ("db.parquet", 4),
                                        pytest.param("db.geoparquet", 4, marks=pytest.mark.slow),
                                        pytest.param("db.parquet", 30, marks=pytest.mark.slow)])
def test_sigkill_during_rewrites_leaves_one_complete_version(tmp_path: Path, name: str, kills: int) -> None:
    """Kills chosen by what the writer does, not by time: while a temp file exists (mid-write),
    after its first complete rewrite (version B in place), or at a random moment; the first two
    kinds are repeated until each has landed, so the test proves what it says on any machine."""
    path = tmp_path / name
    geo = name.endswith(".geoparquet")
    n = 20_000  # a write takes some ms
    t0 = time.perf_counter()
    a = JobDatabase.create(path, _version("A", n, geo))
    write_seconds = time.perf_counter() - t0
    expected = {"A": JobDatabase.open(path).df}
    b_path = tmp_path / f"b{path.suffix}"
    JobDatabase.create(b_path, _version("B", n, geo))
    expected["B"] = JobDatabase.open(b_path).df
    b_path.unlink()

    rng = random.Random(f"jobdb-{name}")
    ctx = multiprocessing.get_context("fork")  # fork: the child starts writing without re-importing pandas
    seen_tags = set()
    temp_files_left = 0
    rounds = 0
    while rounds < kills or not temp_files_left or seen_tags != {"A", "B"}:
        rounds += 1
        assert rounds <= 10 * kills, (temp_files_left, seen_tags)
        started = ctx.Event()
        first = path.stat().st_ino
        proc = ctx.Process(target=_rewrite_forever, args=(str(path), a.df, expected["B"], started), daemon=True)
        proc.start()
        assert started.wait(60)
        deadline = time.monotonic() + 60
        kind = rounds % 3
        if kind == 0:  # mid-write: the writer's temp file is there
            _kill_when(proc, lambda: any(p.name.endswith(".tmp") for p in tmp_path.iterdir()), deadline)
        elif kind == 1:  # after a complete rewrite: the DB file was replaced (version B in place)
            _kill_when(proc, lambda: path.stat().st_ino != first, deadline)
        else:  # anywhere
            time.sleep(rng.uniform(0.0, 4 * write_seconds))  # the kill moment, not a synchronisation
            os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
        assert proc.exitcode == -signal.SIGKILL

        temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        temp_files_left += len(temps)
        assert all(p.name.startswith(f".{name}.") for p in temps)

        db = JobDatabase.open(path)
        tag = db.df.loc[0, "tag"]
        seen_tags.add(tag)
        # DataFrame.equals: same shape, dtypes and values (NaN == NaN); much faster than assert_frame_equal
        assert type(db.df) is type(expected[tag]) and list(db.df.columns) == list(expected[tag].columns)
        assert db.df.equals(expected[tag])
        if geo:
            assert db.df.crs == "EPSG:32631"
        assert get_job_db(path).read().shape == expected[tag].shape

        # temp files of the dead writer never replace the db and are cleaned up on the next save
        assert sorted(remove_stale_temp_files(path)) == sorted(temps)
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # the kills did hit mid-write at least once, otherwise this test proves nothing
    assert temp_files_left >= 1, "no kill landed during a write"
    assert seen_tags == {"A", "B"}, "no kill landed after a complete rewrite"
    print(f"{name}: {temp_files_left}/{kills} kills mid-write, versions seen {sorted(seen_tags)}")


# -- scale ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["db.csv", "db.parquet"])
def test_100k_rows_load_update_persist(tmp_path: Path, name: str) -> None:
    n = 100_000
    path = tmp_path / name
    df = pd.DataFrame({"tile": np.arange(n), "name": [f"t{i}" for i in range(n)]})
    JobDatabase.create(path, df)
    db = JobDatabase.open(path)
    assert len(db.df) == n
    db.apply_updates({i: {"status": "running", "id": f"j-{i}", "cpu": f"{i} cpu-seconds"} for i in range(0, n, 10)})
    active = db.get_by_status(["running"])
    active["status"] = "finished"
    db.persist(active)

    again = JobDatabase.open(path)
    assert again.count_by_status() == {"finished": n // 10, "not_started": n - n // 10}
    assert again.df.loc[99_990, "id"] == "j-99990" and again.df.loc[99_990, "cpu"] == "99990 cpu-seconds"
    assert again.df["tile"].tolist() == list(range(n))
    assert get_job_db(path).read()["status"].value_counts().to_dict() == {"not_started": 90_000, "finished": 10_000}


def test_persist_subset_of_geodataframe_keeps_crs_and_geometry(tmp_path: Path) -> None:
    path = tmp_path / "db.geoparquet"
    db = JobDatabase.create(path, geo_df("EPSG:32631"))
    active = db.get_by_status(["running"])
    active.loc[1, "status"] = "finished"
    active.loc[1, "geometry"] = shapely.Point(1, 2)
    db.persist(active)
    db.apply_updates({2: {"geometry": shapely.Point(3, 4)}})
    db.save()

    theirs = get_job_db(path).read()
    assert theirs.crs == "EPSG:32631" and theirs.loc[1, "status"] == "finished"
    assert theirs.geometry[1].equals(shapely.Point(1, 2)) and theirs.geometry[2].equals(shapely.Point(3, 4))
    assert theirs.geometry[0].equals(geo_df("EPSG:32631").geometry[0])
