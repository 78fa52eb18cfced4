"""Requests per second the simulator serves: is it fast enough not to be a benchmark's bottleneck?

    python bench/simulator_rps.py                       # this checkout's simulator, 1/8/32 clients
    python bench/simulator_rps.py --root /tmp/before    # another checkout's (git archive main simulator | tar -x -C DIR)
    python bench/simulator_rps.py --in-process          # the simulator in the bench's own process, as tests run it

The simulator runs as `python -m simulator --port 0` in a child process (unless --in-process), so the
clients here do not share its interpreter. Each client is a thread with one keep-alive connection
(http.client, lighter than requests) that repeats a mix like a flow's polling: GET /jobs/{id} of jobs
it created and started, GET /jobs (a listing of a few jobs), GET /me, and every tenth request a
POST /jobs. Prints per client count: requests per second, median/p95 latency, and the server's CPU
milliseconds per request with what that allows on one core (max_rps_one_core: the server's figure that
does not depend on how loaded the machine is; the first two do). Loopback only.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from base64 import b64encode
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
GRAPH = {"process": {"process_graph": {"save": {"process_id": "save_result", "arguments": {"data": 1, "format": "GTiff"},
                                                "result": True}}}}


def start_child(root: Path) -> Tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "simulator", "--port", "0", "--queue-time", "0.05",
                             "--run-time", "0.2"], stdout=subprocess.PIPE, text=True, env=env, cwd=str(root))
    line = proc.stdout.readline()
    return proc, line.split()[4]


def client(port: int, user: str, seconds: float, latencies: List[float], stop_at: List[float]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    basic = b64encode(f"{user}:secret".encode()).decode()
    conn.request("GET", "/openeo/1.2/credentials/basic", headers={"Authorization": "Basic " + basic})
    token = json.loads(conn.getresponse().read())["access_token"]
    headers = {"Authorization": "Bearer basic//" + token, "Content-Type": "application/json"}
    body = json.dumps(GRAPH)
    jobs: List[str] = []

    def call(method: str, path: str, payload: str = None) -> http.client.HTTPResponse:
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        response.read()
        return response

    for _ in range(3):
        job = call("POST", "/openeo/1.2/jobs", body).headers["OpenEO-Identifier"]
        call("POST", f"/openeo/1.2/jobs/{job}/results")
        jobs.append(job)
    n = 0
    while time.monotonic() < stop_at[0]:
        n += 1
        t0 = time.perf_counter()
        if n % 10 == 0:
            call("POST", "/openeo/1.2/jobs", body)
        elif n % 10 == 1:
            call("GET", "/openeo/1.2/jobs?limit=5")
        elif n % 10 == 2:
            call("GET", "/openeo/1.2/me")
        else:
            call("GET", f"/openeo/1.2/jobs/{jobs[n % len(jobs)]}")
        latencies.append(time.perf_counter() - t0)
    conn.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(port: int, clients: int, seconds: float, server_pid: int) -> Dict[str, float]:
    latencies: List[float] = []
    stop_at = [float("inf")]
    threads = [threading.Thread(target=client, args=(port, f"u{i % 4}", seconds, latencies, stop_at))
               for i in range(clients)]
    # warm-up: log in and create jobs before the clock starts
    stop_at[0] = time.monotonic() + 0.3 + seconds
    started = time.monotonic() + 0.3
    for t in threads:
        t.start()
    time.sleep(0.3)
    before, cpu_before = len(latencies), cpu_seconds(server_pid)
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(server_pid) - cpu_before
    done = latencies[before:]
    return {"clients": clients, "requests": len(done), "rps": round(len(done) / elapsed, 1),
            # the load-independent figure: the server's CPU per request (in-process: the clients' too)
            "server_cpu_ms_per_request": round(cpu * 1000 / max(1, len(done)), 3),
            "max_rps_one_core": round(len(done) / cpu, 1) if cpu else None,
            "p50_ms": round(statistics.median(done) * 1000, 2) if done else None,
            "p95_ms": round(sorted(done)[int(len(done) * 0.95)] * 1000, 2) if done else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose simulator/ to run (default: this one)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per client count")
    parser.add_argument("--in-process", action="store_true", help="run the simulator in this process")
    args = parser.parse_args()
    if args.in_process:
        sys.path.insert(0, str(args.root))
        from simulator import start_simulator

        sim = start_simulator(port=0)
        port, stop, pid = sim.port, sim.stop, os.getpid()
    else:
        proc, url = start_child(args.root)
        port, pid = int(url.rsplit(":", 1)[1]), proc.pid

        def stop() -> None:
            proc.terminate()
            proc.wait(timeout=10)
    try:
        print(f"simulator of {args.root} ({'in-process' if args.in_process else 'child process'}), "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        for n in args.clients:
            print(json.dumps(measure(port, n, args.seconds, pid)), flush=True)
    finally:
        stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
