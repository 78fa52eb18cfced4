"""Operator limits: tags on every task run, Prefect Variables that change a running campaign's limits."""
from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Dict, List, Tuple

import pandas as pd
import pytest

from flows.config.limits import BadOverride, LimitOverrides, parse_override, task_tags, variable_name
from flows.config.params import BackendConfig
from flows.rules.plan import BackendPolicy, InFlight, Situation
from flows.rules.scheduler import plan_cycle
from jobdb.store import JobStore
from simulator import start_simulator
from tasks.accounts.identity import account_id
from tests.flow_helpers import backend, fast_config, make_db, recorded_task_runs

log = logging.getLogger("test-limits")


# --- names, tags, parsing (no Prefect) ----------------------------------------------------------
def test_variable_names_are_valid_prefect_variable_names():
    from prefect.client.schemas.actions import VariableCreate

    for name in ("cdse", "CDSE.prod", "vito_2", "a-b"):
        for knob in ("parallel_jobs", "max_starts_per_minute", "max_parallel_starts"):
            VariableCreate(name=variable_name(knob, name), value=1)  # raises if Prefect refuses the name
    assert variable_name("parallel_jobs", "CDSE.prod") == "openeo-parallel-jobs-cdse-prod"
    assert variable_name("max_starts_per_minute", "cdse") == "openeo-max-starts-per-minute-cdse"


def test_account_tag_is_the_accounts_identity_and_shows_no_secret():
    """The account tag is the one account identity (tasks/accounts/identity.py), nothing of its own."""
    account = account_id("https://user:hunter2@openeo.example.org:8443/openeo/1.2", client_id="svc-7")
    tags = task_tags("b", account)
    assert tags == ("openeo", "openeo-backend:b", "openeo-account:openeo.example.org:8443~svc-7")
    assert not any("hunter2" in tag for tag in tags)


@pytest.mark.parametrize("raw, value", [(1, 1.0), ("2", 2.0), (" 0 ", 0.0), (12.5, 12.5)])
def test_override_values(raw, value):
    assert parse_override(raw) == value


@pytest.mark.parametrize("raw", ["many", -1, None, True, [1], {"a": 1}, "nan"])
def test_bad_override_values(raw):
    with pytest.raises(BadOverride):
        parse_override(raw)


def overrides_reading(values: Dict[str, object], backends=None) -> Tuple[LimitOverrides, List[int]]:
    """LimitOverrides whose reader returns `values` (mutable: the test edits them), not started on a loop."""
    backends = backends or {"a": BackendConfig(name="a", url="http://127.0.0.1:9", parallel_jobs=3,
                                               max_starts_per_minute=12)}
    calls: List[int] = []

    def read(names):
        calls.append(1)
        if values.get("__down__"):
            raise ConnectionError("Prefect API down")
        return {k: v for k, v in values.items() if k in set(names)}

    overrides = LimitOverrides(backends, {"a": "block my-block"}, interval=3600, logger=log, read=read)
    assert overrides.wait_first_read(10)
    return overrides, calls


def test_overrides_apply_keep_last_value_in_an_outage_and_go_back_when_deleted():
    values: Dict[str, object] = {"openeo-parallel-jobs-a": 1}
    rates: List = []
    overrides, _ = overrides_reading(values)
    overrides.on_rate = lambda backend, rate: rates.append((backend, rate))
    try:
        base = {"a": BackendPolicy(3, None)}
        assert overrides.policies(base)["a"].parallel_jobs == 1
        assert overrides.in_force()["a"]["parallel_jobs"].source == "variable openeo-parallel-jobs-a"
        assert overrides.in_force()["a"]["max_starts_per_minute"].source == "block my-block"
        values["__down__"] = True
        assert overrides.refresh() is False  # an outage: the last known value stays in force
        assert overrides.policies(base)["a"].parallel_jobs == 1
        values.update({"__down__": False, "openeo-max-starts-per-minute-a": 6, "openeo-parallel-jobs-a": "bad"})
        assert overrides.refresh() is True
        assert overrides.policies(base)["a"].parallel_jobs == 3  # a bad value: the configured one
        assert rates == [("a", 6.0)]  # the start rate goes to the account's pacer
        values.pop("openeo-max-starts-per-minute-a")
        assert overrides.refresh() is True
        assert rates[-1] == ("a", 12)  # deleted: back to the configured rate
        assert "max_starts_per_minute 12 (block my-block)" in overrides.describe()
    finally:
        overrides.close()


