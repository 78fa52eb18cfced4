"""Look at a run in the Prefect UI: start a Prefect server (UI on), run a small run-jobs flow
against a local simulator, screenshot the flow run page with headless Chromium.

    python bench/ui_check.py --out /tmp/ui_check
    # writes flow_run.png, runs.png, artifacts.png, flow_run_artifacts.png and summary.png (the
    # summary artifact: failures and the tile map, embedded as a data: image)
    python bench/ui_check.py --out /tmp/ui_check --mid-run   # + progress_mid_run.png, failed_run.png
    python bench/ui_check.py --out /tmp/ui_check --only-mid-run --chromium-timeout 600   # only those two
    python bench/ui_check.py --out /tmp/ui_check --operator-limits
    # also: a Variable openeo-parallel-jobs-sim = 2 and a task run concurrency limit on
    # openeo-backend:sim (3) before the run; writes concurrency.png, concurrency_task_run.png,
    # variables.png and progress.png (the progress artifact with the limits in force)

Needs the Debian `chromium` package. Everything listens on 127.0.0.1 only and is stopped at the end.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobdb.status import FINISHED  # noqa: E402


CHROMIUM_TIMEOUT_SECONDS = 120.0  # --chromium-timeout: the UI's scripts took longer than 120 s at load 24


def screenshot(url: str, out: Path, profile: Path, budget_ms: int = 20000) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        raise SystemExit("chromium not found (apt-get install -y chromium)")
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--hide-scrollbars", "--window-size=1500,1100", f"--virtual-time-budget={budget_ms}",
         f"--screenshot={out}", url],
        check=True, timeout=CHROMIUM_TIMEOUT_SECONDS, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def summary_artifact(job_db: str, kind: str = "summary"):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from jobdb import JobDbPaths

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[JobDbPaths.of(job_db).artifact_key(kind)])))
    return found[-1] if found else None


def mid_run_and_failed_run(ui: str, out: Path, work: Path, sim) -> None:
    """The progress table artifact while a run goes on, and the page of a run that ended Failed."""
    import threading

    from flows.run_jobs import run_jobs
    from simulator import start_simulator
    from tests.flow_helpers import backend, fast_config, make_db

    slow = start_simulator(fast_config(run_time=30.0, queue_time=1.0))  # rows left while the page renders
    try:
        db = make_db(work / "campaign.parquet", 24)
        running = threading.Thread(target=lambda: run_jobs(
            job_db=str(db), backends=[backend("sim-a", sim, 3), backend("sim-b", slow, 3)],
            start_job="flows.tiling.demo_callbacks:start_job", poll_interval_seconds=0.5, failure_threshold=1.0))
        running.start()
        deadline = time.monotonic() + 300
        table = None
        while time.monotonic() < deadline:  # until some rows are done and some are not
            table = summary_artifact(str(db), "progress-table")
            if table is not None and FINISHED in table.data and " 0 of 24 rows left" not in table.data \
                    and "24 of 24 rows left" not in table.data:
                break
            time.sleep(1)
        if table is not None:
            screenshot(f"{ui}/artifacts/artifact/{table.id}", out / "progress_mid_run.png", work / "chromium-mid")
            print(f"progress_mid_run: {out / 'progress_mid_run.png'}\n{table.data}")
        running.join(600)
    finally:
        slow.stop()
    failing = start_simulator(fast_config(p_error=1.0))
    try:
        db = make_db(work / "failing.parquet", 4)
        state = run_jobs(job_db=str(db), backends=[backend("sim", failing, 2)],
                         start_job="flows.tiling.demo_callbacks:start_job", poll_interval_seconds=0.3, return_state=True)
        print(f"failed run: {state.type.value}: {state.message}")
        screenshot(f"{ui}/runs/flow-run/{state.state_details.flow_run_id}", out / "failed_run.png", work / "chromium-f")
        print(f"failed_run: {out / 'failed_run.png'}")
    finally:
        failing.stop()


def main() -> int:
    global CHROMIUM_TIMEOUT_SECONDS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/ui_check")
    parser.add_argument("--mid-run", action="store_true",
                        help="also progress_mid_run.png (the progress table artifact of a run going on) and "
                             "failed_run.png (the page of a run that ended Failed)")
    parser.add_argument("--only-mid-run", action="store_true", help="only the two pages of --mid-run")
    parser.add_argument("--operator-limits", action="store_true", help="an override Variable and a tag limit too")
    parser.add_argument("--chromium-timeout", type=float, default=CHROMIUM_TIMEOUT_SECONDS, metavar="SECONDS",
                        help="per screenshot (a loaded machine renders the UI slowly)")
    args = parser.parse_args()
    CHROMIUM_TIMEOUT_SECONDS = args.chromium_timeout
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ui_check_"))
    from tests.prefect_server import PrefectServer

    home = work / "prefect-home"
    home.mkdir()
    import tests.prefect_server as ps

    original = ps.base_env
    port = ps.free_port()
    ps.free_port = lambda: port
    api = f"http://127.0.0.1:{port}/api"  # the UI (served by the server) must call this, not :4200
    ps.base_env = lambda h, api_url=None: {**original(h, api_url), "PREFECT_UI_ENABLED": "true",
                                           "PREFECT_UI_API_URL": api, "PREFECT_SERVER_UI_API_URL": api}
    server = PrefectServer(home, startup_timeout=300)  # a loaded machine: fresh migrations took 100+ s
    sim = None
    try:
        os.environ.update({k: v for k, v in server.env().items() if k.startswith("PREFECT_")})
        from simulator import start_simulator
        from tests.flow_helpers import backend, fast_config

        sim = start_simulator(fast_config(run_time=1.0, p_error=0.25))
        if args.only_mid_run:
            mid_run_and_failed_run(f"http://127.0.0.1:{server.port}", out, work, sim)
            return 0
        from flows.run_jobs import run_jobs
        from flows.tile_area import tile_area

        db = work / "ui_demo.parquet"
        tile_area(aoi={"west": 4.0, "south": 50.5, "east": 4.1, "north": 50.55}, tile_size=4_000, job_db=str(db),
                  years=[2023, 2024])
        if args.operator_limits:
            from prefect.client.orchestration import get_client
            from prefect.variables import Variable

            Variable.set("openeo-parallel-jobs-sim", 2, overwrite=True)
            with get_client(sync_client=True) as client:
                client.create_concurrency_limit(tag="openeo-backend:sim", concurrency_limit=3)
        t0 = time.monotonic()
        state = run_jobs(job_db=str(db), backends=[backend("sim", sim, 3)], start_job="flows.tiling.demo_callbacks:start_job",
                         poll_interval_seconds=0.5, return_state=True)
        flow_run_id = state.state_details.flow_run_id
        print(f"flow run {flow_run_id}: {state.type.value} in {time.monotonic() - t0:.1f} s")
        ui = f"http://127.0.0.1:{server.port}"
        pages = [("flow_run", f"{ui}/runs/flow-run/{flow_run_id}"), ("runs", f"{ui}/runs"),
                 ("artifacts", f"{ui}/artifacts"),
                 ("flow_run_artifacts", f"{ui}/runs/flow-run/{flow_run_id}?tab=Artifacts")]
        if args.operator_limits:
            pages += [("concurrency", f"{ui}/concurrency-limits"),
                      ("concurrency_task_run", f"{ui}/concurrency-limits?tab=Task+Run"),
                      ("variables", f"{ui}/variables")]
            progress = summary_artifact(str(db), "progress")
            if progress is not None:
                pages.append(("progress", f"{ui}/artifacts/artifact/{progress.id}"))
        summary = summary_artifact(str(db))
        if summary is not None:  # the markdown summary with the tile map embedded as a data: image
            pages.append(("summary", f"{ui}/artifacts/artifact/{summary.id}"))
            print(f"summary artifact {summary.key}: {len(summary.data)} characters, "
                  f"map embedded: {'data:image/png;base64,' in summary.data}")
        for name, url in pages:
            screenshot(url, out / f"{name}.png", work / f"chromium-{name}")
            print(f"{name}: {out / f'{name}.png'} ({(out / f'{name}.png').stat().st_size} bytes) <- {url}")
        if args.mid_run:
            mid_run_and_failed_run(ui, out, work, sim)
    finally:
        if sim is not None:
            sim.stop()
        server.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
