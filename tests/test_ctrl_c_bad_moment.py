"""Ctrl-C at the worst moment: a create and a start in flight, downloads running. Three simulated
backends, each holding one kind of request (simulator/gates.py), rows pinned to them, so the
moment is reached by events on any machine; the held requests go on once the run says it stops.
Before the rerun, the job DB on disk is read: every row in an intent state has its way back,
every job any backend created is in the DB, the DB is what the run reported at exit (its final
persist happened), and the run left the slot ledger."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, List

import pandas as pd
import pytest
from prefect.settings import PREFECT_API_URL

from tasks.accounts import STATE_DIR_ENV, account_id
from tasks.accounts.slots import AccountSlots
from jobdb import JobDbPaths
from jobdb.status import HOLDS_SLOT
from simulator import start_simulator
from tests.flow_helpers import PASSWORD_ENV, assert_results_complete, fast_config, make_db

ROOT = Path(__file__).resolve().parents[1]
HELD = {"create": "POST /jobs", "start": "POST /jobs/{id}/results",
        "download": "GET /jobs/{id}/results/assets/{name}"}


def command(db: Path, sims: Dict[str, object], forced_persists_only: bool = False) -> List[str]:
    program = [str(ROOT / "tests" / "cli_forced_persists.py")] if forced_persists_only else ["-m", "flows.run_jobs"]
    argv = [sys.executable, *program, "--job-db", str(db), "--start-job", "flows.tiling.demo_callbacks:start_job",
            "--poll-interval", "0.3", "--json"]
    for name, sim in sims.items():
        argv += ["--backend", f"{name}={sim.url},parallel_jobs=2,user=alice,password_env={PASSWORD_ENV}"]
    return argv


def marker_of(title: str) -> str:
    return title.split("[ojm:", 1)[1].split("]", 1)[0] if "[ojm:" in (title or "") else ""


def test_ctrl_c_with_a_create_a_start_and_downloads_in_flight(prefect_harness, tmp_path):
    sims = {kind: start_simulator(fast_config(queue_time=0.1, run_time=0.3)) for kind in HELD}
    for kind, sim in sims.items():
        sim.gates.close(HELD[kind])
    state = tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": PREFECT_API_URL.value(),
           STATE_DIR_ENV: str(state), PASSWORD_ENV: sims["create"].config.password}
    db = make_db(tmp_path / "jobs.parquet", 6, backend_name=[kind for kind in HELD for _ in range(2)])
    child = subprocess.Popen(command(db, sims, forced_persists_only=True), env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err_lines: List[str] = []
    stopping = threading.Event()

    def read_stderr() -> None:
        for line in child.stderr:
            err_lines.append(line)
            if "starting no new jobs" in line or "stopping" in line.lower():
                stopping.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        for kind, sim in sims.items():
            assert sim.gates.wait_held([HELD[kind]], timeout=600, count=1), \
                f"no {kind} request held (exit {child.poll()}): {''.join(err_lines)[-3000:]}"
        os.killpg(child.pid, signal.SIGINT)
        assert stopping.wait(300), "".join(err_lines)[-3000:]  # bounds for hangs (a loaded machine)
        # Now the held requests go on: what the run learns while it stops reaches the disk only
        # through its final persist (tests/cli_forced_persists.py).
        for sim in sims.values():
            sim.gates.open()
        out = child.stdout.read()
        child.wait(300)
        reader.join(30)
        err = "".join(err_lines)
        assert child.returncode == 130, err[-3000:]
        reported = json.loads(out)

        # --- the DB on disk, before anything else touches it -----------------------------------
        df = pd.read_parquet(db)
        on_disk = {b: group.value_counts().to_dict() for b, group in df.groupby("backend_name")["status"]}
        assert on_disk == reported["by_backend"], (on_disk, reported["by_backend"])  # the final persist happened
        assert df["status"].value_counts().to_dict() == reported["status"]
        intents = df[df["status"].isin(["creating", "queued_for_start"])]
        for i, row in intents.iterrows():  # a way back: a marker to find the job by, or its id
            assert row["backend_name"] in HELD and (row["status"] == "creating" and row["job_marker"]
                                                     or isinstance(row["id"], str)), row.to_dict()
        creating = df[df["status"] == "creating"]
        for sim in sims.values():
            assert sim.gates.wait_drained(30)
        known_ids, markers = set(df["id"].dropna()), set(creating["job_marker"])
        for kind, sim in sims.items():
            for job in sim.jobs():
                assert job["id"] in known_ids or marker_of(job["title"]) in markers, (kind, job, df.to_dict("records"))
        assert sims["create"].counters()["jobs_total"] >= 1  # the held create went through

        # --- the run left the slot ledger: a claim made now sees nothing held by others ---------
        assert list(state.rglob("*.json")) == [] and list(state.rglob("*.alive")) == []
        accounts = {kind: account_id(sim.url, "alice") for kind, sim in sims.items()}
        probe = AccountSlots(accounts, "probe", state_dir=state)
        try:
            assert probe.claim(lambda others: (others, {})) == {kind: 0 for kind in HELD}
        finally:
            probe.close()

        # --- the same command again: everything done, nothing twice -------------------------------
        rerun = subprocess.run(command(db, sims), env=env, capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        df = pd.read_parquet(db)
        assert (df["status"] == "finished").all() and (df["results_status"] == "downloaded").all()
        for kind, sim in sims.items():
            counters = sim.counters()
            assert counters["jobs_total"] == 2 and counters["duplicate_titles"] == {}, (kind, counters)
            assert counters["max_active_per_user"]["alice"] <= 2
        assert df["id"].nunique() == 6
        assert_results_complete(tmp_path, df, asset_size=2048)
        assert not set(df["status"]) & HOLDS_SLOT
        assert JobDbPaths.of(db).lock_holder.exists() is False
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(10)
        for sim in sims.values():
            sim.stop()


def test_sigterm_from_a_process_manager_ends_the_run_cancelled_exit_130(prefect_harness, tmp_path):
    """SIGTERM to the command line alone (a scheduler or systemd stopping it) while a start is in
    flight: the real interrupt path, not a scripted flow: exit 130, the flow run `Cancelled`, the
    intent on disk with its marker."""
    from prefect import get_client

    sim = start_simulator(fast_config(queue_time=0.1, run_time=0.3))
    sim.gates.close(HELD["start"])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": PREFECT_API_URL.value(),
           STATE_DIR_ENV: str(tmp_path / "state"), PASSWORD_ENV: sim.config.password}
    db = make_db(tmp_path / "jobs.parquet", 2)
    child = subprocess.Popen(command(db, {"a": sim}), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert sim.gates.wait_held([HELD["start"]], timeout=300), f"no start held (exit {child.poll()})"
        child.send_signal(signal.SIGTERM)
        sim.gates.open()
        out, err = child.communicate(timeout=300)
        assert child.returncode == 130, err[-3000:]
        assert "run the same command again to resume" in err
        reported = json.loads(out)
        assert reported["ended"] == "interrupted"
        with get_client(sync_client=True) as client:
            runs = [r for r in client.read_flow_runs(limit=200)
                    if r.parameters.get("job_db") == str(db)]
        assert [r.state.type.value for r in runs] == ["CANCELLED"], [(r.name, r.state) for r in runs]
        df = pd.read_parquet(db)
        assert df.loc[df["status"] == "creating", "job_marker"].notna().all()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        sim.stop()
