"""The campaign's STAC collection: built as jobs are downloaded, valid after a run and after a
SIGKILL in the middle of writing it, rebuilt by `python -m jobdb stac`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pystac
import pytest

from campaign_results.collection import CampaignCollection
from campaign_results.items import build_item, summary
from flows.run_jobs import run_jobs
from tests.flow_helpers import backend, fast_config, make_db
from tests.stac_checks import check_collection, open_with_pystac, validate

pytestmark = pytest.mark.usefixtures("prefect_harness")
ROOT = Path(__file__).resolve().parents[1]


def bounded_db(path: Path, n: int) -> Path:
    """n tiles of 0.1 degree in a row, years 2020.., with the EPSG:4326 bounds openeo callbacks read."""
    west = [4.0 + 0.1 * i for i in range(n)]
    return make_db(path, n, west=west, south=[50.0] * n, east=[w + 0.1 for w in west], north=[50.1] * n)


def downloaded(db: Path):
    df = pd.read_parquet(db)
    return sorted(df.loc[(df["status"] == "finished") & (df["results_status"] == "downloaded"), "id"])


def test_collection_after_a_run_and_rebuilt_by_the_command(tmp_path):
    from simulator import start_simulator

    sim = start_simulator(fast_config(asset_count=2, asset_size=3000))
    try:
        db = bounded_db(tmp_path / "jobs.parquet", 6)
        stats = run_jobs(job_db=str(db), backends=[backend("a", sim, 3)], start_job="flows.demo_callbacks:start_job",
                         poll_interval_seconds=0.25)
    finally:
        sim.stop()
    collection_url = str(tmp_path / "collection.json")
    assert stats["collection"] == collection_url and stats["results"] == str(tmp_path)
    jobs = downloaded(db)
    assert len(jobs) == 6
    checked = check_collection(collection_url, jobs)
    collection = checked["collection"]
    assert collection["id"] == "jobs" and collection["license"] == "CC-BY-4.0"  # from the backend's results
    assert [p["name"] for p in collection["providers"]] == ["openEO simulator"]
    assert set(collection["item_assets"]) == {"openEO_0.tif", "openEO_1.tif", "openeo-job"}
    assert collection["extent"]["spatial"]["bbox"][0] == pytest.approx([4.0, 50.0, 4.6, 50.1])
    assert collection["extent"]["temporal"]["interval"][0][0].startswith("2020-01-01")
    item = checked["items"][0]
    row = pd.read_parquet(db).set_index("id").loc[item["id"]]
    assert item["properties"]["openeo:tile_id"] == row["tile_id"] and item["properties"]["openeo:year"] == row["year"]
    assert item["properties"]["start_datetime"].startswith(f"{row['year']}-01-01")
    assert len(open_with_pystac(collection_url)) == 6

    # the command rebuilds it from the DB and the results, even with an item file lost
    os.unlink(collection_url)
    lost = tmp_path / f"job_{jobs[0]}" / f"job_{jobs[0]}_item.json"
    os.unlink(lost)
    done = subprocess.run([sys.executable, "-m", "jobdb", "stac", str(db), "--json"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["items"] == 6 and outcome["rebuilt_items"] == 1 and lost.exists()
    check_collection(collection_url, jobs)


def test_item_takes_time_projection_and_geometry_from_the_results():
    results = {
        "geometry": {"type": "Polygon", "coordinates": [[[5, 51], [6, 51], [6, 52], [5, 52], [5, 51]]]},
        "bbox": [5, 51, 6, 52],
        "properties": {"start_datetime": "2023-03-01T00:00:00Z", "end_datetime": "2023-03-31T23:59:59Z",
                       "proj:epsg": 32631, "license": "CC-BY-4.0"},
    }
    stored = {"b.tif": {"size": 10, "type": "image/tiff; application=geotiff", "roles": ["data"],
                        "proj:shape": [10, 10], "proj:epsg": 32631}}
    footprint = {"geometry": {"type": "Point", "coordinates": [0, 0]}, "bbox": [0, 0, 0, 0], "row": {"year": 2020},
                 "provenance": {"openeo:job_id": "j-1", "openeo:attempt": 2}}
    item = build_item("j-1", "c", footprint, results, stored, {"b.tif": "./b.tif"})
    validate(item)
    assert item["bbox"] == [5, 51, 6, 52] and item["geometry"]["type"] == "Polygon"  # the results' footprint wins
    assert item["properties"]["start_datetime"] == "2023-03-01T00:00:00Z"
    assert item["properties"]["proj:code"] == "EPSG:32631" and "proj:epsg" not in item["properties"]
    assert item["assets"]["b.tif"]["proj:shape"] == [10, 10] and item["assets"]["b.tif"]["file:size"] == 10
    assert any("projection" in url for url in item["stac_extensions"])
    collection = CampaignCollection("c", "d")
    collection.add(summary(item, "job_j-1/job_j-1_item.json"))
    document = collection.to_dict()
    validate(document)
    again = CampaignCollection.from_dict(document)
    assert again.hrefs == collection.hrefs and again.bbox == [5, 51, 6, 52] and again.license == "CC-BY-4.0"
    assert pystac.Collection.from_dict(document).extent.temporal.intervals[0][0].month == 3
