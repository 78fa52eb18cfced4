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

from tasks.results.collection import CampaignCollection
from tasks.results.items import build_item, summary
from flows.run_jobs import run_jobs
from tests.flow_helpers import backend, fast_config, make_db
from tests.stac_checks import check_collection, open_with_pystac, validate

ROOT = Path(__file__).resolve().parents[1]


def bounded_db(path: Path, n: int) -> Path:
    """n tiles of 0.1 degree in a row, years 2020.., with the EPSG:4326 bounds openeo callbacks read."""
    west = [4.0 + 0.1 * i for i in range(n)]
    return make_db(path, n, west=west, south=[50.0] * n, east=[w + 0.1 for w in west], north=[50.1] * n)


def downloaded(db: Path):
    df = pd.read_parquet(db)
    return sorted(df.loc[(df["status"] == "finished") & (df["results_status"] == "downloaded"), "id"])


def test_collection_after_a_run_and_rebuilt_by_the_command(tmp_path, prefect_harness):
    from simulator import start_simulator

    sim = start_simulator(fast_config(asset_count=2, asset_size=3000))
    try:
        db = bounded_db(tmp_path / "jobs.parquet", 6)
        stats = run_jobs(job_db=str(db), backends=[backend("a", sim, 3)], start_job="flows.tiling.demo_callbacks:start_job",
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
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
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


def test_items_parquet_holds_the_items_with_a_footprint_and_a_campaign_without_any_gets_none(tmp_path):
    """GeoParquet needs a geometry per row: a job DB without geometry (items with `geometry: null`)
    made stac-geoparquet raise at every run's end (seen in the 10 000-row bench)."""
    import pyarrow.parquet as pq

    from tasks.results.collection import ITEMS_PARQUET
    from tasks.results.rebuild import export_parquet
    from tasks.results.storage import ResultsRoot

    def stored_item(root, job_id, geometry):
        footprint = {"geometry": geometry, "bbox": [5, 51, 5, 51] if geometry else None, "row": {"year": 2020},
                     "provenance": {"openeo:job_id": job_id}}
        item = build_item(job_id, "c", footprint, {}, {"b.tif": {"size": 10}}, {"b.tif": "./b.tif"})
        href = f"job_{job_id}/job_{job_id}_item.json"
        root.write_bytes(href, json.dumps(item).encode())
        return summary(item, href)

    root = ResultsRoot(tmp_path / "results")
    mixed = CampaignCollection("c", "d")
    mixed.add(stored_item(root, "j-1", {"type": "Point", "coordinates": [5, 51]}))
    mixed.add(stored_item(root, "j-2", None))
    assert export_parquet(root, mixed, min_items=1) and mixed.parquet
    assert pq.read_table(tmp_path / "results" / ITEMS_PARQUET).column("id").to_pylist() == ["j-1"]

    bare_root = ResultsRoot(tmp_path / "bare")
    bare = CampaignCollection("c", "d")
    bare.add(stored_item(bare_root, "j-3", None))
    assert not export_parquet(bare_root, bare, min_items=1) and not bare.parquet
    assert not (tmp_path / "bare" / ITEMS_PARQUET).exists()


WRITE_SYSCALL = {"x86_64": "1", "aarch64": "64"}


def blocked_writing(pid: int, path: Path) -> bool:
    """Some thread of `pid` is inside write() on the file `path` (/proc: its syscall and open files)."""
    import platform

    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()
            if len(fields) > 1 and fields[0] == WRITE_SYSCALL[platform.machine()] and \
                    os.readlink(f"/proc/{pid}/fd/{int(fields[1], 16)}") == str(path):
                return True
        except (OSError, ValueError):
            continue
    return False


def _read_available(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return b""


def test_sigkill_while_writing_the_collection_then_resume(tmp_path, prefect_harness):
    """The collection's temporary file is made a FIFO with a 4 KiB buffer: the writer blocks in the
    middle of the document, the test sees a thread of the run blocked in write() on it (the event,
    from /proc), SIGKILLs the run and takes the partial bytes. collection.json is still the previous, valid version; a partial temporary file
    (what a kill leaves on a disk) is left; the resumed run writes a valid and complete collection."""
    import fcntl
    import signal
    import time

    from prefect.settings import PREFECT_API_URL
    from simulator import start_simulator

    sim = start_simulator(fast_config(queue_time=0.1, run_time=0.3))
    db = bounded_db(tmp_path / "jobs.parquet", 48)
    kwargs = dict(job_db=str(db), backends=[backend("a", sim, 8)], start_job="flows.tiling.demo_callbacks:start_job",
                  poll_interval_seconds=0.25)
    collection, partial = tmp_path / "collection.json", tmp_path / ".collection.json.part"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, str(ROOT / "tests" / "run_flow_process.py"), json.dumps(kwargs)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reader = None
    try:
        deadline = time.monotonic() + 600  # a bound for hangs (a loaded machine)
        while not collection.exists():  # the run's first write (before any job ends)
            assert child.poll() is None and time.monotonic() < deadline, "no collection written"
            time.sleep(0.02)  # watching another process's file
        while not blocked_writing(child.pid, partial):  # the writer is stuck in the middle of a document
            assert child.poll() is None and time.monotonic() < deadline, "the writer never blocked mid-document"
            if not partial.exists():
                # A document smaller than the pipe goes through; its fsync then fails on the FIFO
                # and the writer removes its temp file (jobdb/atomic.py): put another FIFO there.
                try:
                    os.mkfifo(partial)
                except FileExistsError:  # the writer's next temp file came first: wait for its end
                    continue
                if reader is not None:
                    os.close(reader)
                reader = os.open(partial, os.O_RDONLY | os.O_NONBLOCK)
                capacity = fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, 4096)
                assert capacity == 4096
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        written = b""
        if reader is not None:
            while chunk := _read_available(reader):
                written += chunk
            os.close(reader)
    try:
        # The pipe may hold earlier attempts (fsync fails on a FIFO) besides the blocked one: keep a cut
        # document as the leftover, which is what a kill in the middle of a write leaves on a disk.
        partial.unlink()
        partial.write_bytes(written[: max(1, len(written) // 2)])
        before = json.loads(collection.read_text())
        validate(before)  # the previous version, untouched
        listed = [link for link in before["links"] if link["rel"] == "item"]
        assert len(listed) < 48
        stats = run_jobs(**kwargs)
    finally:
        sim.stop()
    assert stats["status"] == {"finished": 48}
    check_collection(str(collection), downloaded(db))
    assert not partial.exists()
