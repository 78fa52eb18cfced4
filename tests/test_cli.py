"""The command line: bad input fails in one line within seconds (before Prefect starts), --help,
exit codes (0 completed, 1 failed, 2 bad input, 130 interrupted), the end-of-run report."""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

from flows.console.cli import build_parser, main
from flows.config.params import SetupError
from flows.run_jobs import run_jobs  # (imported here, not under capsys: Prefect sets up its log handlers on import)
from jobdb import JobDbLock
from simulator import start_simulator
from tests.flow_helpers import PASSWORD_ENV, fast_config, make_db

ROOT = Path(__file__).resolve().parents[1]
CALLBACK = "flows.tiling.example_callbacks:composite_over_tile_bbox"


@pytest.fixture(scope="module")
def sim():
    sim = start_simulator(fast_config())
    yield sim
    sim.stop()


@pytest.fixture
def password(sim, monkeypatch):
    """The simulator's password in the env var the `--backend` flags name, for this test only (a test
    run alone, or after others, sees the same environment)."""
    monkeypatch.setenv(PASSWORD_ENV, sim.config.password)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_cli(*argv: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "flows", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    return done, time.monotonic() - started


def no_prefect_server_started(home: Path) -> bool:
    """Nothing under this PREFECT_HOME: the command line never got as far as starting a server."""
    return not home.exists() or not any(home.rglob("*.db"))


def backend_flag(sim, name: str = "a", password_env: str = PASSWORD_ENV, url: str | None = None) -> str:
    return f"{name}={url or sim.url},parallel_jobs=2,user=alice,password_env={password_env}"


def bad_input_cases(sim, tmp_path: Path):
    db = make_db(tmp_path / "jobs.parquet", 3)
    pinned = make_db(tmp_path / "pinned.parquet", 3, backend_name=[None, "mars", None])
    broken = tmp_path / "broken.csv"
    broken.write_text("tile_id,status\nT1,not_started\nT2,bogus_status\n")
    ok = ["--backend", backend_flag(sim), "--start-job", CALLBACK]
    return [
        # (flags, the flag named in the message, words in the message, the DB that must not change)
        (["--job-db", str(db), *ok, "--poll-interval", "-1"], "--poll-interval", ["must be > 0 (got -1)"], db),
        (["--job-db", str(db), *ok, "--max-start-workers", "0"], "--max-start-workers", ["must be >= 1 (got 0)"], db),
        (["--job-db", str(db), *ok, "--failure-threshold", "1.5"], "--failure-threshold", ["must be <= 1"], db),
        (["--job-db", str(db), *ok, "--max-runtime-minutes", "0"], "--max-runtime-minutes", ["must be > 0"], db),
        (["--job-db", str(db), *ok, "--cancel-running-job-after", "-5"], "--cancel-running-job-after", ["> 0"], db),
        (["--job-db", str(db), *ok, "--poll-interval", "soon"], "--poll-interval", ["invalid float"], db),
        (["--job-db", str(tmp_path / "nope.parquet"), *ok], "--job-db", ["nope.parquet", "does not exist"], None),
        (["--job-db", str(broken), *ok], "--job-db", ["bogus_status"], broken),
        (["--job-db", str(db), "--backend", backend_flag(sim), "--start-job", "mycb.jobs:start_job"],
         "--start-job", ["mycb", "cannot be imported"], db),
        (["--job-db", str(db), "--backend", backend_flag(sim), "--start-job", "flows.tiling.grid:tile_id"],
         "--start-job", ["start_job(row, connection", "**kwargs"], db),
        (["--job-db", str(db), "--backend", backend_flag(sim)], "--start-job", ["exactly one"], db),
        (["--job-db", str(db), "--backend", backend_flag(sim, password_env="NO_SUCH_ENV_FOR_CLI_TEST"),
          "--start-job", CALLBACK], "--backend", ["NO_SUCH_ENV_FOR_CLI_TEST", "not set"], db),
        (["--job-db", str(db), "--backend", backend_flag(sim, url=f"http://127.0.0.1:{free_port()}"),
          "--start-job", CALLBACK], "--backend", ["'a'", "not reachable"], db),
        (["--job-db", str(db), "--backend", "a=ftp://127.0.0.1:1", "--start-job", CALLBACK],
         "--backend", ["'a=ftp://127.0.0.1:1'", "url", "http://"], db),
        (["--job-db", str(db), "--backend", "a=http://127.0.0.1:1,parallel_jobs=0", "--start-job", CALLBACK],
         "--backend", ["parallel_jobs", "greater than or equal to 1"], db),
        (["--job-db", str(db), "--backend", "a=http://x,colour=red", "--start-job", CALLBACK],
         "--backend", ["unknown option 'colour'"], db),
        (["--job-db", str(db), "--backend", backend_flag(sim), "--backend", backend_flag(sim), "--start-job",
          CALLBACK], "--backend", ["unique", "'a'"], db),
        (["--job-db", str(pinned), *ok], "--backend", ["mars", "row 1"], pinned),
        (["--job-db", str(db)], "--job-db and at least one --backend are required", [], db),
    ]


def check_one_line_refusal(sim, argv, flag, words, db, code: int, out: str, err: str, before, posts_before) -> None:
    lines = err.strip().splitlines()
    assert code == 2, (argv, err)
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag}"), (argv, err)
    assert all(word in lines[0] for word in words), (words, lines[0])
    assert "Traceback" not in err and out == ""
    assert db is None or sha256(db) == before, f"{db} changed"
    assert sim.counters()["jobs_total"] == posts_before


