"""What a run leaves to look at: progress/table/markdown artifacts and the tile map PNG."""
from __future__ import annotations

import pandas as pd
import pytest

from flows.run_jobs import run_jobs
from flows.tile_area import tile_area
from flows.tile_map import tile_map_path, write_tile_map
from jobdb import JobDbPaths
from simulator import start_simulator
from tests.flow_helpers import backend, fast_config

pytestmark = pytest.mark.usefixtures("prefect_harness")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def sim():
    sim = start_simulator(fast_config())
    yield sim
    sim.stop()


def read_artifacts(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def test_artifacts_and_tile_map(sim, tmp_path):
    db = tmp_path / "grid.parquet"
    tile_area(aoi={"west": 4.0, "south": 50.5, "east": 4.1, "north": 50.55}, tile_size=2_000, job_db=str(db))
    rows = len(pd.read_parquet(db))
    assert 3 <= rows <= 40
    stats = run_jobs(job_db=str(db), backends=[backend("a", sim, 4)], start_job="flows.demo_callbacks:start_job",
                     poll_interval_seconds=0.3)
    assert stats["status"] == {"finished": rows}

    png = tile_map_path(db)
    assert stats["tile_map"] == str(png) and png.name == "grid_map.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5_000

    keys = JobDbPaths.of(db)
    progress = read_artifacts(keys.artifact_key("progress"))
    assert progress and progress[-1].type == "progress"
    assert max(float(a.data) for a in progress) == 100.0
    table = read_artifacts(keys.artifact_key("status"))
    assert table and table[-1].type == "table" and "finished" in str(table[-1].data)
    summary = read_artifacts(keys.artifact_key("summary"))
    assert summary and summary[-1].type == "markdown"
    assert "grid_map.png" in summary[-1].data and f"rows: **{rows}**" in summary[-1].data


def test_no_geometry_no_map(tmp_path):
    df = pd.DataFrame({"status": ["finished", "error"], "tile_id": ["a", "b"]})
    assert write_tile_map(df, tmp_path / "jobs.csv") is None
    assert not list(tmp_path.iterdir())
