"""Part 2 of bench/scale.py: the job DB at scale (run there, or alone).

    .venv/bin/python bench/jobdb_scale.py [--rows 100000]

`rows` rows: load, select-by-status, apply_updates of 1 000 rows, persist, for Parquet and CSV (and
one openeo-manager-style persist of one row, which rewrites the file).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def run_db_bench(rows: int, base: Path) -> Dict[str, Any]:
    import numpy as np
    import pandas as pd

    from jobdb import JobDatabase
    from jobdb.status import ERROR, FINISHED, NOT_STARTED, QUEUED, RUNNING

    print(f"[{time.strftime('%H:%M:%S')}] job DB: {rows} rows ...", flush=True)
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"tile_id": [f"T{i:06d}" for i in range(rows)], "year": 2020 + rng.integers(0, 5, rows),
                       "west": rng.uniform(-180, 170, rows), "south": rng.uniform(-80, 70, rows)})
    out: Dict[str, Any] = {"rows": rows}
    for fmt in ("parquet", "csv"):
        path = base / f"db100k.{fmt}"
        path.unlink(missing_ok=True)
        r: Dict[str, Any] = {}
        t = time.perf_counter()
        db = JobDatabase.create(path, df)
        r["create_s"] = time.perf_counter() - t
        # a run in progress: a mix of statuses and ids
        updates = {i: {"status": s, "id": f"j-{i:08d}", "backend_name": "b0"}
                   for i, s in zip(range(0, rows, 3), [FINISHED, RUNNING, QUEUED, ERROR] * rows)}
        db.apply_updates(updates)
        db.save()
        r["file_mb"] = round(path.stat().st_size / 1e6, 2)
        t = time.perf_counter()
        db = JobDatabase.open(path)
        r["load_s"] = time.perf_counter() - t
        t = time.perf_counter()
        sel = db.get_by_status([RUNNING, QUEUED])
        r["select_by_status_s"] = time.perf_counter() - t
        r["selected"] = len(sel)
        t = time.perf_counter()
        few = db.rows(statuses=[NOT_STARTED], max=400)
        r["rows_not_started_400_s"] = time.perf_counter() - t
        r["rows_dicts"] = len(few)
        upd = {i: {"status": FINISHED, "id": f"j-{i:08d}", "backend_name": "b1", "costs": 1.5,
                   "running_start_time": "2026-01-01T00:00:00Z"} for i in range(1, min(rows, 3001), 3)}
        r["updated_rows"] = len(upd)
        t = time.perf_counter()
        db.apply_updates(upd)
        r["apply_updates_1000_s"] = time.perf_counter() - t
        times = []
        for _ in range(3):
            t = time.perf_counter()
            db.save()
            times.append(time.perf_counter() - t)
        r["persist_s"] = min(times)
        r["persist_s_runs"] = [round(x, 3) for x in times]
        # openeo's manager: persist(one row) reads the whole file and writes it again, per event
        try:
            from openeo.extra.job_management import get_job_db

            odb = get_job_db(path)
            one = odb.df.iloc[[5]].copy()  # .df loads and caches the whole table, as the manager does
            one["status"] = QUEUED
            t = time.perf_counter()
            odb.persist(one)
            r["openeo_persist_one_row_s"] = time.perf_counter() - t
            assert len(odb.read()) == rows, "openeo persist lost rows"
        except Exception as exc:  # noqa: BLE001
            r["openeo_persist_one_row_s"] = f"failed: {exc}"
        out[fmt] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
        print(f"    {fmt}: {out[fmt]}", flush=True)
    return out


def db_table(d: Dict[str, Any]) -> str:
    keys = ["file_mb", "load_s", "select_by_status_s", "rows_not_started_400_s", "apply_updates_1000_s", "persist_s",
            "openeo_persist_one_row_s"]
    lines = [f"| {d['rows']} rows | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for fmt in ("parquet", "csv"):
        lines.append(f"| {fmt} | " + " | ".join(str(d[fmt].get(k)) for k in keys) + " |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-jobdb-") as base:
        print("\n" + db_table(run_db_bench(args.rows, Path(base))) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
