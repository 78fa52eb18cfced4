"""Everything that lives beside one job DB, named in one place.

A job DB `data/jobs.parquet` owns: its lock and lock-holder note, the row markers in job titles
(a short hash of its absolute path, so markers of two DBs never collide), Prefect artifact keys
(stem + the same hash, so two `jobs.csv` in different folders never share an artifact history),
the tile map (PNG + interactive HTML) and the default results folder.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class JobDbPaths:
    db: Path

    @classmethod
    def of(cls, job_db: str | Path) -> "JobDbPaths":
        return cls(Path(job_db).resolve())

    @property
    def db_hash(self) -> str:
        """8 hex digits identifying this DB by its absolute path."""
        return hashlib.sha1(str(self.db).encode()).hexdigest()[:8]

    @property
    def marker_prefix(self) -> str:
        return self.db_hash

    def row_marker(self, row: int, attempt: int = 1) -> str:
        """The marker put in the title of the job created for `row` (attempt > 1: a resubmission)."""
        base = f"{self.marker_prefix}-r{row}"
        return base if attempt <= 1 else f"{base}-a{attempt}"

    @property
    def lock(self) -> Path:
        return self.db.with_name(f".{self.db.name}.lock")

    @property
    def lock_holder(self) -> Path:
        """JSON note of who holds the lock (host, pid, flow run, since), for the refusal message."""
        return self.db.with_name(f".{self.db.name}.lock-holder.json")

    @property
    def artifact_key_base(self) -> str:
        """Prefect artifact keys allow lowercase letters, digits and dashes only."""
        stem = re.sub(r"[^a-z0-9-]+", "-", self.db.stem.lower()).strip("-") or "jobs"
        return f"{stem}-{self.db_hash}"

    def artifact_key(self, kind: str) -> str:
        return f"{self.artifact_key_base}-{kind}"

    @property
    def map_png(self) -> Path:
        return self.db.with_name(f"{self.db.stem}_map.png")

    @property
    def map_html(self) -> Path:
        return self.db.with_name(f"{self.db.stem}_map.html")

    @property
    def default_results_root(self) -> Path:
        return self.db.parent
