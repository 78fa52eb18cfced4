"""What a run shows: status histograms, Prefect artifacts, failures and the end-of-run report.

Artifact keys come from `JobDbPaths.artifact_key` (the DB's stem + a hash of its absolute
path), so two `jobs.csv` in different folders never share an artifact history.
"""
from __future__ import annotations

import base64
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional

import pandas as pd
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactUpdate

from flows.console.progress_display import RateTracker, duration, ordered, totals
from tasks.results.storage import ResultsRoot, is_remote
from jobdb import TERMINAL_STATUSES, JobDbPaths
from jobdb.status import FAILED, HOLDS_SLOT
from jobdb.store import label_of

# A PNG larger than this is linked by its path in the summary instead of embedded in it.
MAX_EMBEDDED_MAP_BYTES = 1_500_000
FAILURES_IN_REPORT = 5
FAILURES_IN_SUMMARY = 200


def failed_rows(df: pd.DataFrame) -> List[Dict[str, Any]]:
    """Rows that ended without results (error, canceled, start_failed), with their reasons."""
    bad = df[df["status"].isin(sorted(FAILED))]
    return [
        {
            "_row": int(i),
            "label": label_of(lambda column: df.at[i, column] if column in df.columns else None, int(i)),
            "id": _text(df.at[i, "id"]) if "id" in df.columns else None,
            "backend_name": _text(df.at[i, "backend_name"]) if "backend_name" in df.columns else None,
            "status": str(df.at[i, "status"]),
            "error_message": _text(df.at[i, "error_message"]) if "error_message" in df.columns else None,
        }
        for i in bad.index
    ]


class ProgressReport:
    """The run's progress in the Prefect UI, updated while it goes: a progress artifact (share of rows
    terminal; its description says rows left, rate and ETA) and a markdown artifact (counts per
    status x backend, rows left, rate, ETA, backends not answering). Both are created once and then
    updated in place (`update_artifact`), so a long run adds no artifact versions; an update is sent
    when the counts or a backend's health changed, or every `refresh_seconds` for the rate."""

    def __init__(self, job_db: str | Path, description: Optional[str] = None, refresh_seconds: float = 30.0):
        paths = JobDbPaths.of(job_db)
        self._name = paths.db.name
        self._artifact_id = create_progress_artifact(
            progress=0.0, key=paths.artifact_key("progress"),
            description=description or f"Rows terminal in {job_db}",
        )
        self._table_id = create_markdown_artifact(
            markdown=f"# {self._name}: starting", key=paths.artifact_key("progress-table"),
            description=f"Progress of {paths.db}: rows per status and backend, rate, ETA",
        )
        self.rates = RateTracker()
        self.refresh_seconds = refresh_seconds
        self._last: Optional[tuple] = None
        self._last_sent = 0.0

    def update(self, by_backend: Mapping[str, Mapping[str, int]], rows: int, elapsed_seconds: float,
               down: Optional[Mapping[str, float]] = None, limits: Optional[str] = None) -> None:
        """`by_backend`: {backend: {status: n}}; `down`: {backend: epoch seconds since it is not answering};
        `limits`: the limits in force and where each comes from (flows/config/limits.py), shown under both."""
        counts = totals(by_backend)
        terminal = sum(n for s, n in counts.items() if s in TERMINAL_STATUSES)
        self.rates.add(elapsed_seconds, terminal)
        state = (sorted((b, sorted(c.items())) for b, c in by_backend.items()), sorted((down or {}).items()), limits)
        now = time.monotonic()
        if state == self._last and now - self._last_sent < self.refresh_seconds:
            return
        glance = self.glance(counts, rows, elapsed_seconds, down or {})
        in_force = f"\n\nLimits in force:\n\n```\n{limits}\n```" if limits else ""
        update_progress_artifact(artifact_id=self._artifact_id, progress=round(100.0 * terminal / rows, 1)
                                 if rows else 100.0, description=glance + in_force)
        markdown = progress_markdown(self._name, by_backend, rows, glance, down or {}) + in_force
        with get_client(sync_client=True) as client:
            client.update_artifact(artifact_id=self._table_id, artifact=ArtifactUpdate(data=markdown))
        self._last, self._last_sent = state, now

    def glance(self, counts: Mapping[str, int], rows: int, elapsed_seconds: float, down: Mapping[str, float]) -> str:
        """`63 of 100 rows left · 4.2 rows/min · ETA 15m · 12m elapsed` (no ETA while a backend is down)."""
        left = rows - sum(n for s, n in counts.items() if s in TERMINAL_STATUSES)
        rate = self.rates.rate()
        parts = [f"{left} of {rows} rows left", f"{rate * 60:.1f} rows/min" if rate else "rate: measuring"]
        if down:
            parts.append("ETA unknown: " + ", ".join(f"{b} not answering" for b in sorted(down)))
        elif left and rate:
            parts.append(f"ETA {duration(self.rates.eta_seconds(left))}")
        parts.append(f"{duration(elapsed_seconds)} elapsed")
        return " · ".join(parts)