def test_close_does_not_wait_for_a_read_the_api_has_not_answered():
    """At a stop the reader may be in a read of a loaded Prefect API (seconds; a 1500-row stop
    waited for it): close() tells it to end and returns; the late answer is kept by nobody."""
    reading, answer = threading.Event(), threading.Event()
    calls: List[int] = []
    changes: List[int] = []

    def slow_after_the_first(names):
        calls.append(1)
        if len(calls) > 1:
            reading.set()
            answer.wait(60)  # the API takes its time
            return {"openeo-parallel-jobs-a": 1}
        return {}

    overrides = LimitOverrides({"a": BackendConfig(name="a", url="http://127.0.0.1:9", parallel_jobs=3)},
                               {}, interval=0.01, logger=log, read=slow_after_the_first,
                               on_change=lambda: changes.append(1))
    try:
        assert reading.wait(30)  # the second read is out and does not answer
        t0 = time.monotonic()
        overrides.close()
        closing = time.monotonic() - t0
        answer.set()
        overrides._thread.join(30)
        # joined before: 5 s, the join's timeout, with the read still out; now microseconds
        assert closing < 2.5, f"close() took {closing:.2f} s: it waited for the read"
        assert overrides.reads == 1 and changes == [], "the read answered after close() was used"
        assert overrides.policies({"a": BackendPolicy(3)})["a"].parallel_jobs == 3
    finally:
        answer.set()
        overrides.close()


def test_zero_pauses_starts_on_that_backend_only(tmp_path):
    """parallel_jobs 0: no new job and no start of a created one on that backend; polls go on."""
    db = make_db(tmp_path / "jobs.parquet", 6, status=["running", "created", "not_started", "not_started",
                                                       "not_started", "not_started"],
                 id=["j-1", "j-2", None, None, None, None], backend_name=["a", "a", None, None, None, None])
    store = JobStore.open(str(db))
    overrides, _ = overrides_reading({"openeo-parallel-jobs-a": 0}, backends={
        "a": BackendConfig(name="a", url="http://127.0.0.1:9", parallel_jobs=3),
        "b": BackendConfig(name="b", url="http://127.0.0.1:8", parallel_jobs=2)})
    try:
        policies = overrides.policies({"a": BackendPolicy(3), "b": BackendPolicy(2)})
        plan = plan_cycle(store.snapshot(), Situation(backends=policies, now=0.0, poll_due=True), InFlight(),
                          lambda row, attempt: f"m{row}-{attempt}")
    finally:
        overrides.close()
    assert {o.backend for o in plan.starts} == {"b"} and len(plan.starts) == 2
    assert [o.backend for o in plan.polls] == ["a"]  # the running job is still followed


# --- real Prefect + simulator -----------------------------------------------------------------
def active_at(jobs, t: float) -> int:
    return sum(1 for j in jobs if j.queued_at is not None and j.queued_at <= t
               and (j.ended_at is None or j.ended_at > t))


