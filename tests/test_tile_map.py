"""The tile map: every failed tile visible (worst status per tile, a panel per year), PNG + HTML."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from flows.tiling.grid import make_tile_grid
from flows.report.tile_map import (
    STATUS_COLOURS,
    html_features,
    map_panels,
    tiles_with_status,
    worst_per_tile,
    write_tile_map,
)
from jobdb import JobDbPaths
from jobdb.status import FAILED

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
AOI = {"west": 4.0, "south": 50.5, "east": 4.1, "north": 50.55}


def two_year_db_with_failures() -> pd.DataFrame:
    """Every tile has a 2023 and a 2024 row; failures in one year only, under a finished year."""
    df = make_tile_grid(AOI, 2_000, years=[2023, 2024])
    df["status"] = "finished"
    df["id"] = [f"j-{i}" for i in range(len(df))]
    df["backend_name"] = "sim"
    df["error_message"] = None
    failing = {1: "error", 6: "start_failed", 9: "error", 12: "canceled", 15: "error", 20: "error", 25: "start_failed"}
    for row, status in failing.items():  # rows of both years (odd: 2024, even: 2023)
        df.loc[row, "status"] = status
        df.loc[row, "error_message"] = f"boom in row {row}"
    df.loc[30, "status"] = "running"
    return df


def test_every_failed_tile_is_shown(tmp_path):
    df = two_year_db_with_failures()
    failed_rows = df[df["status"].isin(FAILED)]
    assert failed_rows["year"].nunique() == 2  # failures in both years, each under a finished row

    tiles = tiles_with_status(df)
    overview = worst_per_tile(tiles).set_index("tile")
    assert len(overview) == df["tile_id"].nunique()  # one polygon per tile, not one per row
    for _, row in failed_rows.iterrows():
        assert overview.at[row["tile_id"], "status"] in FAILED, row["tile_id"]
    assert (overview["status"] == "running").sum() == 1
    # a failed row in one year and the tile's other row finished: the overview shows the failure
    assert set(overview.loc[failed_rows["tile_id"], "status"]) <= FAILED

    panels = map_panels(tiles)
    assert [title for title, _ in panels][1:] == ["2023", "2024"]
    for title, frame in panels[1:]:
        shown = frame.set_index("tile")["status"]
        expected = df[df["year"] == int(title)].set_index("tile_id")["status"]
        assert shown.sort_index().to_dict() == expected.sort_index().to_dict()

    written = write_tile_map(df, tmp_path / "jobs.parquet")
    paths = JobDbPaths.of(tmp_path / "jobs.parquet")
    assert written == {"png": str(paths.map_png), "html": str(paths.map_html)}
    assert paths.map_png.read_bytes()[:8] == PNG_MAGIC

    features = {f["properties"]["tile"]: f["properties"] for f in html_features(paths.map_html)}
    assert len(features) == df["tile_id"].nunique()
    for _, row in failed_rows.iterrows():
        shown = features[row["tile_id"]]
        assert shown["status"] in FAILED and shown["colour"] == STATUS_COLOURS[shown["status"]]
        # the popup names the failed row's year, status, job id and error
        assert f"{row['year']} {row['status']} job {row['id']} on sim: boom in row {row.name}" in shown["details"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_worst_status_order():
    df = pd.DataFrame({
        "tile_id": ["a", "a", "b", "b", "c", "c", "d"],
        "year": [1, 2, 1, 2, 1, 2, 1],
        "status": ["finished", "canceled", "not_started", "running", "finished", "skipped", "finished"],
        "west": [0, 0, 1, 1, 2, 2, 3], "south": 0, "east": [1, 1, 2, 2, 3, 3, 4], "north": 1,
    })
    overview = worst_per_tile(tiles_with_status(df)).set_index("tile")["status"].to_dict()
    assert overview == {"a": "canceled", "b": "running", "c": "skipped", "d": "finished"}


def test_csv_db_with_bounds_gets_a_map(tmp_path):
    """openeo-style DBs without geometry but with west/south/east/north (EPSG:4326) are drawn too."""
    df = pd.DataFrame({"west": [4.0, 4.1], "south": [50.0, 50.0], "east": [4.1, 4.2], "north": [50.1, 50.1],
                       "status": ["finished", "error"], "id": ["j-1", "j-2"]})
    written = write_tile_map(df, tmp_path / "jobs.csv")
    assert set(written) == {"png", "html"}
    features = html_features(written["html"])
    assert sorted(f["properties"]["status"] for f in features) == ["error", "finished"]
    error = next(f for f in features if f["properties"]["status"] == "error")
    assert error["geometry"]["coordinates"][0][0] in ([4.1, 50.0], [4.2, 50.0], [4.2, 50.1], [4.1, 50.1])


def test_no_geometry_no_map(tmp_path):
    df = pd.DataFrame({"status": ["finished", "error"], "tile_id": ["a", "b"]})
    assert write_tile_map(df, tmp_path / "jobs.csv") is None
    assert not list(tmp_path.iterdir())


def test_basemap_from_local_file_or_skipped(tmp_path, monkeypatch):
    import geopandas as gpd
    import shapely

    df = two_year_db_with_failures()
    monkeypatch.setenv("OPENEO_JOBS_BASEMAP", str(tmp_path / "missing.gpkg"))
    assert set(write_tile_map(df, tmp_path / "a.parquet")) == {"png", "html"}  # missing basemap: skipped
    outline = tmp_path / "outline.geojson"
    gpd.GeoDataFrame(geometry=[shapely.LineString([(3.9, 50.4), (4.2, 50.6)]), shapely.box(4.05, 50.5, 4.2, 50.6)],
                     crs=4326).to_file(outline)
    monkeypatch.setenv("OPENEO_JOBS_BASEMAP", str(outline))
    assert set(write_tile_map(df, tmp_path / "b.parquet")) == {"png", "html"}


@pytest.mark.slow
def test_ten_thousand_tiles_fast(tmp_path):
    df = make_tile_grid({"west": 3.0, "south": 50.0, "east": 4.4, "north": 50.9}, 1_000, years=[2023, 2024],
                        max_tiles=1_000_000)
    assert df["tile_id"].nunique() > 10_000
    df["status"] = np.where(np.arange(len(df)) % 7 == 0, "error", "finished")
    started = time.monotonic()
    written = write_tile_map(df, tmp_path / "jobs.parquet")
    elapsed = time.monotonic() - started
    print(f"tile map of {df['tile_id'].nunique()} tiles x 2 years: {elapsed:.1f} s")
    assert set(written) == {"png", "html"}  # how fast: the print above (a speed target, not an assertion)


def test_html_map_has_an_offline_rendering(tmp_path):
    """Offline the page cannot load Leaflet from its CDN: it shows every tile as inline SVG instead."""
    import re
    import shutil
    import subprocess

    df = two_year_db_with_failures()
    write_tile_map(df, tmp_path / "jobs.parquet")
    page = JobDbPaths.of(tmp_path / "jobs.parquet").map_html.read_text()
    start = page.index('<div id="offline-tile-map"')
    block = page[start:page.index("</script>", start)]
    overview = worst_per_tile(tiles_with_status(df))
    polygons = re.findall(r'<polygon [^>]*fill="(#[0-9a-f]{6})"[^>]*><title>([^<]+)</title>', block)
    assert len(polygons) == len(overview)  # one shape per tile, every tile
    shown = {title.split(":")[0]: colour for colour, title in polygons}
    for tile, status in zip(overview["tile"], overview["status"]):
        assert shown[tile] == STATUS_COLOURS[status], tile
    assert 'typeof L === "undefined"' in page and "https://" not in block

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not installed: the page's script was not run")
    dom = subprocess.run(  # loopback only here: the CDN is unreachable, as offline
        [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=5000", "--dump-dom", (tmp_path / "jobs_map.html").as_uri()],
        capture_output=True, text=True, timeout=600).stdout
    assert re.search(r'id="offline-tile-map" style="display: block', dom), dom[:500]