def test_bad_input_one_line_exit_2_fast(prefect_harness, sim, password, tmp_path, capsys):
    """Every kind of bad input, through the command line's `main` in this process (19 Python starts
    fewer than one command each; the real command's exit code, its one line and that it starts no
    server: the test below and tests/test_startup.py). The session's Prefect API is configured,
    so these calls warm no server up."""
    for argv, flag, words, db in bad_input_cases(sim, tmp_path):
        before = sha256(db) if db else None
        posts_before = sim.counters()["jobs_total"]
        code = main(argv)
        out, err = capsys.readouterr()
        check_one_line_refusal(sim, argv, flag, words, db, code, out, err, before, posts_before)
    assert not list(tmp_path.glob("job_*"))


def test_bad_input_through_the_real_command_exits_2_in_one_line_before_any_server(sim, password, tmp_path):
    """The real command (its own Prefect server, warming up from its first moment): a callback that
    cannot be imported is refused with exit code 2 in one line, the DB unchanged, no job created,
    and no Prefect server ever served (no database under its PREFECT_HOME)."""
    db = make_db(tmp_path / "jobs.parquet", 3)
    argv = ["--job-db", str(db), "--backend", backend_flag(sim), "--start-job", "mycb.jobs:start_job"]
    before, posts_before = sha256(db), sim.counters()["jobs_total"]
    home = tmp_path / "prefect-home"
    done, elapsed = run_cli(*argv, env={"PREFECT_HOME": str(home)})
    check_one_line_refusal(sim, argv, "--start-job", ["mycb", "cannot be imported"], db, done.returncode,
                           done.stdout, done.stderr, before, posts_before)
    assert no_prefect_server_started(home), list(home.rglob("*"))  # refused before Prefect starts
    assert not list(tmp_path.glob("job_*"))
    print(f"bad input refused by the command in {elapsed:.1f} s")


def test_wrong_password_and_locked_db(prefect_harness, sim, tmp_path, capsys, monkeypatch):
    """In this process (`main`): the skipped exit (75) comes from the lock's own check, which a
    lock held by this process (another open file) trips like one held by another run."""
    db = make_db(tmp_path / "jobs.parquet", 3)
    argv = ["--job-db", str(db), "--backend", backend_flag(sim), "--start-job", CALLBACK]
    monkeypatch.setenv(PASSWORD_ENV, "definitely-wrong")
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --backend: backend 'a': authentication (basic)"), err
    monkeypatch.setenv(PASSWORD_ENV, sim.config.password)
    before = sha256(db)
    with JobDbLock(db):  # another live run holds the DB: skipped (75), not bad input
        code = main(argv)
    err = capsys.readouterr().err
    assert code == 75 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("skipped: job DB") and f"pid {os.getpid()}" in err
    assert "--wait-for-lock" in err and sha256(db) == before and sim.counters()["jobs_total"] == 0


