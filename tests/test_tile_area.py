"""Tests for the tiling flow: plain-function tests first, one real Prefect run at the end."""
from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pytest
import shapely
from openeo.extra.job_management import get_job_db, split_area
from shapely.geometry import MultiPolygon, Polygon, box, mapping

from flows.tiling.aoi import BBox, TilingError, load_aoi
from flows.tiling.grid import make_tile_grid, tile_id
from flows.tile_area import tile_area, write_job_db
from jobdb import JobDbPaths

UTM31 = 32631
# 10 km x 20 km rectangle aligned on the 5 km grid of UTM 31N (near Ghent/Lille).
ALIGNED = {"west": 500_000, "south": 5_650_000, "east": 510_000, "north": 5_670_000, "crs": UTM31}
# Irregular lon/lat polygon (not aligned to anything), tiled in its UTM zone by default.
LONLAT_POLY = Polygon([(3.05, 50.52), (3.41, 50.55), (3.52, 50.83), (3.21, 50.95), (3.02, 50.71)])


def _in_tiling_crs(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    return gdf.to_crs(epsg=int(gdf["tile_crs"].iloc[0]))


# --------------------------------------------------------------------------- grid geometry


def test_aligned_bbox_tile_count_and_ids():
    gdf = make_tile_grid(ALIGNED, 5000, tiling_crs=UTM31, output_crs=UTM31)
    assert len(gdf) == 8
    assert gdf.crs.to_epsg() == UTM31
    assert gdf["tile_id"].is_unique
    assert "32631_E0500000_N5650000" in set(gdf["tile_id"])
    assert set(gdf["tile_west"]) == {500_000, 505_000}
    assert set(gdf["tile_south"]) == {5_650_000, 5_655_000, 5_660_000, 5_665_000}
    # full-size squares
    assert (gdf.geometry.area.round(3) == 25e6).all()


def test_unaligned_bbox_snaps_to_grid():
    aoi = {"west": 504_000, "south": 5_651_000, "east": 511_000, "north": 5_658_000, "crs": UTM31}
    gdf = make_tile_grid(aoi, 5000, tiling_crs=UTM31, output_crs=UTM31)
    # x: 500-505, 505-510, 510-515 km; y: 5650-5655, 5655-5660 km
    assert len(gdf) == 6
    assert (gdf["tile_west"] % 5000 == 0).all() and (gdf["tile_south"] % 5000 == 0).all()
    assert gdf.union_all().contains(box(504_000, 5_651_000, 511_000, 5_658_000))


def test_default_tiling_crs_is_utm_and_output_is_4326():
    gdf = make_tile_grid({"west": 3.0, "south": 50.5, "east": 3.2, "north": 50.6}, 5000)
    expected = gpd.GeoSeries([box(3.0, 50.5, 3.2, 50.6)], crs=4326).estimate_utm_crs().to_epsg()
    assert expected == UTM31
    assert (gdf["tile_crs"] == UTM31).all()
    assert gdf.crs.to_epsg() == 4326
    assert gdf["tile_id"].str.startswith("32631_E").all()
    minx, miny, maxx, maxy = gdf.total_bounds
    assert -180 <= minx < maxx <= 180 and -90 <= miny < maxy <= 90


def test_lonlat_bounds_columns_cover_each_tile():
    """west/south/east/north: EPSG:4326 bounds covering the whole tile, whatever the output CRS."""
    for output_crs in (4326, UTM31):
        gdf = make_tile_grid(mapping(LONLAT_POLY), 5000, output_crs=output_crs, years=[2020, 2021])
        assert list(gdf.columns[:6]) == ["tile_id", "year", "west", "south", "east", "north"]
        boxes = shapely.box(gdf["west"], gdf["south"], gdf["east"], gdf["north"])
        tiles_lonlat = gdf.geometry.to_crs(4326)
        # a UTM square is not a lon/lat box: its lon/lat bounds must hold it whole
        assert shapely.covers(shapely.buffer(boxes, 1e-9), shapely.segmentize(tiles_lonlat.values, 0.0005)).all()
        assert ((gdf["east"] - gdf["west"]) < 0.1).all() and (gdf["west"].between(2.9, 3.6)).all()
    with pytest.raises(TilingError, match="may not redefine"):
        make_tile_grid(ALIGNED, 5000, extra_columns={"west": 1.0})


def test_grid_covers_aoi_in_tiling_crs():
    gdf = make_tile_grid(mapping(LONLAT_POLY), 5000)
    local = _in_tiling_crs(gdf)
    aoi_local = gpd.GeoSeries([shapely.segmentize(LONLAT_POLY, 0.001)], crs=4326).to_crs(local.crs).iloc[0]
    union = local.union_all()
    # tiny tolerance: tile corners went UTM -> lon/lat -> UTM
    assert union.buffer(0.01).contains(aoi_local)
    # every tile shares area with the AOI; no tile appears twice
    assert (local.intersection(aoi_local).area > 0).all()
    assert gdf["tile_id"].is_unique


def test_clip_limits_geometries_to_aoi_and_updates_bounds():
    aoi = {"west": 504_000, "south": 5_651_000, "east": 511_000, "north": 5_658_000, "crs": UTM31}
    gdf = make_tile_grid(aoi, 5000, tiling_crs=UTM31, output_crs=UTM31, clip=True)
    assert len(gdf) == 6
    assert gdf.geometry.area.sum() == pytest.approx(7000 * 7000)
    assert gdf["tile_west"].min() == 504_000 and gdf["tile_east"].max() == 511_000
    # ids still name the grid cell, not the clipped corner
    assert "32631_E0500000_N5650000" in set(gdf["tile_id"])


def test_years_cross_product_and_extra_columns():
    years = [2019, 2020, 2021]
    base = make_tile_grid(ALIGNED, 5000, tiling_crs=UTM31)
    gdf = make_tile_grid(ALIGNED, 5000, tiling_crs=UTM31, years=years, extra_columns={"orbit": "asc", "n": 3})
    assert len(gdf) == len(base) * len(years)
    assert all(sorted(g) == years for _, g in gdf.groupby("tile_id")["year"])
    assert (gdf["orbit"] == "asc").all() and (gdf["n"] == 3).all()
    assert list(gdf.columns)[-1] == "geometry"


def test_multipolygon_aoi_gives_each_tile_once():
    mp = MultiPolygon([box(501_000, 5_651_000, 502_000, 5_652_000), box(503_000, 5_653_000, 504_000, 5_654_000),
                       box(521_000, 5_651_000, 522_000, 5_652_000)])
    gdf = make_tile_grid(mp, 5000, aoi_crs=UTM31, tiling_crs=UTM31, output_crs=UTM31)
    # first two parts share tile 500/5650, the third is in tile 520/5650; nothing in between
    assert sorted(gdf["tile_id"]) == ["32631_E0500000_N5650000", "32631_E0520000_N5650000"]


def test_geojson_inputs_and_file(tmp_path: Path):
    fc = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {"name": "a"}, "geometry": mapping(LONLAT_POLY)},
            {"type": "Feature", "properties": {"name": "b"}, "geometry": mapping(box(4.0, 51.0, 4.05, 51.03))},
        ],
    }
    from_fc = make_tile_grid(fc, 5000)
    path = tmp_path / "aoi.geojson"
    path.write_text(json.dumps(fc))
    from_file = make_tile_grid(str(path), 5000)
    from_text = make_tile_grid(json.dumps(fc), 5000)
    assert list(from_file["tile_id"]) == list(from_fc["tile_id"]) == list(from_text["tile_id"])
    # the union of both features is tiled
    only_poly = make_tile_grid({"type": "Feature", "geometry": mapping(LONLAT_POLY), "properties": {}}, 5000)
    assert set(only_poly["tile_id"]) < set(from_fc["tile_id"])
    # a bare shapely geometry is lon/lat by default; BBox model == bbox dict
    assert list(make_tile_grid(LONLAT_POLY, 5000)["tile_id"]) == list(only_poly["tile_id"])
    bbox = {"west": 3.0, "south": 50.5, "east": 3.2, "north": 50.6}
    assert list(make_tile_grid(BBox(**bbox), 5000)["tile_id"]) == list(make_tile_grid(bbox, 5000)["tile_id"])


