"""SIGKILL the flow in each phase (create, start, poll, download; twice each in the slow variant),
resume each time;
finally resume in-process: every row terminal, no job twice, every result complete.

Each kill waits for its phase: the simulator holds a request of that phase (simulator/gates.py)
and the kill comes while it is held, so the kills land where they should on any machine, however
loaded. bench/crash_recovery.py is the long version, at seeded random moments.
"""
from __future__ import annotations

import os
import time
from collections import Counter

import pytest

from tasks.accounts import account_id
from tasks.accounts.slots import AccountSlots
from flows.run_jobs import run_jobs
from simulator import start_simulator
from tasks.retry_policy import REQUEST_TIMEOUT_ENV
from tests.crash_helpers import check_recovered, kill_rounds, table
from tests.flow_helpers import backend, fast_config, make_db
from tests.test_interruptions import processes_with_env


def wait_until_gone(home, timeout: float = 60.0):
    """Processes still using `home` (the killed CLIs' servers), after giving their watchdogs time."""
    deadline = time.monotonic() + timeout
    while True:
        left = processes_with_env("PREFECT_HOME", str(home))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


PHASES = ["create", "start", "poll", "download"]
CRASH_REQUEST_TIMEOUT = "5"  # seconds: the grace before a create is made again is 3 x 5 s
ASSET_SIZE = 64 << 10  # 64 KiB x 2 assets: each kill waits for its request held at a gate, not for a long download


def test_killed_in_every_phase_then_resumed(tmp_path, prefect_harness, monkeypatch):
    """The command line against the session's Prefect server, SIGKILLed once in each phase."""
    _killed_then_resumed(tmp_path, tmp_path / "prefect-home", PHASES, rounds_per_phase=1, embedded=False,
                         monkeypatch=monkeypatch)


def test_killed_while_starting_in_embedded_mode_then_resumed(tmp_path, prefect_harness, prefect_home, monkeypatch):
    """The fast version of the one below: one SIGKILL of the command line in its default embedded
    mode, while a start is in flight: no process outlives it (its watchdog stops its server)."""
    _killed_then_resumed(tmp_path, prefect_home, ["start"], rounds_per_phase=1, embedded=True, monkeypatch=monkeypatch)


@pytest.mark.slow
def test_killed_twice_in_every_phase_in_embedded_mode_then_resumed(tmp_path, prefect_harness, prefect_home,
                                                                   monkeypatch):
    """The command line in the default embedded mode, one PREFECT_HOME for every round: each
    SIGKILL also takes the CLI's Prefect server down (its watchdog sees the CLI go)."""
    _killed_then_resumed(tmp_path, prefect_home, PHASES, rounds_per_phase=2, embedded=True, monkeypatch=monkeypatch)


def _killed_then_resumed(tmp_path, home, phases, rounds_per_phase: int, embedded: bool, monkeypatch):
    from prefect.settings import PREFECT_API_URL

    # A killed run's `creating` rows whose job is not found wait a few request timeouts before they
    # are created again (its POST may still be under way): short timeouts keep that wait short here.
    monkeypatch.setenv(REQUEST_TIMEOUT_ENV, CRASH_REQUEST_TIMEOUT)

    kills = rounds_per_phase * len(phases)
    rows = 6 * kills  # work left for every round: each starts a few jobs at most before its kill
    seed = int(os.environ.get("CRASH_SEED", "20261122"))
    sim = start_simulator(fast_config(create_latency=0.15, start_latency=0.15, queue_time=0.1, run_time=0.6,
                                      asset_size=ASSET_SIZE, asset_count=2, seed=seed))
    try:
        db = make_db(tmp_path / "jobs.parquet", rows)
        kwargs = dict(job_db=str(db), backends=[backend("a", sim, 3)], start_job="flows.tiling.demo_callbacks:start_job",
                      poll_interval_seconds=0.25)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
        if not embedded:
            env["PREFECT_API_URL"] = PREFECT_API_URL.value()
        records = kill_rounds(sim, kwargs, kills=kills, seed=seed, env=env, timeout=600, cli=True, phases=phases,
                              log_dir=tmp_path)
        print(f"\ncrash rounds (seed {seed}):\n" + table(records))
        killed = [r for r in records if r["outcome"] == "killed"]
        assert len(killed) == kills, "the work finished before all kills: make it longer"
        landed = Counter(r["landed"] for r in killed)
        print("kills per phase (a request of the phase in flight at the kill):", dict(landed))
        assert landed == {phase: rounds_per_phase for phase in phases}, records
        # what a kill mid-create leaves on disk: the intent (row `creating`, with its marker)
        assert all("create" in r["left_on_disk"] for r in killed if r["landed"] == "create"), records

        if embedded:
            leftovers = wait_until_gone(home)
            assert leftovers == [], f"processes outlived their killed CLI: {leftovers}"
        # the killed runs' slots are free at once: a claim made now sees none held (no lease to wait for)
        probe = AccountSlots({"a": account_id(kwargs["backends"][0]["url"], "alice")}, "probe")
        try:
            assert probe.claim(lambda others: (others, {})) == {"a": 0}
        finally:
            probe.close()
        stats = run_jobs(**kwargs)  # the final resume, in-process
        summary = check_recovered(sim, db, tmp_path, asset_size=ASSET_SIZE, asset_count=2)
        print("after final resume:", summary, "stats:", stats["status"], "all started after",
              stats["time_to_all_started_seconds"], "s")
        assert stats["status"] == {"finished": rows}
    finally:
        sim.stop()

