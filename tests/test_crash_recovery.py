"""SIGKILL the flow at 10 random moments (create, start, poll, download, DB persist), resume each
time; finally resume in-process: every row terminal, no job twice, every result complete.

The kill moments are seeded (CRASH_SEED env var to vary them); bench/crash_recovery.py is the
long version.
"""
from __future__ import annotations

import os
import time
from collections import Counter


from flows.run_jobs import run_jobs
from simulator import start_simulator
from tests.crash_helpers import check_recovered, kill_rounds, table
from tests.flow_helpers import backend, fast_config, make_db
from tests.test_interruptions import processes_with_env


def wait_until_gone(home, timeout: float = 20.0):
    """Processes still using `home` (the killed CLIs' servers), after giving their watchdogs time."""
    deadline = time.monotonic() + timeout
    while True:
        left = processes_with_env("PREFECT_HOME", str(home))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


KILLS = 8
ROWS = 40
ASSET_SIZE = 1 << 20  # 1 MiB x 2 assets: downloads take long enough to be killed mid-file sometimes


def test_killed_eight_times_then_resumed(tmp_path, prefect_harness):
    """The command line in the default embedded mode, one PREFECT_HOME for every round: each
    SIGKILL also takes the CLI's Prefect server down (its watchdog sees the CLI go)."""
    seed = int(os.environ.get("CRASH_SEED", "20261122"))
    sim = start_simulator(fast_config(create_latency=0.15, start_latency=0.15, queue_time=0.1, run_time=0.6,
                                      asset_size=ASSET_SIZE, asset_count=2, seed=seed))
    try:
        db = make_db(tmp_path / "jobs.parquet", ROWS)
        kwargs = dict(job_db=str(db), backends=[backend("a", sim, 3)], start_job="flows.demo_callbacks:start_job",
                      poll_interval_seconds=0.25)
        home = tmp_path / "prefect-home"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
        records = kill_rounds(sim, kwargs, kills=KILLS, seed=seed, env=env, timeout=120, cli=True)
        print(f"\ncrash rounds (seed {seed}):\n" + table(records))
        killed = [r for r in records if r["outcome"] == "killed"]
        assert len(killed) >= KILLS, "the work finished before all kills: make it longer"
        phases = Counter(p.split("(")[0] for r in killed for p in r["phase"].split("+"))
        print("kills that landed while rows were in each phase:", dict(phases))
        assert len({"create", "start", "poll", "download"} & set(phases)) >= 3, phases

        leftovers = wait_until_gone(home)
        assert leftovers == [], f"processes outlived their killed CLI: {leftovers}"
        stats = run_jobs(**kwargs)  # the final resume, in-process
        summary = check_recovered(sim, db, tmp_path, asset_size=ASSET_SIZE, asset_count=2)
        print("after final resume:", summary, "stats:", stats["status"], "all started after",
              stats["time_to_all_started_seconds"], "s")
        assert stats["status"] == {"finished": ROWS}
        # the killed runs' slots were never waited for: whatever was left started at once
        assert stats["time_to_all_started_seconds"] is not None and stats["time_to_all_started_seconds"] < 90
    finally:
        sim.stop()

