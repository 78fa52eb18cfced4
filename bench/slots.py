"""The job-slot mechanism: ledger claim cost, and two runs sharing one account.

    .venv/bin/python bench/slots.py [--claims 500] [--rows 20] [--parallel-jobs 5] [--root CHECKOUT]

1. Claim cost: `AccountSlots.claim` (tasks/accounts/slots.py: flock-based ledger per account)
   with 2 runs registered — this process and another one holding slots of the same account —
   timed K times, with the count unchanged (no ledger write) and changing (a write per claim),
   for one and for two accounts; and `others()`.
2. Two runs at once: two processes, two job DBs of `--rows` rows, one backend account with
   `parallel_jobs` P, one shared Prefect server (flows/console/local_server.py). Reports the account's
   peak active jobs on the simulator against P (must not exceed it), each run's makespan, and
   the ideal `ceil(2N/P)·(create+start+queue+run)`. `--root` runs the flows of another checkout.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PASSWORD_ENV = "BENCH_OPENEO_PASSWORD"
SIM = dict(create_latency=0.1, start_latency=0.1, queue_time=1.0, run_time=3.0, asset_count=1, asset_size=4096, seed=3)
OTHER_RUN = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from tasks.accounts import account_id
from tasks.accounts.slots import AccountSlots
backends = {backends}
slots = AccountSlots({{n: account_id(b["url"]) for n, b in backends.items()}}, "other-run", state_dir=Path({state!r}))
slots.claim(lambda others: (None, {{n: 3 for n in backends}}))
print("holding", flush=True)
sys.stdin.read()
slots.close()
"""


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def stats_ms(samples: List[float]) -> Dict[str, float]:
    ordered = sorted(samples)
    return {"mean_ms": round(1000 * statistics.fmean(ordered), 3), "median_ms": round(1000 * ordered[len(ordered) // 2], 3),
            "p95_ms": round(1000 * ordered[int(0.95 * (len(ordered) - 1))], 3), "max_ms": round(1000 * ordered[-1], 3)}


def claim_cost(claims: int, accounts: int) -> Dict[str, Any]:
    from tasks.accounts import account_id
    from tasks.accounts.slots import AccountSlots

    state = Path(tempfile.mkdtemp(prefix="bench-slots-"))
    backends = {f"b{i}": {"name": f"b{i}", "url": f"http://127.0.0.1:{9 + i}", "parallel_jobs": 10}
                for i in range(accounts)}
    other = subprocess.Popen([sys.executable, "-c", OTHER_RUN.format(root=str(ROOT), backends=backends, state=str(state))],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "holding"
        slots = AccountSlots({n: account_id(b["url"]) for n, b in backends.items()}, "this-run", state_dir=state)
        seen: Dict[str, int] = {}

        def decide(counts):
            def inner(others):
                seen.update(others)
                return None, counts
            return inner

        out: Dict[str, Any] = {"accounts": accounts, "claims": claims, "load_before": load()}
        for label, count in (("unchanged", lambda i: 2), ("changing", lambda i: 2 + i % 2)):
            samples = []
            for i in range(claims):
                t = time.perf_counter()
                slots.claim(decide({n: count(i) for n in backends}))
                samples.append(time.perf_counter() - t)
            out[f"claim_{label}"] = stats_ms(samples)
        samples = []
        for _ in range(claims):
            t = time.perf_counter()
            slots.others()
            samples.append(time.perf_counter() - t)
        out["others"] = stats_ms(samples)
        out["other_run_seen_holding"] = dict(seen)
        slots.close()
        return out
    finally:
        other.stdin.close()
        other.wait(10)


# ---------------------------------------------------------------------------------- two runs
def child_run(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    sys.path.insert(0, spec["root"])  # the checkout under test, before this one
    import pandas as pd

    from jobdb import JobDatabase

    os.environ[PASSWORD_ENV] = spec["password"]
    db = Path(spec["db"])
    JobDatabase.create(db, pd.DataFrame({"tile_id": [f"{spec['tag']}{i:04d}" for i in range(spec["rows"])],
                                         "year": [2020] * spec["rows"]}))
    from flows.run_jobs import run_jobs

    backend = {"name": spec["name"], "url": spec["url"], "parallel_jobs": spec["parallel_jobs"],
               "auth": {"type": "basic", "username": "shared", "password_env": PASSWORD_ENV}}
    result: Dict[str, Any] = {}
    t0 = time.time()
    try:
        stats = run_jobs(job_db=str(db), backends=[backend], start_job="flows.tiling.demo_callbacks:start_job",
                         poll_interval_seconds=1.0, download_results=True, root_dir=str(db.parent / "results"))
        result.update(ok=True, status=stats.get("status"), elapsed=stats.get("elapsed_seconds"))
    except BaseException as exc:  # noqa: BLE001 - reported
        result.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    result.update(call_start=t0, call_end=time.time())
    Path(out_path).write_text(json.dumps(result, default=str))


def two_runs(rows: int, parallel_jobs: int, root: Path) -> Dict[str, Any]:
    from flows.console.local_server import local_prefect_server
    from simulator import SimulatorConfig, start_simulator

    work = Path(tempfile.mkdtemp(prefix="bench-two-runs-"))
    env = {**os.environ, "PYTHONPATH": str(root), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_LOGGING_LEVEL": "WARNING", "OPENEO_JOBS_STATE_DIR": str(work / "state")}
    env.setdefault("PREFECT_HOME", str(Path.home() / ".cache" / "openeo-prefect-bench" / "prefect"))
    os.environ["PREFECT_HOME"] = env["PREFECT_HOME"]
    load0 = load()
    with start_simulator(SimulatorConfig(**SIM)) as sim, local_prefect_server() as api_url:
        env["PREFECT_API_URL"] = api_url
        procs = []
        for k in range(2):
            spec = {"db": str(work / f"run{k}" / "jobs.parquet"), "rows": rows, "tag": f"R{k}T", "url": sim.url,
                    "name": f"sim-{'ab'[k]}", "parallel_jobs": parallel_jobs, "password": sim.config.password, "root": str(root)}
            Path(spec["db"]).parent.mkdir(parents=True)
            (work / f"spec{k}.json").write_text(json.dumps(spec))
            procs.append(subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child-run",
                                           str(work / f"spec{k}.json"), str(work / f"out{k}.json")],
                                          cwd=str(root), env=env, stdout=open(work / f"run{k}.log", "wb"),
                                          stderr=subprocess.STDOUT))
        for proc in procs:
            proc.wait(900)
        counters = sim.counters()
        timeline_first = min(j.created for j in sim.state.jobs.values()) if sim.state.jobs else None
    results = [json.loads((work / f"out{k}.json").read_text()) if (work / f"out{k}.json").exists()
               else {"ok": False, "error": (work / f"run{k}.log").read_text()[-800:]} for k in range(2)]
    d = SIM["create_latency"] + SIM["start_latency"] + SIM["queue_time"] + SIM["run_time"]
    return {
        "root": str(root), "rows_per_run": rows, "parallel_jobs": parallel_jobs, "load_before": load0, "load_after": load(),
        "peak_active_of_account": max(counters["max_active_per_user"].values(), default=0),
        "jobs_total": counters["jobs_total"],
        "duplicates": sum(len(v) for v in counters["duplicate_titles"].values()),
        "makespans_s": [round(r["call_end"] - timeline_first, 2) if r.get("call_end") and timeline_first else None
                        for r in results],
        "ideal_s": round(math.ceil(2 * rows / parallel_jobs) * d, 2),
        "runs": results, "workdir": str(work),
    }


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child-run":
        child_run(argv[1], argv[2])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--claims", type=int, default=500)
    parser.add_argument("--rows", type=int, default=20, help="rows per run (two runs)")
    parser.add_argument("--parallel-jobs", type=int, default=5)
    parser.add_argument("--root", default=str(ROOT), help="checkout whose flow the two runs use")
    parser.add_argument("--skip-claims", action="store_true")
    parser.add_argument("--skip-runs", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    report: Dict[str, Any] = {}
    if not args.skip_claims:
        report["claims"] = [claim_cost(args.claims, accounts) for accounts in (1, 2)]
        for r in report["claims"]:
            print(f"claim, 2 runs registered, {r['accounts']} account(s), {r['claims']}x, load {r['load_before']}: "
                  f"unchanged {r['claim_unchanged']}, changing {r['claim_changing']}, others() {r['others']}; "
                  f"saw the other run holding {r['other_run_seen_holding']}", flush=True)
    if not args.skip_runs:
        print(f"[{time.strftime('%H:%M:%S')}] two runs x {args.rows} rows, one account, parallel_jobs "
              f"{args.parallel_jobs} ({args.root}) ...", flush=True)
        r = two_runs(args.rows, args.parallel_jobs, Path(args.root))
        report["two_runs"] = r
        print(f"peak active {r['peak_active_of_account']} (parallel_jobs {r['parallel_jobs']}), jobs {r['jobs_total']}, "
              f"duplicates {r['duplicates']}, makespans {r['makespans_s']} s, ideal {r['ideal_s']} s, "
              f"load {r['load_before']} -> {r['load_after']}", flush=True)
        for k, run in enumerate(r["runs"]):
            print(f"  run {k}: ok {run.get('ok')}, {run.get('status') or run.get('error')}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