def progress_markdown(name: str, by_backend: Mapping[str, Mapping[str, int]], rows: int, glance: str,
                      down: Mapping[str, float]) -> str:
    counts = totals(by_backend)
    statuses = [s for s, _ in ordered(counts)]
    terminal = sum(n for s, n in counts.items() if s in TERMINAL_STATUSES)
    updated = time.strftime("%H:%M:%S UTC", time.gmtime())
    lines = [f"# {name}: {100.0 * terminal / rows if rows else 100.0:.0f}% done", "", f"**{glance}**", "",
             f"updated {updated}", ""]
    for backend, since in sorted(down.items()):
        lines += [f"- ⚠ backend **{backend}** is not answering since "
                  f"{time.strftime('%H:%M:%S UTC', time.gmtime(since))}", ""]
    lines += ["| backend | " + " | ".join(statuses) + " | active |", "|---" * (len(statuses) + 2) + "|"]
    for backend, c in sorted(by_backend.items()):
        mark = " (not answering)" if backend in down else ""
        lines.append(f"| {backend}{mark} | " + " | ".join(str(c.get(s, 0)) for s in statuses)
                     + f" | {sum(n for s, n in c.items() if s in HOLDS_SLOT)} |")
    if len(by_backend) > 1:
        lines.append("| **all** | " + " | ".join(f"**{counts.get(s, 0)}**" for s in statuses)
                     + f" | **{sum(n for s, n in counts.items() if s in HOLDS_SLOT)}** |")
    return "\n".join(lines)


def publish_final_artifacts(
    job_db: str | Path, df: pd.DataFrame, stats: Mapping[str, Any], failures: List[Dict[str, Any]]
) -> None:
    """A table of counts per status x backend and a markdown summary of the run, with its map."""
    paths = JobDbPaths.of(job_db)
    by_backend = stats["by_backend"]
    statuses = sorted({s for counts in by_backend.values() for s in counts})
    rows = [{"backend": b, **{s: counts.get(s, 0) for s in statuses}} for b, counts in sorted(by_backend.items())]
    create_table_artifact(table=rows, key=paths.artifact_key("status"), description="Rows per status and backend")
    create_markdown_artifact(markdown=summary_markdown(stats, failures), key=paths.artifact_key("summary"),
                             description=f"Run summary of {paths.db}")


def summary_markdown(stats: Mapping[str, Any], failures: List[Dict[str, Any]]) -> str:
    lines = [
        f"# openEO batch run: {stats['job_db']}",
        "",
        f"- rows: **{stats['rows']}**, terminal: **{stats['terminal']}**",
        f"- statuses: {', '.join(f'{k}: {v}' for k, v in stats['status'].items())}",
        f"- time taken: {stats['elapsed_seconds']:.1f} s (all started after {stats.get('time_to_all_started_seconds')} s)",
        f"- HTTP requests made by the manager: {stats['requests_total']}",
    ]
    if stats.get("results"):
        lines.append(f"- results: `{stats['results']}/job_<id>/`")
    if stats.get("collection"):
        lines.append(f"- STAC collection (one item per downloaded job): `{stats['collection']}`")
    maps = tile_map_paths(stats.get("tile_map"))
    if maps.get("html"):
        lines.append(f"- interactive tile map: `{maps['html']}`")
    if maps.get("png"):
        lines.append(f"- tile map: `{maps['png']}`")
        image = embedded_png(maps["png"])
        if image:
            # The Prefect UI renders data: images in markdown artifacts (checked with bench/ui_check.py).
            lines += ["", f"![tile map: tiles coloured by their worst status]({image})"]
    if failures:
        lines += ["", f"## Failures ({len(failures)})", "",
                  "| row | label | job id | backend | status | error |", "|---|---|---|---|---|---|"]
        for failure in failures[:FAILURES_IN_SUMMARY]:
            error = str(failure.get("error_message") or "").replace("|", "\\|").replace("\n", " ")[:300]
            lines.append(
                f"| {failure['_row']} | {failure.get('label', '')} | {failure.get('id') or ''} "
                f"| {failure.get('backend_name') or ''} | {failure['status']} | {error} |"
            )
        if len(failures) > FAILURES_IN_SUMMARY:
            lines.append(f"\n… and {len(failures) - FAILURES_IN_SUMMARY} more")
    limits = stats.get("limits") or {}
    if limits:
        lines += ["", "## Limits in force at the end", "", "| backend | limit | value | from |", "|---|---|---|---|"]
        for backend, knobs in sorted(limits.items()):
            for knob, limit in knobs.items():
                value = "off" if limit["value"] is None else f"{limit['value']:g}"
                lines.append(f"| {backend} | {knob} | {value} | {limit['source']} |")
    return "\n".join(lines)