def test_debug_shows_the_traceback(prefect_harness, tmp_path, capsys):
    code = main(["--job-db", str(tmp_path / "nope.csv"), "--backend", "a=http://127.0.0.1:1",
                 "--start-job", CALLBACK, "--debug"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("error: --job-db:")


def test_help_shows_every_option_with_help_defaults_and_examples():
    parser = build_parser()
    for action in parser._actions:
        assert action.help and action.help.strip(), f"{action.option_strings} has no help"
    text = parser.format_help()
    assert "--max-start-workers N" in text and "(default: 5)" in text and "(default: 10.0)" in text
    assert "examples:" in text and "python -m flows.run_jobs --demo" in text and "exit codes:" in text


# --- exit codes and the report, with real flows in this process ------------------------------
OUTCOME = {}


def scripted_flow():
    """A real Prefect flow with run_jobs' parameters whose outcome the test chooses."""
    from prefect import flow
    from prefect.states import Cancelled, Failed

    @flow(name="scripted-run")
    def scripted_run(job_db: str, backends: list, start_job: Optional[str] = None, process: Optional[dict] = None,
                     max_start_workers: int = 5, poll_interval_seconds: float = 10.0, download_results: bool = True,
                     root_dir: Optional[str] = None, cancel_running_job_after: Optional[float] = None):
        stats = {"job_db": job_db, "rows": 3, "terminal": 3, "elapsed_seconds": 1.5,
                 "status": {"finished": 2, "error": 1}, "by_backend": {"a": {"finished": 2, "error": 1}}}
        outcome = OUTCOME["next"]
        if outcome == "failed":
            return Failed(message="1 of 3 rows failed (more than failure_threshold 0)", data=stats)
        if outcome == "interrupt":
            raise KeyboardInterrupt()
        if outcome == "setup":
            raise SetupError("backend 'a' went away", parameter="backends")
        if outcome == "cancelled":  # a flow that catches Ctrl-C itself, persists and ends Cancelled
            return Cancelled(message="interrupted: stopped starting jobs", data=stats)
        return stats

    return scripted_run


@pytest.mark.parametrize("outcome, code", [("completed", 0), ("failed", 1), ("interrupt", 130), ("cancelled", 130), ("setup", 2)])
def test_exit_codes(prefect_harness, sim, password, tmp_path, capsys, outcome, code):
    db = make_db(tmp_path / "jobs.parquet", 3, status=["finished", "finished", "error"],
                 id=["j-1", "j-2", "j-3"], error_message=[None, None, "out of memory"], backend_name="a")
    OUTCOME["next"] = outcome
    argv = ["--job-db", str(db), "--backend", backend_flag(sim), "--start-job", CALLBACK]
    assert main(argv, flow=scripted_flow()) == code
    out, err = capsys.readouterr()
    if outcome in ("completed", "failed", "cancelled"):
        assert out.startswith("3 rows in 1.5 s: 2 finished, 1 error")
        assert "row 2 (T002-2022) job j-3 on a: error: out of memory" in out
        assert re.search(rf"^job DB: +{re.escape(str(db))}$", out, flags=re.M), out
    if outcome == "failed":
        assert "run failed: 1 of 3 rows failed" in err
    if outcome == "interrupt":
        assert "interrupted" in err and "resume" in err
    if outcome == "cancelled":
        assert "run cancelled: interrupted" in err and "resume" in err
    if outcome == "setup":
        assert err.strip().splitlines()[-1] == "error: --backend: backend 'a' went away"


def test_json_prints_the_full_stats(prefect_harness, sim, password, tmp_path, capsys):
    db = make_db(tmp_path / "jobs.parquet", 3, status="finished", backend_name="a")
    OUTCOME["next"] = "completed"
    argv = ["--job-db", str(db), "--backend", backend_flag(sim), "--start-job", CALLBACK, "--json"]
    assert main(argv, flow=scripted_flow()) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["status"] == {"finished": 2, "error": 1} and stats["job_db"] == str(db)


def test_real_run_report_and_map(prefect_harness, sim, password, tmp_path, capsys):
    """The real flow through the command line: exit 0, the report says where results, map and DB are."""
    from flows.tile_area import tile_area
    from jobdb import JobDbPaths

    db = tmp_path / "grid.parquet"
    tile_area(aoi={"west": 4.0, "south": 50.5, "east": 4.04, "north": 50.52}, tile_size=2_000, job_db=str(db),
              years=[2024])
    argv = ["--job-db", str(db), "--backend", backend_flag(sim), "--start-job", CALLBACK, "--poll-interval", "0.3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    paths = JobDbPaths.of(db)
    assert out.startswith("4 rows in ") and ": 4 finished" in out and f"results:         {tmp_path}/job_<id>/" in out
    assert f"map:             {paths.map_png}" in out and f"interactive map: {paths.map_html}" in out
    assert paths.map_png.exists() and paths.map_html.exists()


def test_a_run_with_failures_exits_1(prefect_harness, tmp_path, capsys, monkeypatch):
    if "failure_threshold" not in inspect.signature(run_jobs.fn).parameters:
        pytest.skip("needs run_jobs(failure_threshold=...): the flow-side part of issue 12")
    with start_simulator(fast_config(p_error=1.0)) as failing:
        db = make_db(tmp_path / "jobs.parquet", 4)
        monkeypatch.setenv(PASSWORD_ENV, failing.config.password)
        argv = ["--job-db", str(db), "--backend", backend_flag(failing), "--start-job", CALLBACK.replace(
            "example_callbacks:composite_over_tile_bbox", "demo_callbacks:start_job"), "--poll-interval", "0.3"]
        assert main(argv) == 1
    out, err = capsys.readouterr()
    assert "4 error" in out and "failures (4):" in out and "run failed" in err
