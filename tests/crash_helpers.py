"""Kill the run-jobs flow (SIGKILL) again and again at random moments, resuming each time.

Shared by tests/test_crash_recovery.py (fast) and bench/crash_recovery.py (long).
Each round starts the flow in a child process against the same job DB (a resume of the
previous round) and kills it
- at a chosen phase (`phases=`, the test): the simulator holds the requests of that phase's
  route (simulator/gates.py) and the kill comes once one is held, so it lands in the phase on
  any machine, however slow; or
- a seeded random delay after the child worked on jobs and rewrote the job DB once (the bench).
What the child left behind (the DB on disk, files) is recorded too.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pandas as pd

from jobdb import TERMINAL_STATUSES

ROOT = Path(__file__).resolve().parents[1]


def _job_requests(sim) -> int:
    """Requests about jobs (create, start, list, describe, results): the run is past its setup."""
    return sum(n for k, n in sim.counters()["requests"].items() if " /jobs" in k)


def _stamp(path: Path):
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def kill_phase(db: Path, root: Path) -> str:
    """What the killed run was doing, judged by the DB and files it left: phases joined by '+'."""
    phases = []
    if any(root.glob(f".{db.name}.*.tmp")):
        phases.append("persist")
    if not db.exists():
        return "+".join(phases) or "setup"
    df = pd.read_parquet(db)
    status = df["status"]
    results = df["results_status"] if "results_status" in df.columns else pd.Series(index=df.index, dtype=object)
    if (status == "creating").any():
        phases.append("create")
    if status.isin(["created", "queued_for_start"]).any():
        phases.append("start")
    if status.isin(["queued", "running"]).any():
        phases.append("poll")
    if any(root.rglob(".*.part")):
        phases.append("download(partial file)")
    elif ((status == "finished") & (results != "downloaded")).any():
        phases.append("download")
    return "+".join(phases) or "idle"


def cli_argv(kwargs: Dict) -> List[str]:
    """The command line a user would type for these run_jobs keyword arguments (basic-auth backends)."""
    argv = [sys.executable, "-m", "flows.run_jobs", "--job-db", kwargs["job_db"], "--start-job", kwargs["start_job"],
            "--poll-interval", str(kwargs.get("poll_interval_seconds", 10.0))]
    for b in kwargs["backends"]:
        auth = b["auth"]
        argv += ["--backend", f"{b['name']}={b['url']},parallel_jobs={b['parallel_jobs']},user={auth['username']},"
                              f"password_env={auth['password_env']}"]
    return argv


# The request a child is in the middle of when a kill lands in each phase: 'METHOD /template'.
PHASE_ROUTES = {
    "create": "POST /jobs",
    "start": "POST /jobs/{id}/results",
    "poll": "GET /jobs",  # the listing that follows active jobs (and finds marked ones)
    "download": "GET /jobs/{id}/results/assets/{name}",
}


def _active_rows_written_since(db: Path, stamp) -> bool:
    """The child rewrote the DB and it shows jobs queued/running: it follows them (polls)."""
    if _stamp(db) == stamp:
        return False
    try:
        return bool(pd.read_parquet(db)["status"].isin(["queued", "running"]).any())
    except (OSError, ValueError):
        return False  # replaced while being read


def _kill_at_phase(sim, child, phase: str, db: Path, stamp, deadline: float) -> bool:
    """Hold the phase's route, wait until a request of the child is held there, and return True
    (the caller kills now); False if the child ended or the deadline passed first."""
    route = PHASE_ROUTES[phase]
    if phase == "poll":
        while not _active_rows_written_since(db, stamp):
            if child.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.05)  # polling a file another process writes; no event crosses processes
        sim.gates.close(route)
    while sim.gates.wait_held([route], timeout=0.5) is None:
        if child.poll() is not None or time.monotonic() > deadline:
            return False
    return True


def kill_rounds(sim, kwargs: Dict, kills: int, seed: int, min_delay: float = 0.1, max_delay: float = 1.6,
                timeout: float = 60.0, env: Optional[Dict[str, str]] = None,
                log_dir: Optional[Path] = None, cli: bool = False,
                phases: Optional[List[str]] = None) -> List[Dict]:
    """Up to `kills` child runs, each SIGKILLed in the phase `phases[round % len(phases)]` (one of
    PHASE_ROUTES) or, without `phases`, a seeded random delay after it first reached the backend.

    `cli`: the child is the command line (`python -m flows.run_jobs ...`) in embedded mode, as a
    user runs it; otherwise `run_jobs(**kwargs)` in a child process against the given Prefect API.
    Stops early when a child finishes on its own (all rows done). Returns one record per round;
    `landed` is the phase whose request the child was in the middle of when it was killed.
    """
    rng = random.Random(seed)
    db, root = Path(kwargs["job_db"]), Path(kwargs.get("root_dir") or Path(kwargs["job_db"]).parent)
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    records = []
    for round_no in range(kills):
        before, stamp = _job_requests(sim), _stamp(db)
        jobs_before = sim.counters()["jobs_total"]
        target = phases[round_no % len(phases)] if phases else None
        if target is not None and target != "poll":
            sim.gates.close(PHASE_ROUTES[target])
        argv = cli_argv(kwargs) if cli else [sys.executable, str(ROOT / "tests" / "run_flow_process.py"),
                                             json.dumps(kwargs)]
        child = subprocess.Popen(argv,
                                 env=env, stdout=subprocess.DEVNULL,
                                 stderr=open(log_dir / f"round{round_no + 1}.log", "wb") if log_dir else subprocess.DEVNULL)
        delay = 0.0 if target else rng.uniform(min_delay, max_delay)
        outcome, landed = "killed", "-"
        try:
            deadline = time.monotonic() + timeout
            if target is not None:
                landed = target if _kill_at_phase(sim, child, target, db, stamp, deadline) else "-"
            else:
                # wait until it is past setup and has persisted progress, then kill after `delay`
                while _job_requests(sim) <= before or _stamp(db) == stamp:
                    if child.poll() is not None or time.monotonic() > deadline:
                        break
                    time.sleep(0.02)  # polling another process's effect on the simulator, bounded
                end = time.monotonic() + delay
                while time.monotonic() < end and child.poll() is None:
                    time.sleep(0.01)  # the random kill moment itself (bench), not a synchronisation
        finally:
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
            else:
                outcome = f"exited {child.returncode}"
            child.wait(30)
            sim.gates.open()  # what the dead child sent goes on, as on a real backend
            sim.gates.wait_drained(30)
        statuses = pd.read_parquet(db)["status"] if db.exists() else pd.Series(dtype=object)
        records.append({
            "round": round_no + 1, "target": target or f"{delay:.2f} s", "landed": landed, "outcome": outcome,
            "left_on_disk": kill_phase(db, root) if outcome == "killed" else "-",
            "terminal": int(statuses.isin(TERMINAL_STATUSES).sum()),
            "new_jobs": sim.counters()["jobs_total"] - jobs_before,
        })
        print(f"round {round_no + 1}: {records[-1]}", flush=True)
        if outcome != "killed":
            break
    return records


def check_recovered(sim, db: Path, root: Path, asset_size: int, asset_count: int) -> Dict:
    """The invariants after the final resume; returns a summary."""
    from tests.flow_helpers import assert_results_complete

    df = pd.read_parquet(db)
    counters = sim.counters()
    assert df["status"].isin(TERMINAL_STATUSES).all(), df["status"].value_counts()
    assert counters["duplicate_titles"] == {}, counters["duplicate_titles"]
    assert counters["jobs_total"] == len(df) == df["id"].nunique(), (counters["jobs_total"], len(df))
    assert (df["status"] == "finished").all(), df["status"].value_counts()
    not_downloaded = df.loc[df["results_status"] != "downloaded", ["id", "status", "results_status", "error_message"]]
    assert not_downloaded.empty, not_downloaded.to_dict("records")
    assert_results_complete(root, df, asset_size=asset_size, asset_count=asset_count)
    leftovers = [p for p in root.rglob("*.part")] + list(root.glob(f".{db.name}.*.tmp"))
    assert leftovers == [], leftovers
    return {"rows": len(df), "jobs": counters["jobs_total"], "duplicates": 0,
            "job_starts": counters["job_starts"], "job_restarts": counters["job_restarts"]}


def table(records: List[Dict]) -> str:
    if not records:
        return "(no rounds)"
    header = list(records[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in records]
    return "\n".join(lines)
