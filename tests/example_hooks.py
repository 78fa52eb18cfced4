"""Post-processing hooks used by the tests, written as users would (job_id, row, job_dir, connection)."""
from __future__ import annotations

from pathlib import Path


def mark_done(job_id, row, job_dir: Path, connection) -> None:
    """Write a marker beside the results: proof the hook ran after the download."""
    assets = [p.name for p in job_dir.iterdir() if not p.name.startswith(("job_", "."))]
    (job_dir / "postprocessed.txt").write_text(f"{job_id} {row['tile_id']} {len(assets)} {connection.root_url}")


def always_fails(job_id, row, job_dir, connection) -> None:
    raise RuntimeError(f"hook cannot handle {job_id}")


def two_arguments(job, row):  # openeo's override signature: not ours
    pass
