"""The campaign at a glance in Prefect: parameter help in the deployment form, a progress artifact
updated while the run goes, failed start task runs that end Failed while the run goes on, task runs
named by tile, events that carry their reason, and a state message with the counts."""
from __future__ import annotations

import time

import pandas as pd
import pytest

from flows.config.params import BackendConfig
from flows.run_jobs import run_jobs
from jobdb import JobDbPaths
from simulator import start_simulator
from tests.flow_helpers import backend, fast_config, make_db


def test_deployment_parameter_schema_describes_every_parameter():
    """Built as `prefect deploy` builds it (cli/deploy/_core.py: parameter_schema(flow))."""
    from prefect.utilities.callables import parameter_schema

    properties = parameter_schema(run_jobs).model_dump_for_openapi()["properties"]
    assert len(properties) >= 15
    for name, prop in properties.items():
        assert prop.get("description"), f"{name} has no description"
        assert prop.get("type") or prop.get("anyOf") or prop.get("$ref") or prop.get("allOf"), f"{name} has no type"
    assert properties["max_start_workers"]["type"] == "integer" and properties["max_start_workers"]["maximum"] == 100
    assert "Seconds between status polls" in properties["poll_interval_seconds"]["description"]
    assert run_jobs.description.startswith("Create, start, poll and download")
    described = BackendConfig.model_fields["max_parallel_starts"].description
    assert "in this run" in described and "tag concurrency limit 'openeo" not in described


def read_artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return found[-1] if found else None


def wait_for(what, check, seconds: float = 300.0):  # a bound: a loaded server records events late
    """Until `check()` is truthy: the server records task-run states and events asynchronously."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            assert value, f"{what}: not seen within {seconds:.0f} s"
            return value
        time.sleep(0.5)


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_reads_at_a_glance(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter
    from prefect.types import DateTime

    good, bad = start_simulator(fast_config()), start_simulator(fast_config(p_error=1.0))
    try:
        # rows 0-2 on the good backend, 3-4 on the one whose jobs all fail, 5 (T005) breaks the callback
        db = make_db(tmp_path / "jobs.parquet", 6, backend_name=["good"] * 3 + ["bad"] * 2 + ["good"])
        since = DateTime.now("UTC").subtract(seconds=5)
        state = run_jobs(job_db=str(db), backends=[backend("good", good, 3), backend("bad", bad, 2)],
                         start_job="tests.glance_callbacks:breaks_on_one_tile", poll_interval_seconds=0.3,
                         failure_threshold=0.9, return_state=True)
    finally:
        good.stop()
        bad.stop()
    df = pd.read_parquet(db)
    assert list(df["status"]) == ["finished"] * 3 + ["error"] * 2 + ["start_failed"]  # the run went on
    assert state.is_completed()
    # the state message carries the counts
    assert all(part in state.message for part in ("3 finished", "2 error", "1 start_failed")), state.message

    flow_run_id = state.state_details.flow_run_id

    def task_runs():
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        return {r.name: r for r in runs if r.state is not None and r.state.is_final()}

    # T005's callback runs in a `start-…` task (created for a free slot) or a `create-…` one (ahead of it)
    broken = {"start-T005-2021@good", "create-T005-2021@good"}

    def all_recorded():
        runs = task_runs()
        names = set(runs)
        wanted = ({"download-T000-2020", "download-T001-2021", "download-T002-2022",
                   "error-logs-T003-2023", "error-logs-T004-2020"})
        return runs if wanted <= names and broken & names else None

    runs = wait_for("every task run recorded, named by tile", all_recorded)
    failed_callback = runs[next(iter(broken & set(runs)))]
    assert failed_callback.state.is_failed()
    assert "KeyError" in failed_callback.state.message
    assert runs["start-T000-2020@good"].state.is_completed()
    assert not [name for name in runs if any(job_id in name for job_id in df["id"].dropna())], "named by job id"

    def events():
        event_filter = EventFilter(event=EventNameFilter(prefix=["openeo.job."]),
                                   occurred=EventOccurredFilter(since=since, until=DateTime.now("UTC").add(minutes=10)))
        with get_client(sync_client=True) as client:
            found = [e for e in client.read_events(filter=event_filter, limit=50).events
                     if e.resource.get("openeo.job_db") == str(db)]
        kinds = [e.event for e in found]
        return found if kinds.count("openeo.job.error") == 2 and "openeo.job.start_failed" in kinds else None

    found = wait_for("error and start_failed events", events)
    for event in found:
        if event.event == "openeo.job.error":
            assert event.payload["reason"], event  # the job's error message (from its logs)
            assert event.resource["openeo.backend"] == "bad"
    (start_failed,) = [e for e in found if e.event == "openeo.job.start_failed"]
    assert "KeyError" in start_failed.payload["reason"] and start_failed.resource["openeo.tile"] == "T005-2021"

    def status_lines():  # the run's log lines about status changes, as the UI shows them
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        lines = [log.message for log in logs if " -> " in log.message]
        return lines if any("start_failed" in line for line in lines) else None

    lines = wait_for("the status lines in the run's logs", status_lines)
    # a row without a job says so (not `job - (row 5, good)`); a row with one names its job id
    assert any(line.startswith("row 5 (good, no job): ") and "-> start_failed: " in line for line in lines), lines
    assert any(line.startswith(f"job {df['id'][3]} (row 3, bad): ") for line in lines), lines
    assert not [line for line in lines if line.startswith(("job - ", "job None", "job nan"))], lines

    paths = JobDbPaths.of(db)
    table = read_artifact(paths.artifact_key("progress-table"))
    assert table is not None and table.type == "markdown"
    for expected in ("| backend |", "| good |", "| bad |", "finished", "start_failed", "0 of 6 rows left"):
        assert expected in table.data, (expected, table.data)
    progress = read_artifact(paths.artifact_key("progress"))
    assert float(progress.data) == 100.0 and "0 of 6 rows left" in progress.description
