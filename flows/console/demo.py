"""`--demo`: two simulated backends on loopback and a small tile grid x 2 years, for the real flow.

The command line (flows/console/cli.py) starts Prefect early, then the backends here, and runs the
flow with `demo_parameters`; each demo starts from a clean output folder.
"""
from __future__ import annotations

import inspect
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Sequence, Tuple


def start_demo_backends(output_dir: Path) -> Tuple[Path, Any, Any, Any]:
    """Clean `output_dir` and start two simulators: (job DB path, their config, sim a, sim b)."""
    from simulator import SimulatorConfig, start_simulator

    job_db = output_dir / "jobs.parquet"
    clean_demo_output(output_dir, job_db)
    config = SimulatorConfig(queue_time=0.5, run_time=2.0, run_time_jitter=1.0, p_error=0.1, seed=1)
    return job_db, config, start_simulator(config), start_simulator(config)


def demo_parameters(job_db: Path, config: Any, sims: Sequence[Any]) -> Dict[str, Any]:
    """Write the demo's job DB and return the flow's parameters for the two running simulators."""
    from flows.tiling.grid import make_tile_grid
    from jobdb import JobDatabase

    sim_a, sim_b = sims
    tiles = make_tile_grid(
        {"west": 5.0, "south": 51.0, "east": 5.25, "north": 51.1}, tile_size=10_000, years=[2023, 2024]
    )
    JobDatabase.create(job_db, tiles)
    os.environ.setdefault("DEMO_OPENEO_PASSWORD", config.password)
    auth = {"type": "basic", "username": "demo", "password_env": "DEMO_OPENEO_PASSWORD"}
    params = dict(
        job_db=str(job_db),
        backends=[
            {"name": "sim-a", "url": sim_a.url, "parallel_jobs": 3, "auth": auth},
            {"name": "sim-b", "url": sim_b.url, "parallel_jobs": 3, "auth": auth},
        ],
        start_job="flows.tiling.example_callbacks:composite_over_tile_bbox",
        poll_interval_seconds=1.0,
        failure_threshold=0.5,  # the simulator fails 10 % of jobs on purpose
    )
    print(f"Demo: {len(tiles)} jobs on 2 simulated backends (sim-a {sim_a.url}, sim-b {sim_b.url}); "
          f"about 10 % of jobs fail on purpose", file=sys.stderr)
    return params


def clean_demo_output(output_dir: Path, job_db: Path) -> None:
    """What an earlier demo left in `output_dir` (its job DB, maps and job_<id>/ result folders),
    so each demo starts afresh; nothing else in the folder is touched."""
    from jobdb import JobDbPaths

    output_dir.mkdir(parents=True, exist_ok=True)
    paths = JobDbPaths.of(job_db)
    for leftover in (job_db, paths.map_png, paths.map_html):
        leftover.unlink(missing_ok=True)
    for folder in output_dir.glob("job_*"):
        if folder.is_dir():
            shutil.rmtree(folder)


def accepted_parameters(flow: Callable[..., Any]) -> set:
    """Names of the flow's parameters."""
    return set(inspect.signature(getattr(flow, "fn", flow)).parameters)
