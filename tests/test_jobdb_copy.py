"""`python -m jobdb copy` between files and PostgreSQL, both ways; openeo reads what comes out."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path, PurePosixPath

import geopandas as gpd
import openeo.extra.job_management as ojm
import pandas as pd
import pytest
import shapely

from jobdb.copy import copy
from jobdb.sql.campaign import SqlDatabase
from jobdb.sql.openeo_db import SqlJobDatabase

ROOT = Path(__file__).resolve().parents[1]


def jobdb_cli(*args: str) -> subprocess.CompletedProcess:
    """The real command, in its own Python (once per test: the rest call `jobdb_main`)."""
    return subprocess.run([sys.executable, "-m", "jobdb", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})


def jobdb_main(capsys, *args: str) -> subprocess.CompletedProcess:
    """The command's `main` in this process (what `python -m jobdb` calls), its output as a
    finished process's: one Python start fewer for each call."""
    from jobdb.__main__ import main

    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["python", "-m", "jobdb", *args], code, out, err)


def tiles(n: int = 6) -> gpd.GeoDataFrame:
    boxes = [shapely.box(4 + i * 0.1, 50, 4.1 + i * 0.1, 50.1) for i in range(n)]
    df = gpd.GeoDataFrame({"tile_id": [f"T{i}" for i in range(n)], "year": [2020 + i % 2 for i in range(n)],
                           "cloud": [0.5 * i for i in range(n)]}, geometry=boxes, crs="EPSG:32631")
    df["status"] = ["finished"] + ["not_started"] * (n - 1)
    df["id"] = ["j-0"] + [None] * (n - 1)
    df["backend_name"] = ["cdse"] + [None] * (n - 1)
    return df


def test_csv_to_postgres_and_back_to_csv_parquet_geoparquet(postgres, tmp_path, capsys):
    url = postgres.database("copy_round_trip")
    source = tiles()
    csv = tmp_path / "in.csv"
    ojm.create_job_db(csv, source)  # written by openeo itself
    done = jobdb_cli("copy", str(csv), url, "--campaign", "eu")
    assert done.returncode == 0, done.stderr
    assert "copied 6 rows" in done.stdout
    written = pd.read_csv(csv)
    for name in ("out.csv", "out.parquet"):
        done = jobdb_main(capsys, "copy", url, str(tmp_path / name), "--campaign", "eu")
        assert done.returncode == 0, done.stderr
        back = ojm.get_job_db(tmp_path / name).read()
        assert list(back.columns)[:len(written.columns)] == list(written.columns)
        assert back["tile_id"].tolist() == written["tile_id"].tolist()
        assert back["cloud"].tolist() == written["cloud"].tolist()
        assert back["status"].tolist() == written["status"].tolist()
        assert back["id"].iloc[0] == "j-0" and pd.isna(back["id"].iloc[1])
        assert [g.equals_exact(s, 1e-9) for g, s in zip(back.geometry, source.geometry)] == [True] * 6


def test_geoparquet_keeps_geometry_and_crs(postgres, tmp_path):
    url = postgres.database("copy_geo")
    source = tiles()
    src = tmp_path / "in.geoparquet"
    ojm.create_job_db(src, source)
    assert copy(str(src), url, "geo").startswith("copied 6 rows")
    copy(url, str(tmp_path / "out.geoparquet"), "geo")
    back = ojm.get_job_db(tmp_path / "out.geoparquet").read()
    assert isinstance(back, gpd.GeoDataFrame) and back.crs == source.crs
    assert all(a.equals_exact(b, 0) for a, b in zip(back.geometry, source.geometry))
    assert back["year"].tolist() == source["year"].tolist()


def test_fsspec_url_both_ways(postgres, tmp_path):
    """A file behind an fsspec URL (memory:// here; s3:// is the same code path)."""
    import fsspec

    url = postgres.database("copy_fsspec")
    local = tmp_path / "in.parquet"
    ojm.create_job_db(local, tiles())
    fsspec.filesystem("memory").put(str(local), "memory://bucket/in.parquet")
    copy("memory://bucket/in.parquet", url, "eu")
    copy(url, "memory://bucket/out.parquet", "eu")
    fsspec.filesystem("memory").get("memory://bucket/out.parquet", str(tmp_path / "out.parquet"))
    assert ojm.get_job_db(tmp_path / "out.parquet").read()["tile_id"].tolist() == [f"T{i}" for i in range(6)]


