"""What a run shows: status histograms, Prefect artifacts, and the returned stats dict."""
from __future__ import annotations

import re
from collections import Counter
from typing import Any, Dict, Iterable, List, Mapping, Optional

import pandas as pd
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from jobdb import TERMINAL_STATUSES


def artifact_key(text: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:100] or "run-jobs"


def status_counts(df: pd.DataFrame) -> Dict[str, int]:
    return {str(k): int(v) for k, v in df["status"].value_counts().sort_index().items()}


def status_by_backend(df: pd.DataFrame) -> Dict[str, Dict[str, int]]:
    table: Dict[str, Dict[str, int]] = {}
    backends = df["backend_name"].fillna("(unassigned)").astype(str)
    for (backend, status), count in df.groupby([backends, df["status"]]).size().items():
        table.setdefault(backend, {})[str(status)] = int(count)
    return table


def share_terminal(df: pd.DataFrame) -> float:
    if len(df) == 0:
        return 100.0
    return 100.0 * float(df["status"].isin(TERMINAL_STATUSES).sum()) / len(df)


def progress_bar(percent: float, width: int = 24) -> str:
    """A text bar for log lines, e.g. `[#########---------------]  37%`."""
    filled = int(round(width * min(max(percent, 0.0), 100.0) / 100.0))
    return f"[{'#' * filled}{'-' * (width - filled)}] {percent:3.0f}%"


class ProgressReport:
    """The progress artifact of one run, updated at most once per cycle when it changed."""

    def __init__(self, key_base: str, description: str):
        self._artifact_id = create_progress_artifact(
            progress=0.0, key=artifact_key(f"{key_base}-progress"), description=description
        )
        self._last: Optional[float] = None

    def update(self, df: pd.DataFrame) -> None:
        progress = round(share_terminal(df), 1)
        if progress != self._last:
            update_progress_artifact(artifact_id=self._artifact_id, progress=progress)
            self._last = progress


def publish_final_artifacts(
    key_base: str, df: pd.DataFrame, stats: Mapping[str, Any], failures: List[Dict[str, Any]]
) -> None:
    """A table of counts per status x backend and a markdown summary of the run."""
    by_backend = stats["by_backend"]
    statuses = sorted({s for counts in by_backend.values() for s in counts})
    rows = [{"backend": b, **{s: counts.get(s, 0) for s in statuses}} for b, counts in sorted(by_backend.items())]
    create_table_artifact(table=rows, key=artifact_key(f"{key_base}-status"), description="Rows per status and backend")

    lines = [
        f"# openEO batch run: {stats['job_db']}",
        "",
        f"- rows: **{stats['rows']}**, terminal: **{stats['terminal']}**",
        f"- statuses: {', '.join(f'{k}: {v}' for k, v in stats['status'].items())}",
        f"- time taken: {stats['elapsed_seconds']:.1f} s (all started after {stats.get('time_to_all_started_seconds')} s)",
        f"- HTTP requests made by the manager: {stats['requests_total']}",
    ]
    if stats.get("tile_map"):
        lines.append(f"- tile map: `{stats['tile_map']}`")
    if failures:
        lines += ["", "## Failures", "", "| row | label | job id | status | error |", "|---|---|---|---|---|"]
        for failure in failures[:200]:
            error = str(failure.get("error_message") or "").replace("|", "\\|").replace("\n", " ")[:300]
            lines.append(
                f"| {failure['_row']} | {failure.get('label', '')} | {failure.get('id') or ''} | {failure['status']} | {error} |"
            )
        if len(failures) > 200:
            lines.append(f"\n… and {len(failures) - 200} more")
    create_markdown_artifact(markdown="\n".join(lines), key=artifact_key(f"{key_base}-summary"), description="Run summary")


def merge_request_counts(counts: Iterable[Mapping[str, int]]) -> Dict[str, int]:
    total: Counter = Counter()
    for c in counts:
        total.update(c)
    return dict(sorted(total.items()))