def tile_map_paths(tile_map: Any) -> Dict[str, str]:
    """`stats["tile_map"]`: {"png": ..., "html": ...} (or a PNG path as before), as a dict."""
    if not tile_map:
        return {}
    if isinstance(tile_map, Mapping):
        return {k: str(v) for k, v in tile_map.items() if v}
    return {"png": str(tile_map)}


def embedded_png(path: str | Path) -> Optional[str]:
    try:
        if is_remote(path):  # the maps went with the results to object storage (its credentials registered)
            folder, name = str(path).rsplit("/", 1)
            data = ResultsRoot(folder).read_bytes(name)
        else:
            data = Path(path).read_bytes()
    except (OSError, ValueError):
        return None
    if len(data) > MAX_EMBEDDED_MAP_BYTES:
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def run_paths(job_db: str | Path, root_dir: Optional[str | Path] = None, tile_map: Any = None,
              collection: Optional[str] = None) -> Dict[str, str]:
    """Where a run left things, in the order the end-of-run report lists them (URLs on object storage)."""
    paths = JobDbPaths.of(job_db)
    maps = tile_map_paths(tile_map)
    root = str(root_dir) if root_dir and is_remote(root_dir) else (
        Path(root_dir).resolve() if root_dir else paths.default_results_root)
    where = {"results": f"{root}/job_<id>/"}
    if collection:
        where["STAC collection"] = collection
    if maps.get("png"):
        where["map"] = maps["png"]
    if maps.get("html"):
        where["interactive map"] = maps["html"]
    where["job DB"] = str(paths.db)
    return where


def format_run_report(
    stats: Mapping[str, Any], failures: List[Dict[str, Any]], paths: Mapping[str, str],
    max_failures: int = FAILURES_IN_REPORT,
) -> str:
    """The short end-of-run text: counts per status, failures with reasons, where things are, time."""
    counts = ", ".join(f"{n} {s}" for s, n in sorted(stats.get("status", {}).items(), key=lambda kv: -kv[1]))
    waited = stats.get("lock_wait_seconds") or 0.0
    lines = [f"{stats.get('rows', 0)} rows in {stats.get('elapsed_seconds', 0.0):.1f} s"
             + (f" (after waiting {waited:.1f} s for another run's lock on the job DB)" if waited >= 1.0 else "")
             + f": {counts or 'none'}"]
    by_backend = stats.get("by_backend") or {}
    if len(by_backend) > 1:
        for backend, backend_counts in sorted(by_backend.items()):
            lines.append(f"  {backend}: " + ", ".join(f"{n} {s}" for s, n in sorted(backend_counts.items())))
    if failures:
        lines.append(f"failures ({len(failures)}):")
        for failure in failures[:max_failures]:
            where = " ".join(p for p in (
                f"job {failure['id']}" if failure.get("id") else "",
                f"on {failure['backend_name']}" if failure.get("backend_name") else "",
            ) if p)
            reason = str(failure.get("error_message") or "no reason recorded").replace("\n", " ")
            reason = reason if len(reason) <= 120 else reason[:117] + "..."
            lines.append(f"  row {failure['_row']} ({failure.get('label', '')}){' ' + where if where else ''}: "
                         f"{failure['status']}: {reason}")
        if len(failures) > max_failures:
            lines.append(f"  and {len(failures) - max_failures} more (error_message column of the job DB)")
    width = max((len(k) for k in paths), default=0)
    lines += [f"{label + ':':<{width + 1}} {where}" for label, where in paths.items()]
    return "\n".join(lines)


def merge_request_counts(counts: Iterable[Mapping[str, int]]) -> Dict[str, int]:
    total: Counter = Counter()
    for c in counts:
        total.update(c)
    return dict(sorted(total.items()))


def _text(value: Any) -> Optional[str]:
    if value is None or (isinstance(value, float) and value != value) or value is pd.NA:
        return None
    text = str(value)
    return text or None
