"""Quota benchmark: openeo's MultiBackendJobManager vs our flow under CDSE-like quotas, in one run.

    .venv/bin/python bench/quota.py [--rows 12] [--tool openeo|ours ...] [--json out.json]

The simulated backend imposes CDSE's published quotas for a general user: 2 jobs running at once,
job starts (`POST /jobs/{id}/results`) limited to 1 per 5 s with burst 1, 2 API requests in flight
per user; excess answers 429 with `Retry-After`. 12 rows, `parallel_jobs=2`. Our flow is told the
quotas (`max_starts_per_minute=12`, `max_concurrent_requests=2`); openeo's manager has no such
setting. Each tool runs in its own child process (as in bench/compare.py) after `sim.reset()`.

Printed per tool: 429 responses (by route), makespan (first `POST /jobs` -> `run_jobs` returned),
the rate-bound ideal `create + (N - burst)/rate + start + queue + run`, their ratio, start_failed,
listing requests (`GET /jobs`) and status requests (`GET /jobs/{id}`) per job, and our makespan
and 429s against openeo's. Targets (issue 10): <= 1 response 429 per run, makespan <= 1.05 x
ideal, 0 start_failed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import compare  # noqa: E402 - bench/compare.py: children, timeline, result checks

START_ROUTE = "POST /jobs/{id}/results"
RATE, BURST = 0.2, 1  # starts per second, bucket size
QUOTAS = dict(max_running_per_user=2, rate_limit_per_second=RATE, rate_limit_burst=BURST,
              rate_limit_routes=START_ROUTE, max_requests_in_flight=2, retry_after=1.0)
PARALLEL_JOBS = 2
CLIENT_QUOTAS = {"max_starts_per_minute": RATE * 60, "max_concurrent_requests": 2}


def ideal_makespan(n: int) -> float:
    t = compare.TIMING
    return round(t["create_latency"] + (n - BURST) / RATE + t["start_latency"] + t["queue_time"] + t["run_time"], 2)


# ---------------------------------------------------------------------------------- child side
def child_main(tool: str, spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    os.environ[compare.PASSWORD_ENV] = spec["password"]
    workdir = Path(spec["workdir"])
    os.environ["OPENEO_JOBS_STATE_DIR"] = str(workdir / "state")  # fresh start turns (and slot ledgers) per run
    result: Dict[str, Any] = {"tool": tool}
    try:
        if tool == "openeo":
            t0, t1, stats = compare.run_openeo(spec, workdir)
        else:
            t0, t1, stats = run_ours(spec, workdir)
        result.update(ok=True, call_start=t0, call_end=t1, stats=stats)
    except BaseException as exc:  # noqa: BLE001 - report a crash, whatever it is
        result.update(ok=False, call_end=time.time(), error=f"{type(exc).__name__}: {exc}")
    Path(out_path).write_text(json.dumps(result, default=str))


def run_ours(spec: Dict[str, Any], workdir: Path):
    from flows.run_jobs import run_jobs
    from jobdb import JobDatabase

    db_path = workdir / "jobs.csv"
    JobDatabase.create(db_path, compare.make_rows(spec["n"]))
    backends = [{"name": b["name"], "url": b["url"], "parallel_jobs": b["parallel_jobs"], **CLIENT_QUOTAS,
                 "auth": {"type": "basic", "username": b["user"], "password_env": compare.PASSWORD_ENV}}
                for b in spec["backends"]]
    t0 = time.time()
    stats = run_jobs(job_db=str(db_path), backends=backends, start_job=compare.START_JOB,
                     max_start_workers=spec["start_workers"], poll_interval_seconds=1.0,
                     download_results=True, root_dir=str(workdir / "results"))
    return t0, time.time(), stats


# --------------------------------------------------------------------------------- parent side
def run_tool(tool: str, sim, n: int, base: Path) -> Dict[str, Any]:
    import subprocess

    sim.reset()
    workdir = Path(tempfile.mkdtemp(prefix=f"quota-{tool}-", dir=base))
    spec = {"n": n, "start_workers": 5, "workdir": str(workdir), "password": sim.config.password,
            "backends": [{"name": "cdse-like", "url": sim.url, "user": f"{tool}-quota", "parallel_jobs": PARALLEL_JOBS}]}
    spec_path, out_path = workdir / "spec.json", workdir / "result.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING")
    env.setdefault("PREFECT_HOME", str(compare.DEFAULT_PREFECT_HOME))
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    print(f"[{time.strftime('%H:%M:%S')}] {tool} ...", flush=True)
    with open(workdir / "child.log", "wb") as log:
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", tool, str(spec_path), str(out_path)],
                       cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT, timeout=600, check=False)
    child = json.loads(out_path.read_text()) if out_path.exists() else {"ok": False, "error": "no result"}
    counters = sim.counters()
    timeline = compare.sim_timeline([sim])
    results = compare.check_results(workdir, compare.ASSETS["asset_count"], compare.ASSETS["asset_size"])
    first = timeline["first_create"]
    requests = counters["requests"]
    listing = sum(v for k, v in requests.items() if k.startswith("GET /jobs ") and k.count("/") == 1)
    status_gets = sum(v for k, v in requests.items() if k.startswith("GET /jobs/{id} "))
    makespan = round(child["call_end"] - first, 2) if first and child.get("call_end") else None
    ideal = ideal_makespan(n)
    return {
        "tool": tool, "ok": child.get("ok"), "error": child.get("error"),
        "responses_429": sum(counters["refusals"]["429"].values()), "429_by_route": counters["refusals"]["429"],
        "makespan_s": makespan, "ideal_s": ideal, "ratio": round(makespan / ideal, 3) if makespan else None,
        "start_failed": results["status"].get("start_failed", 0), "status": results["status"],
        "results_complete": results["results_complete"],
        "listing_per_job": round(listing / n, 2), "status_gets_per_job": round(status_gets / n, 2),
        "requests_total": sum(requests.values()), "peak_in_flight": counters["peak_in_flight_per_user"],
        "max_running": counters["max_running_seen_per_user"], "workdir": str(workdir),
    }


def report(rows: List[Dict[str, Any]]) -> str:
    head = ["tool", "429s", "makespan s", "ideal s", "×ideal", "start_failed", "listing/job", "GET job/job",
            "finished (results ok)", "peak in flight"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(str(x) for x in [
            r["tool"], r["responses_429"], r["makespan_s"], r["ideal_s"], r["ratio"], r["start_failed"],
            r["listing_per_job"], r["status_gets_per_job"], f"{r['status'].get('finished', 0)} ({r['results_complete']})",
            max(r["peak_in_flight"].values(), default=0)]) + " |")
    by = {r["tool"]: r for r in rows}
    if "ours" in by:
        ours = by["ours"]
        lines.append("")
        lines.append(f"targets (ours): 429s <= 1: {ours['responses_429'] <= 1}; makespan <= 1.05 x ideal: "
                     f"{bool(ours['ratio'] and ours['ratio'] <= 1.05)}; start_failed == 0: {ours['start_failed'] == 0}")
        theirs = by.get("openeo")
        if theirs and theirs["makespan_s"] and ours["makespan_s"]:
            lines.append(f"ours/openeo: makespan {ours['makespan_s'] / theirs['makespan_s']:.2f}, "
                         f"429s {ours['responses_429']} vs {theirs['responses_429']}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--tool", action="extend", nargs="+", choices=["openeo", "ours"], help="default: both")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(*args.child)
        return 0
    from simulator import SimulatorConfig, start_simulator

    base = Path(tempfile.mkdtemp(prefix="bench-quota-"))
    knobs = {**compare.TIMING, **compare.ASSETS, "seed": 11, **QUOTAS}
    print(f"quotas {QUOTAS}; timing {compare.TIMING}; {args.rows} rows, parallel_jobs={PARALLEL_JOBS}; "
          f"ideal {ideal_makespan(args.rows)} s; work dir {base}", flush=True)
    rows = []
    with start_simulator(SimulatorConfig(**knobs)) as sim:
        for tool in args.tool or ["openeo", "ours"]:
            rows.append(run_tool(tool, sim, args.rows, base))
    print()
    print(report(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"quotas": QUOTAS, "timing": compare.TIMING, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