def test_point_and_line_aois_with_aoi_crs():
    # GeoJSON is lon/lat unless aoi_crs says otherwise; points/lines on a grid line get the tile to their NE
    point = make_tile_grid({"type": "Point", "coordinates": [500_000, 5_650_000]}, 5000, aoi_crs=UTM31)
    assert list(point["tile_id"]) == ["32631_E0500000_N5650000"]
    line = {"type": "LineString", "coordinates": [[500_000, 5_650_000], [500_000, 5_660_000]]}
    assert list(make_tile_grid(line, 5000, aoi_crs=UTM31)["tile_id"]) == [
        "32631_E0500000_N5650000", "32631_E0500000_N5655000"]


def test_degree_grid_ids():
    gdf = make_tile_grid({"west": -1.2, "south": 50.1, "east": 0.7, "north": 50.4}, 0.5, tiling_crs=4326)
    assert list(gdf["tile_id"]) == [f"4326_E{x}_N50.0" for x in ("-1.5", "-1.0", "-0.5", "0.0", "0.5")]
    assert tile_id(32631, 500000.0, 5650000.0, 5000) == "32631_E0500000_N5650000"
    assert tile_id(4326, 3.0000000001, 50.25, 0.25) == "4326_E3.00_N50.25"


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile_size": -5000}, "tile_size must be positive"),
        ({"tile_size": 0}, "tile_size must be positive"),
        ({"aoi": {"type": "FeatureCollection", "features": []}}, "AOI is empty"),
        ({"aoi": {"type": "Polygon", "coordinates": []}}, "AOI is empty"),
        ({"aoi": {"west": 3, "south": 51, "east": 4, "north": 50}}, "south (51.0) must be less than north"),
        ({"aoi": {"west": 179, "south": 50, "east": -179, "north": 51}}, "antimeridian"),
        ({"aoi": {"foo": 1}}, "must be a bbox"),
        ({"aoi": "/nonexistent/aoi.geojson"}, "AOI file not found"),
        ({"tiling_crs": 999999}, "Invalid tiling_crs"),
        ({"years": []}, "years is empty"),
        ({"extra_columns": {"status": "x"}}, "may not redefine"),
        ({"tile_size": 1000, "max_tiles": 10}, "200 tiles exceed max_tiles=10"),
        ({"tile_size": 0.001}, "candidate grid"),
    ],
)
def test_bad_input_errors(kwargs, message):
    args = {"aoi": ALIGNED, "tile_size": 5000, **kwargs}
    with pytest.raises(TilingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_tile_grid(args.pop("aoi"), args.pop("tile_size"), **args)


def test_write_job_db_errors_and_modes(tmp_path: Path):
    gdf = make_tile_grid(ALIGNED, 5000, tiling_crs=UTM31)
    with pytest.raises(TilingError, match="must end with .parquet or .geoparquet"):
        write_job_db(gdf, tmp_path / "jobs.csv")
    with pytest.raises(TilingError, match="on_exists must be one of"):
        write_job_db(gdf, tmp_path / "jobs.parquet", on_exists="append")
    path = tmp_path / "sub" / "jobs.geoparquet"
    assert write_job_db(gdf, path) is True
    with pytest.raises(FileExistsError, match="already exists"):
        write_job_db(gdf, path)
    assert write_job_db(gdf.iloc[:2], path, on_exists="skip") is False
    assert len(get_job_db(path).read()) == 8
    assert write_job_db(gdf.iloc[:2], path, on_exists="overwrite") is True
    assert len(get_job_db(path).read()) == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["jobs.geoparquet"]  # no temp files left


def test_load_aoi_file_without_crs_needs_aoi_crs(tmp_path: Path):
    path = tmp_path / "aoi.parquet"
    gpd.GeoDataFrame(geometry=[box(0, 0, 1, 1)]).to_parquet(path)
    with pytest.raises(TilingError, match="has no CRS; pass aoi_crs"):
        load_aoi(str(path))
    geom, crs = load_aoi(str(path), aoi_crs=UTM31)
    assert crs.to_epsg() == UTM31 and geom.equals(box(0, 0, 1, 1))


# --------------------------------------------------------------------------- vs openeo split_area


def test_compare_with_openeo_split_area():
    size = 5000
    # Aligned AOI: same tiles.
    ours = make_tile_grid(ALIGNED, size, tiling_crs=UTM31, output_crs=UTM31)
    theirs = split_area(ALIGNED, projection="EPSG:32631", tile_size=size)
    assert len(ours) == len(theirs) == 8
    assert ours.union_all().equals(theirs.union_all())

    # Unaligned AOI: split_area anchors at the AOI corner and shrinks edge tiles (2 x 2),
    # we snap to the global grid (3 x 2 full tiles, reusable ids across AOIs).
    aoi = {"west": 504_000, "south": 5_651_000, "east": 511_000, "north": 5_658_000, "crs": UTM31}
    assert len(split_area(aoi, projection="EPSG:32631", tile_size=size)) == 4
    assert len(make_tile_grid(aoi, size, tiling_crs=UTM31)) == 6

    # L-shaped AOI: split_area keeps the tile that only touches the inner corner (4), we drop it (3).
    ell = Polygon([(500_000, 5_650_000), (510_000, 5_650_000), (510_000, 5_655_000),
                   (505_000, 5_655_000), (505_000, 5_660_000), (500_000, 5_660_000)])
    assert len(split_area(ell, projection="EPSG:32631", tile_size=size)) == 4
    assert len(make_tile_grid(ell, size, aoi_crs=UTM31, tiling_crs=UTM31)) == 3

    # MultiPolygon with two parts inside one grid cell: split_area tiles each part on its own
    # (2 small tiles), we produce the shared grid tile once.
    mp = MultiPolygon([box(501_000, 5_651_000, 502_000, 5_652_000), box(503_000, 5_653_000, 504_000, 5_654_000)])
    assert len(split_area(mp, projection="EPSG:32631", tile_size=size)) == 2
    assert len(make_tile_grid(mp, size, aoi_crs=UTM31, tiling_crs=UTM31)) == 1


# --------------------------------------------------------------------------- Prefect flow


def test_flow_writes_openeo_readable_job_db(prefect_harness, tmp_path: Path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    path = tmp_path / "jobs.parquet"
    aoi = {"west": 3.0, "south": 50.5, "east": 3.2, "north": 50.6}
    result = tile_area(aoi=aoi, tile_size=5000, job_db=str(path), years=[2020, 2021],
                       extra_columns={"collection": "SENTINEL2_L2A"})
    assert result["written"] is True and result["job_db"] == str(path)
    assert result["row_count"] == 2 * result["tile_count"] > 0

    df = get_job_db(path).read()
    assert isinstance(df, gpd.GeoDataFrame)
    assert df.crs.to_epsg() == 4326
    assert len(df) == result["row_count"]
    assert (df["status"] == "not_started").all()
    assert set(df["year"]) == {2020, 2021} and (df["collection"] == "SENTINEL2_L2A").all()

    with get_client(sync_client=True) as client:
        key = JobDbPaths.of(path).artifact_key("tile-grid")
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert artifacts and f"| Tiles | {result['tile_count']} |" in artifacts[0].data

    # existing DB: skip leaves it alone; error (default) fails the run
    skipped = tile_area(aoi=aoi, tile_size=1000, job_db=str(path), on_exists="skip")
    assert skipped == {"job_db": str(path), "row_count": result["row_count"], "tile_count": None, "written": False}
    with pytest.raises(FileExistsError):
        tile_area(aoi=aoi, tile_size=5000, job_db=str(path))


# --------------------------------------------------------------------------- the DB runs through run-jobs


def job_processes(sim, job_ids):
    import openeo

    from tests.flow_helpers import PASSWORD_ENV

    import os

    connection = openeo.connect(sim.url).authenticate_basic("alice", os.environ[PASSWORD_ENV])
    return {job_id: connection.job(job_id).describe()["process"]["process_graph"] for job_id in job_ids}


def test_tile_area_db_runs_with_openeo_style_callback(prefect_harness, tmp_path: Path):
    """A callback written for openeo's job DB examples (row["west"] ...) runs unchanged on it."""
    from flows.run_jobs import run_jobs
    from simulator import start_simulator
    from tests.flow_helpers import backend, fast_config

    path = tmp_path / "jobs.parquet"
    tile_area(aoi={"west": 4.0, "south": 50.5, "east": 4.03, "north": 50.515}, tile_size=2_000,
              job_db=str(path), years=[2023, 2024])  # 2 x 2 tiles x 2 years: 8 rows (was 18: the same code)
    with start_simulator(fast_config()) as sim:
        stats = run_jobs(job_db=str(path), backends=[backend("a", sim, 4)], poll_interval_seconds=0.3,
                         start_job="flows.tiling.example_callbacks:composite_over_tile_bbox", download_results=False)
        df = get_job_db(path).read()
        assert stats["status"] == {"finished": len(df)} and len(df) >= 4
        graphs = job_processes(sim, df["id"])
    for _, row in df.iterrows():
        load = next(n for n in graphs[row["id"]].values() if n["process_id"] == "load_collection")
        extent = load["arguments"]["spatial_extent"]
        assert extent == {k: pytest.approx(row[k]) for k in ("west", "south", "east", "north")}
        assert load["arguments"]["temporal_extent"] == [f"{row['year']}-01-01", f"{row['year'] + 1}-01-01"]
        assert shapely.geometry.box(extent["west"], extent["south"], extent["east"], extent["north"]).covers(
            shapely.segmentize(row["geometry"], 0.001).buffer(-1e-9))


def test_tile_area_db_runs_with_geometry_callback_and_process(prefect_harness, tmp_path: Path):
    """The geometry-using example callback, and the `process=` example UDP (geometry filled from
    the geometry column, year from the year column)."""
    from flows.tiling.example_callbacks import TILE_COMPOSITE_UDP
    from flows.run_jobs import run_jobs
    from simulator import start_simulator
    from tests.flow_helpers import backend, fast_config, serve_json

    aoi = {"west": 4.0, "south": 50.5, "east": 4.04, "north": 50.52}
    with start_simulator(fast_config()) as sim, serve_json(TILE_COMPOSITE_UDP) as udp_url:
        masked, by_process = tmp_path / "masked.parquet", tmp_path / "process.parquet"
        for path in (masked, by_process):
            tile_area(aoi=aoi, tile_size=2_000, job_db=str(path), years=[2024], clip=True)
        run_jobs(job_db=str(masked), backends=[backend("a", sim, 4)], poll_interval_seconds=0.3,
                 start_job="flows.tiling.example_callbacks:ndvi_masked_to_tile", download_results=False)
        run_jobs(job_db=str(by_process), backends=[backend("a", sim, 4)], poll_interval_seconds=0.3,
                 process={"process_id": "tile_composite", "namespace": udp_url}, download_results=False)
        masked_df, process_df = get_job_db(masked).read(), get_job_db(by_process).read()
        assert set(masked_df["status"]) == {"finished"} and set(process_df["status"]) == {"finished"}
        masked_graphs = job_processes(sim, masked_df["id"])
        process_graphs = job_processes(sim, process_df["id"])
    for _, row in masked_df.iterrows():
        mask = next(n for n in masked_graphs[row["id"]].values() if n["process_id"] == "mask_polygon")
        assert shapely.geometry.shape(mask["arguments"]["mask"]).equals_exact(row["geometry"], 1e-9)
    for _, row in process_df.iterrows():
        (node,) = process_graphs[row["id"]].values()
        assert node["process_id"] == "tile_composite" and node["namespace"] == udp_url
        assert node["arguments"]["year"] == 2024
        assert shapely.geometry.shape(node["arguments"]["geometry"]).equals_exact(row["geometry"], 1e-9)
