"""Where a compare.py run's makespan goes: per slot round and after the last job (issue 21).

    .venv/bin/python bench/timeline.py out.json [--scenario small] [--tool ours]

Reads the job records compare.py stores per run (`job_timeline`: created, started, ended, in
seconds after the first job was created, from the simulator's clock) and the time the tool's
`run_jobs` returned. With P slots, the k-th start (k >= P, in start order) takes the slot the
(k-P)-th end (in end order) freed; its **gap** is that start minus that end: the time a free
slot sat idle, on the critical path of a slot round (the start request's own latency is not in
it: a job counts as started when the backend accepted the start). The **tail** is the last end
to the return of `run_jobs` (seeing the end, the downloads, the final persist and reports).
The ideal has no gap and no tail. Where a backend runs at most `cap` jobs per user (compare.py's
two_backends, three_backends), the slots are not what binds: `running_lanes` gives per backend
when all `cap` lanes first ran and the idle time of a lane between one job's end and the next
job's run. A run from `bench/trace.py` also has the flow's own events:
then the tail is split at the last listing, the last download, the cycle's end, the
publisher's last Prefect calls, the flow function's return and Prefect's final state (after it:
the engine's teardown, up to 1 s of it once the heartbeat thread's join).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any, Dict, List


def decompose(row: Dict[str, Any]) -> Dict[str, Any]:
    jobs = [j for j in row["job_timeline"] if j[1] is not None and j[2] is not None]
    p = row["p"]
    starts = sorted(j[1] for j in jobs)
    ends = sorted(j[2] for j in jobs)
    gaps = [round(starts[k] - ends[k - p], 2) for k in range(p, len(starts))]
    created_ahead = sum(1 for j in jobs if j[1] - j[0] > 1.0)  # created well before its start
    tail = round(row["makespan_s"] - ends[-1], 2) if row.get("makespan_s") else None
    first_start = round(starts[0], 2)
    rounds = []  # per round of P starts: the median gap of the round
    for first in range(0, len(gaps), p):
        rounds.append(round(statistics.median(gaps[first:first + p]), 2))
    tail_steps = {}
    events = row.get("events") or []
    if events:
        last_end = ends[-1]

        def first(name, after):
            return next((t for t, n, _ in events if n == name and t >= after), None)

        tail_steps = {"last listing": first("poll>", last_end - 1.0), "downloads done": max(
            (t for t, n, _ in events if n == "download<"), default=None), "cycle ended": first("cycle<", 0),
            "publisher closing": first("publisher_close>", 0), "publisher closed": first("publisher_close<", 0),
            "flow function returned": first("drive<", 0), "final state set": first("prefect_set_state<", 0)}
    return {"tail_steps": tail_steps, "scenario": row["scenario"], "tool": row["tool"], "makespan": row.get("makespan_s"),
            "ideal": row["ideal_makespan"], "first_start": first_start, "last_end": round(ends[-1], 2),
            "gaps": gaps, "gap_sum_critical": round(sum(rounds), 2), "round_median_gaps": rounds,
            "gap_median": round(statistics.median(gaps), 2) if gaps else None,
            "gap_max": max(gaps) if gaps else None, "tail": tail, "created_ahead": created_ahead}


def running_lanes(row: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Where a backend runs at most `cap` jobs per user (the running bound): per backend, when its
    `cap` lanes were first all running, and the **running gaps**: the k-th job to run (k >= cap)
    takes the lane the (k-cap)-th end freed; the gap is how long that lane sat idle (no job
    started and past its queue time was waiting on the backend). The ideal has neither."""
    cap = row.get("running_cap")
    jobs = [j for j in row["job_timeline"] if len(j) >= 5 and j[3] is not None and j[2] is not None]
    if not cap or not jobs:
        return []
    out = []
    for backend in sorted({j[4] for j in jobs}):
        mine = [j for j in jobs if j[4] == backend]
        runs = sorted(j[3] for j in mine)
        ends = sorted(j[2] for j in mine)
        full = runs[min(cap, len(runs)) - 1]
        gaps = [round(runs[k] - ends[k - cap], 2) for k in range(cap, len(runs))]
        lost = round(cap * ends[-1] - sum(j[2] - j[3] for j in mine), 1)  # lane-seconds without a job
        out.append({"backend": backend, "jobs": len(mine), "first_running": runs[0], "all_lanes_running": full,
                    "last_run_start": runs[-1], "last_end": ends[-1], "lane_seconds_idle": lost,
                    "running_gap_sum": round(sum(gaps), 2), "running_gap_max": max(gaps, default=None),
                    "running_gaps_over_0.05": sum(1 for g in gaps if g > 0.05)})
    return out


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+")
    parser.add_argument("--scenario")
    parser.add_argument("--tool")
    args = parser.parse_args(argv)
    for path in args.json:
        for row in json.load(open(path))["rows"]:
            if (args.scenario and row["scenario"] != args.scenario) or (args.tool and row["tool"] != args.tool):
                continue
            if row.get("outcome") != "ok" or not row.get("job_timeline"):
                continue
            d = decompose(row)
            print(f"{path} {d['scenario']}/{d['tool']}: makespan {d['makespan']} (ideal {d['ideal']}), "
                  f"first start {d['first_start']}, last end {d['last_end']}, tail {d['tail']}; "
                  f"slot gaps median {d['gap_median']} max {d['gap_max']}, per round {d['round_median_gaps']}; "
                  f"created ahead {d['created_ahead']}")
            print("    gaps:", d["gaps"])
            for lane in running_lanes(row):
                print("    running lanes:", lane)
            if d["tail_steps"]:
                print("    tail (s after the first create):", d["tail_steps"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
