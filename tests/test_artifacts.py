"""What a run leaves to look at: progress/table/markdown artifacts (keys unique per job DB) and the
tile map (PNG embedded in the summary, interactive HTML)."""
from __future__ import annotations

import base64

import pandas as pd
import pytest

from flows.report.reporting import ProgressReport, publish_final_artifacts, summary_markdown
from flows.run_jobs import run_jobs
from flows.tile_area import tile_area
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
    # 2 x 2 tiles (the map and the artifacts are the same code for more: each row is task runs more)
    tile_area(aoi={"west": 4.0, "south": 50.5, "east": 4.04, "north": 50.52}, tile_size=2_000, job_db=str(db))
    rows = len(pd.read_parquet(db))
    assert 3 <= rows <= 40
    stats = run_jobs(job_db=str(db), backends=[backend("a", sim, 4)], start_job="flows.tiling.demo_callbacks:start_job",
                     poll_interval_seconds=0.3)
    assert stats["status"] == {"finished": rows}

    paths = JobDbPaths.of(db)
    assert stats["tile_map"] == {"png": str(paths.map_png), "html": str(paths.map_html)}
    assert paths.map_png.read_bytes()[:8] == PNG_MAGIC and paths.map_png.stat().st_size > 5_000

    progress = read_artifacts(paths.artifact_key("progress"))
    assert progress and progress[-1].type == "progress"
    assert max(float(a.data) for a in progress) == 100.0
    table = read_artifacts(paths.artifact_key("status"))
    assert table and table[-1].type == "table" and "finished" in str(table[-1].data)
    summary = read_artifacts(paths.artifact_key("summary"))
    assert summary and summary[-1].type == "markdown"
    text = summary[-1].data
    assert str(paths.map_html) in text and f"rows: **{rows}**" in text
    # the PNG itself is in the summary, so the Prefect UI shows the map (bench/ui_check.py)
    embedded = text.split("(data:image/png;base64,", 1)[1].split(")", 1)[0]
    assert base64.b64decode(embedded) == paths.map_png.read_bytes()


def test_artifact_keys_unique_per_job_db(tmp_path):
    """Two `jobs.csv` in different folders never share an artifact history."""
    first, second = tmp_path / "a" / "jobs.csv", tmp_path / "b" / "jobs.csv"
    keys = {kind: {JobDbPaths.of(db).artifact_key(kind) for db in (first, second)}
            for kind in ("progress", "status", "summary")}
    assert all(len(pair) == 2 for pair in keys.values()), keys
    assert all(k.startswith("jobs-") for pair in keys.values() for k in pair)

    df = pd.DataFrame({"status": ["finished", "error"], "backend_name": ["x", "x"], "error_message": [None, "boom"]})
    stats = {"job_db": "", "rows": 2, "terminal": 2, "status": {"error": 1, "finished": 1},
             "by_backend": {"x": {"error": 1, "finished": 1}}, "elapsed_seconds": 1.0, "requests_total": 3}
    from prefect import flow

    @flow(name="report-only")
    def report_only(db: str, percent: float):  # artifacts belong to a flow run, as in run-jobs
        report = ProgressReport(db)
        report.update({"x": {"finished": 1, "not_started": 1} if percent == 50.0 else {"finished": 1, "error": 1}},
                      rows=2, elapsed_seconds=1.0)
        publish_final_artifacts(db, df, {**stats, "job_db": db}, failures=[])

    for db, percent in ((first, 50.0), (second, 100.0)):
        report_only(str(db), percent)
    for db, percent in ((first, 50.0), (second, 100.0)):
        paths = JobDbPaths.of(db)
        (progress,) = read_artifacts(paths.artifact_key("progress"))
        assert float(progress.data) == percent
        (summary,) = read_artifacts(paths.artifact_key("summary"))
        assert str(db) in summary.data and str(paths.db) in summary.description


def test_summary_links_a_map_too_large_to_embed(tmp_path, monkeypatch):
    import flows.report.reporting as reporting

    png = tmp_path / "jobs_map.png"
    png.write_bytes(PNG_MAGIC + b"\0" * 100)
    stats = {"job_db": "jobs.csv", "rows": 1, "terminal": 1, "status": {"finished": 1}, "elapsed_seconds": 1.0,
             "requests_total": 1, "tile_map": {"png": str(png)}}
    assert "data:image/png;base64," in summary_markdown(stats, [])
    monkeypatch.setattr(reporting, "MAX_EMBEDDED_MAP_BYTES", 50)
    text = summary_markdown(stats, [])
    assert "data:image/png" not in text and f"tile map: `{png}`" in text
