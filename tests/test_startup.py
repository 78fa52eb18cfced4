"""Start fast: input that needs no server is refused before any Prefect server starts; the CLI's own
server boots while the backends are checked (and is gone again when they are refused); each
`--demo` starts from a clean output folder. Figures: bench/startup.py."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import flows.console.cli as cli
from flows.console.demo import clean_demo_output
from simulator import start_simulator
from tests.flow_helpers import PASSWORD_ENV, fast_config, make_db
from tests.test_interruptions import processes_with_env

ROOT = Path(__file__).resolve().parents[1]
CALLBACK = "flows.tiling.demo_callbacks:start_job"


def test_offline_bad_input_starts_no_server_and_backend_checks_overlap_its_start(tmp_path, monkeypatch):
    started = []
    original = cli.start_prefect_early

    def recording(flow, server=None):
        started.append(flow)
        return original(flow, server)

    monkeypatch.setattr(cli, "start_prefect_early", recording)
    with start_simulator(fast_config()) as sim:
        db = make_db(tmp_path / "jobs.parquet", 2)
        backend = f"a={sim.url},user=alice,password_env={PASSWORD_ENV}"
        ok = ["--job-db", str(db), "--backend", backend, "--start-job", CALLBACK]
        offline = [ok + ["--poll-interval", "-1"], ["--job-db", str(tmp_path / "nope.csv"), *ok[2:]],
                   ok[:-1] + ["no_such_module:start_job"]]
        for argv in offline:
            assert cli.main(argv) == 2
        assert started == []  # refused before any Prefect server was started
        monkeypatch.setenv(PASSWORD_ENV, "wrong")
        assert cli.main(ok) == 2  # refused by the backend: the server was started before that check
        assert len(started) == 1
        assert sim.counters()["jobs_total"] == 0


def test_a_server_started_early_is_gone_when_the_backend_check_refuses(tmp_path):
    home = tmp_path / "prefect-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PYTHONPATH=str(ROOT), PASSWORD_FOR_STARTUP_TEST="wrong")
    with start_simulator(fast_config()) as sim:
        db = make_db(tmp_path / "jobs.parquet", 2)
        done = subprocess.run(
            [sys.executable, "-m", "flows.run_jobs", "--job-db", str(db), "--start-job", CALLBACK, "--backend",
             f"a={sim.url},user=alice,password_env=PASSWORD_FOR_STARTUP_TEST"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.startswith("error: --backend: backend 'a': authentication"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert processes_with_env("PREFECT_HOME", str(home)) == []  # no server or watchdog outlived the command


def test_offline_bad_input_leaves_no_server_database_and_no_process(tmp_path):
    """The server's interpreter warms up from the command's first moment, but input refused offline
    never lets it serve: no Prefect database is made in PREFECT_HOME, and no process outlives the
    command (flows/console/local_server.py: `--when-told`)."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PYTHONPATH=str(ROOT))
    db = make_db(tmp_path / "jobs.parquet", 2)
    done = subprocess.run(
        [sys.executable, "-m", "flows.run_jobs", "--job-db", str(db), "--start-job", "no_such_module:start_job",
         "--backend", "a=http://127.0.0.1:9,user=alice,password_env=NOPE"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.startswith("error: --"), done.stderr
    assert processes_with_env("PREFECT_HOME", str(home)) == []
    assert not list(home.glob("*.db")), sorted(p.name for p in home.iterdir())  # no server ever opened its database


def test_each_demo_starts_from_a_clean_output_folder(tmp_path):
    out = tmp_path / "demo-output"
    (out / "job_j-old1").mkdir(parents=True)
    (out / "job_j-old1" / "result.tif").write_bytes(b"x")
    for name in ("jobs.parquet", "jobs_map.png", "jobs_map.html", "notes.txt"):
        (out / name).write_text("old")
    clean_demo_output(out, out / "jobs.parquet")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # the user's own file stays
