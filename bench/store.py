"""The job store's own cost, side by side: a file DB (Parquet) and a PostgreSQL campaign.

Measures, for N rows (default 100 000):
- load: file -> the store (`python -m jobdb copy` path for PostgreSQL; `JobStore.open` for a file);
- one cycle that changes `--changed` rows (default 100): snapshot + apply + persist + the progress
  table's counts per backend, median of `--cycles` cycles, each cycle moving fresh rows
  waiting -> creating (what a cycle's intents do): wall time, this process's CPU time and the
  private cluster's (on a loaded machine the wall time is mostly the wait for a core), and the SQL
  statements and transactions sent per cycle.

PostgreSQL: a private cluster like the tests' (tests/postgres.py), or `--url` for your own.

    /work/venv/bin/python bench/store.py [--rows 100000] [--changed 100] [--cycles 20] [--url postgresql://…]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobdb import JobDatabase  # noqa: E402
from jobdb.sql.campaign import SqlDatabase  # noqa: E402
from jobdb.sql.store import SqlJobStore  # noqa: E402
from jobdb.store import JobStore  # noqa: E402
from jobdb.status import CREATING  # noqa: E402


def frame(rows: int) -> pd.DataFrame:
    return pd.DataFrame({"tile_id": [f"T{i:06d}" for i in range(rows)], "year": [2020 + i % 5 for i in range(rows)],
                         "west": [4.0 + (i % 300) * 0.01 for i in range(rows)]})


def server_cpu(postmaster: Optional[int]) -> float:
    """CPU seconds (user + system) of a PostgreSQL cluster's processes so far: the postmaster, its
    live children (one backend per connection) and the children that ended (the postmaster's
    cutime + cstime); 0 without a private cluster."""
    if postmaster is None:
        return 0.0
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        if int(fields[1]) == postmaster:  # ppid
            ticks += int(fields[11]) + int(fields[12])  # utime + stime
        elif stat.parent.name == str(postmaster):
            ticks += sum(int(f) for f in fields[11:15])  # its own, and its ended children's
    return ticks / os.sysconf("SC_CLK_TCK")


def cycles(store, changed: int, count: int, postmaster: Optional[int] = None) -> tuple:
    """Wall and CPU seconds of each cycle (CPU: this process; on a loaded machine the wall time
    mostly measures the wait for a core), the database server's CPU seconds per cycle (a mean: the
    kernel counts it in 10 ms ticks), and the SQL statements each cycle sent."""
    took, cpu, sent = [], [], []
    engine = getattr(getattr(store, "db", None), "engine", None)
    statements = [0]
    if engine is not None:
        from sqlalchemy import event

        event.listen(engine, "before_cursor_execute", lambda *args: statements.__setitem__(0, statements[0] + 1))
    s0 = server_cpu(postmaster)
    for _ in range(count):
        statements[0] = 0
        t0, c0 = time.perf_counter(), time.process_time()
        snapshot = store.snapshot()
        rows = list(snapshot.waiting[:changed])
        store.apply({r: {"status": CREATING, "backend_name": "b", "job_marker": f"m{r}", "attempt": 1} for r in rows})
        store.persist(force=True)
        store.status_by_backend()  # the progress table, once per poll interval in a run
        took.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        sent.append(statements[0])
    return took, cpu, (server_cpu(postmaster) - s0) / count, sent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--changed", type=int, default=100)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--url", help="a PostgreSQL database to use (default: a private cluster)")
    args = parser.parse_args()
    df = frame(args.rows)
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    cluster = None
    url = args.url
    if url is None:
        from tests.postgres import PostgresCluster, find_bin_dir

        cluster = PostgresCluster(find_bin_dir()).start()
        url = cluster.database("bench")
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    try:
        t0 = time.perf_counter()
        JobDatabase.create(tmp / "jobs.parquet", df)
        file_store = JobStore.open(tmp / "jobs.parquet")
        file_load = time.perf_counter() - t0
        file_cycles = cycles(file_store, args.changed, args.cycles)

        t0 = time.perf_counter()
        SqlDatabase.open(url, create=True).create_campaign("bench", df)
        sql_load = time.perf_counter() - t0
        sql_store = SqlJobStore.open(url, "bench", tmp)
        sql_store.waiting_batch = args.changed
        sql_store.lock.acquire("bench")
        try:
            sql_store.snapshot()  # first claim
            sql_cycles = cycles(sql_store, args.changed, args.cycles, cluster.pid if cluster else None)
        finally:
            sql_store.lock.release()
        print(f"{args.rows} rows, {args.changed} rows changed per cycle, median of {args.cycles} cycles")
        print(f"load average before / after: {load_before} / {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
        print(f"{'store':<12} {'load s':>8} {'cycle ms (median)':>18} {'cycle ms (max)':>15} "
              f"{'CPU ms: run (median)':>21} {'+ server (mean)':>16} {'statements':>11}")
        for name, load, (took, cpu, server, sent) in (("file", file_load, file_cycles),
                                                                     ("postgresql", sql_load, sql_cycles)):
            sql = name != "file"
            print(f"{name:<12} {load:>8.2f} {1000 * statistics.median(took):>18.1f} {1000 * max(took):>15.1f} "
                  f"{1000 * statistics.median(cpu):>21.1f} "
                  f"{(f'{1000 * server:.1f}' if sql and cluster else '-'):>16} {(max(sent) if sql else '-'):>11}")
    finally:
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