def test_bad_copies_fail_in_one_line(postgres, tmp_path, capsys):
    """The command's stderr is one line (the first case through the real command; the others call
    its `main` in this process, which prints the same line: one Python start instead of four)."""
    from jobdb.__main__ import main

    url = postgres.database("copy_bad")
    csv = tmp_path / "in.csv"
    ojm.create_job_db(csv, tiles())
    copy(str(csv), url, "eu")
    done = jobdb_cli("copy", str(csv), url, "--campaign", "eu")
    assert done.returncode == 2 and "already exists" in done.stderr and done.stderr.count("\n") == 1, done.stderr
    for args, needle in (((url, str(tmp_path / "x.csv"), "--campaign", "nope"), "no campaign 'nope'"),
                         ((str(tmp_path / "missing.csv"), url), "does not exist"),
                         ((url, str(csv)), "already exists")):
        code = main(["copy", *args])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and err.count("\n") == 1 and err.startswith("error: "), err
    assert SqlDatabase.open(url).campaign_names() == ["eu"]


def test_openeo_job_database_interface(postgres, tmp_path):
    url = postgres.database("copy_openeo_iface")
    SqlDatabase.open(url, create=True).create_campaign("eu", tiles())
    db = SqlJobDatabase(url, "eu")
    assert isinstance(db, ojm.JobDatabaseInterface) and db.exists()
    assert db.count_by_status() == {"finished": 1, "not_started": 5}
    waiting = db.get_by_status(["not_started"], max=2)
    assert waiting.index.tolist() == [1, 2] and waiting["tile_id"].tolist() == ["T1", "T2"]
    waiting.loc[1, "status"] = "queued"
    waiting.loc[1, "id"] = "j-1"
    waiting["cpu"] = ["3 cpu-seconds", None]
    db.persist(waiting)
    again = db.get_by_indices([1, 2])
    assert again.loc[1, "status"] == "queued" and again.loc[1, "cpu"] == "3 cpu-seconds"
    assert again.loc[2, "status"] == "not_started" and again.loc[2, "tile_id"] == "T2"


def test_copy_to_and_from_s3_on_a_moto_server(postgres, tmp_path, capsys):
    """`python -m jobdb copy` with s3:// on both sides (moto's standalone server; s3fs reads the
    AWS_* variables: the first copy is the real command in its own Python, given them by its
    environment); a job_db of s3:// is refused in one line that names the forms that work."""
    from jobdb.interface import open_store
    from jobdb.schema import JobDbError
    from tests.s3_server import moto_s3, s3_client

    url = postgres.database("copy_s3")
    local = tmp_path / "in.geoparquet"
    source = tiles()
    ojm.create_job_db(local, source)
    with moto_s3("campaigns") as s3:
        client = s3_client(s3)
        client.upload_file(str(local), "campaigns", "in/jobs.geoparquet")
        done = jobdb_cli("copy", "s3://campaigns/in/jobs.geoparquet", url, "--campaign", "eu")
        assert done.returncode == 0, done.stderr
        for name in ("out/jobs.geoparquet", "out/jobs.csv"):
            done = jobdb_main(capsys, "copy", url, f"s3://campaigns/{name}", "--campaign", "eu")
            assert done.returncode == 0 and f"s3://campaigns/{name}" in done.stdout, done.stderr
            client.download_file("campaigns", name, str(tmp_path / PurePosixPath(name).name))
            back = ojm.get_job_db(tmp_path / PurePosixPath(name).name).read()
            assert back["tile_id"].tolist() == source["tile_id"].tolist()
            assert [g.equals_exact(s, 1e-9) for g, s in zip(back.geometry, source.geometry)] == [True] * 6
        again = jobdb_main(capsys, "copy", url, "s3://campaigns/out/jobs.csv", "--campaign", "eu")
        assert again.returncode == 2 and "already exists" in again.stderr and again.stderr.count("\n") == 1
        keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="campaigns")["Contents"])
        assert keys == ["in/jobs.geoparquet", "out/jobs.csv", "out/jobs.geoparquet"]  # no temporary left
        with pytest.raises(JobDbError) as refused:  # the file exists, and still: it cannot be locked
            open_store("s3://campaigns/in/jobs.geoparquet")
    line = str(refused.value)
    assert "\n" not in line and "postgresql://" in line and "sqlite:///" in line and "python -m jobdb copy" in line