def max_active_between(sim, t0: float, t1: float) -> int:
    """Most jobs queued or running at once in [t0, t1), from the simulator's job timelines."""
    with sim.state.lock:
        jobs = list(sim.state.jobs.values())
    moments = [t0] + [j.queued_at for j in jobs if j.queued_at is not None and t0 <= j.queued_at < t1]
    return max(active_at(jobs, t) for t in moments)


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    """Until `condition()` holds (observed state); the timeout only guards against a hang."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never observed: {what}"
        time.sleep(0.05)
    print(f"observed after {time.monotonic() - t0:.1f} s: {what}")


def set_variable(name: str, value) -> None:
    from prefect.variables import Variable

    Variable.set(name, value, overwrite=True)


START_ROUTE = "POST /jobs/{id}/results"


@pytest.mark.usefixtures("prefect_harness")
def test_lowering_and_raising_parallel_jobs_while_the_campaign_runs(tmp_path):
    """Every step waits for an observed event (a held start request, the run's log line, the job
    DB, the simulator's counters), never for a time: the machine's speed changes no outcome."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.run_jobs import run_jobs
    from jobdb import JobDbPaths

    name = f"lim{uuid.uuid4().hex[:6]}"
    variable = variable_name("parallel_jobs", name)
    sim = start_simulator(fast_config(queue_time=0.1, run_time=2.0))
    db = make_db(tmp_path / "campaign_x.parquet", 12)
    result: Dict[str, object] = {}

    def run():
        try:
            # create_ahead=0: every created job holds its slot, so "active" is what the limit bounds
            result["state"] = run_jobs(job_db=str(db), backends=[{**backend(name, sim, 3), "create_ahead": 0}],
                                       start_job="flows.tiling.demo_callbacks:start_job", poll_interval_seconds=0.3,
                                       return_state=True)
        except BaseException as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    def active() -> int:
        return sum(sim.counters()["active_per_user"].values())

    def starts_in_flight() -> bool:
        try:
            return bool(pd.read_parquet(db)["status"].isin(["creating", "queued_for_start", "created"]).any())
        except (OSError, ValueError):
            return True  # being replaced: look again

    in_force = {"1": threading.Event(), "3": threading.Event()}

    class OverrideInForce(logging.Handler):  # logged by the cycle, just before its first decision with it
        def emit(self, record):
            for value, event in in_force.items():
                if f"is now {value} (Variable {variable})" in record.getMessage():
                    event.set()

    seen = OverrideInForce()
    logging.getLogger("prefect.flow_runs").addHandler(seen)
    sim.gates.close(START_ROUTE)
    thread = threading.Thread(target=run)
    try:
        thread.start()
        assert sim.gates.wait_held([START_ROUTE], 180, count=3), "3 starts never in flight at once"
        set_variable(variable, 1)
        wait_for(in_force["1"].is_set, "the run deciding with the override 1")
        sim.gates.open(START_ROUTE)  # the 3 starts decided before it land: 3 jobs active
        # every start decided before the override has landed, and the jobs drained to 1
        wait_for(lambda: not starts_in_flight() and active() <= 1, "active jobs down to 1", 120)
        t_low = time.monotonic()
        started_low = sim.counters()["job_starts"]
        wait_for(lambda: sim.counters()["job_starts"] >= started_low + 2, "2 more jobs, one at a time")
        t_raise = time.monotonic()
        sim.gates.close(START_ROUTE)
        set_variable(variable, 3)
        wait_for(in_force["3"].is_set, "the run deciding with the override 3")
        # under the limit 1 at most one start can be in flight: two held at once is the raise followed
        assert sim.gates.wait_held([START_ROUTE], 120, count=2), "the raised limit was not followed"
        sim.gates.open(START_ROUTE)
        thread.join(180)
        assert not thread.is_alive(), "the run did not end"
    finally:
        logging.getLogger("prefect.flow_runs").removeHandler(seen)
        sim.gates.open()
        set_variable(variable, 3)
        thread.join(60)
        sim.stop()
    assert "error" not in result, result.get("error")
    state = result["state"]
    assert state.is_completed(), state.message
    assert max_active_between(sim, t_low, t_raise) == 1  # lowered: never more than 1, yet still going
    counters = sim.counters()
    assert counters["jobs_total"] == 12 and counters["duplicate_titles"] == {}
    assert max(counters["max_active_per_user"].values()) <= 3
    df = pd.read_parquet(db)
    assert (df["status"] == "finished").all()
    stats = state.result()
    assert stats["limits"][name]["parallel_jobs"] == {"value": 3.0, "source": f"variable {variable}"}
    # the progress artifacts show the limit in force and where it came from
    with get_client(sync_client=True) as client:
        progress = {kind: client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[JobDbPaths.of(str(db)).artifact_key(kind)])))[-1]
            for kind in ("progress", "progress-table")}
    shown = f"parallel_jobs 3 (variable {variable})"
    assert shown in progress["progress"].description and shown in progress["progress-table"].data
    # tags read back through the Prefect API, once its server has recorded the task runs
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
    assert {"openeo", "openeo-campaign:campaign_x"} <= set(flow_run.tags)
    starts = recorded_task_runs(flow_run_id, f"@{name}", lambda runs: len(runs) >= 12, "the 12 start task runs")
    polls = recorded_task_runs(flow_run_id, f"poll-{name}", bool, "a poll task run")
    expected = {"openeo", f"openeo-backend:{name}", f"openeo-account:127.0.0.1:{sim.port}~alice"}
    for task_run in starts + polls:
        assert set(task_run.tags) == expected, (task_run.name, task_run.tags)


def test_a_start_rate_override_respaces_the_accounts_turns(tmp_path, monkeypatch):
    from tasks.accounts.identity import STATE_DIR_ENV
    from tasks.accounts.pacing import AccountPacer, turn_interval

    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path))
    pacer = AccountPacer(f"acct-{uuid.uuid4().hex}", max_starts_per_minute=600)
    first = pacer._schedule.reserve()
    pacer.set_max_starts_per_minute(6)
    second, third = pacer._schedule.reserve(), pacer._schedule.reserve()
    assert second - first == pytest.approx(turn_interval(600))  # reserved under the old rate
    assert third - second == pytest.approx(turn_interval(6))  # from now on: the new spacing
    pacer.set_max_starts_per_minute(None)
    assert pacer._schedule is None and pacer.acquire(is_start=True) is not None  # off: no turn to wait for
