"""Start fast: input that needs no server is refused before any Prefect server starts; the CLI's own
server boots while the backends are checked (and is gone again when they are refused); each
`--demo` starts from a clean output folder. Figures: bench/startup.py."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

import flows.console.cli as cli
from flows.console.demo import clean_demo_output
from flows.console.local_server import OwnServer
from simulator import start_simulator
from tests.flow_helpers import PASSWORD_ENV, fast_config, make_db
from tests.test_interruptions import processes_with_env, wait_for

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


def test_the_command_warms_its_server_up_first_and_the_warm_up_ends_with_it(tmp_path, monkeypatch):
    """`python -m flows` starts the warm-up before its own imports (`OwnServer.for_command`): a
    process, no port, no database; `stop` ends it and its interpreter, by their process group. No
    warm-up for `--help`."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    monkeypatch.setenv("PREFECT_HOME", str(home))  # the watchdog's environment
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    # no API URL in Prefect's settings either: an earlier test on this worker may have left its
    # server's in the settings context (the CLI's own process starts with none)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        own = OwnServer.for_command(["--job-db", "jobs.csv"])
    try:
        assert own.server is not None and own.server.watchdog.poll() is None
        wait_for(lambda: len(processes_with_env("PREFECT_HOME", str(home))) == 2, 60, "the watchdog and its warm-up")
        own.warm_up()  # asked again once the flags are valid: the same warm-up, no second one
        assert len(processes_with_env("PREFECT_HOME", str(home))) == 2
    finally:
        own.stop()
    assert own.server.watchdog.returncode is not None
    wait_for(lambda: processes_with_env("PREFECT_HOME", str(home)) == [], 30, "no process left")  # the warm-up: reaped by init
    assert not list(home.glob("*.db"))
    assert OwnServer.for_command(["--help"]).server is None


def held_in_its_checks(tmp_path: Path, home: Path):
    """A CLI process held inside its input checks (tests/held_callbacks.py), its server warming up;
    returns (process, the held FIFO's write end: close it to let the check go on)."""
    fifo = tmp_path / "hold"
    os.mkfifo(fifo)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PYTHONPATH=str(ROOT), HOLD_IMPORT_FIFO=str(fifo))
    db = make_db(tmp_path / "jobs.parquet", 2)
    child = subprocess.Popen(
        [sys.executable, "-m", "flows.run_jobs", "--job-db", str(db), "--start-job", "tests.held_callbacks:start_job",
         "--backend", "a=http://127.0.0.1:9,user=alice,password_env=NOPE"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        # started with SIGINT ignored, as by a parent that ignores it (a pytest worker can be one): the
        # command makes Ctrl-C its own anyway (flows/console/__init__.py)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))

    def reader_waiting():
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO until the import opened it to read
        except OSError:
            assert child.poll() is None, child.communicate()
            return None

    held = wait_for(reader_waiting, 120, "the CLI's check waiting on its callback's import")
    wait_for(lambda: len(processes_with_env("PREFECT_HOME", str(home))) >= 3, 60, "the CLI, its watchdog and warm-up")
    return child, held


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_a_command_interrupted_in_its_checks_leaves_no_server_behind(tmp_path, sig):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) while the input is checked: one
    line, exit 130, the warm-up stopped before the command exits. SIGKILL there: the watchdog sees
    the CLI's pipe close and ends the warm-up. Either way no server ever served, no process is left."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    child, held = held_in_its_checks(tmp_path, home)
    try:
        os.killpg(child.pid, sig)
        try:
            _, err = child.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # say what the command printed, not only that it hung
            os.close(held)
            held = None
            child.kill()
            pytest.fail(f"the command did not end within 60 s of {sig!r}: {child.communicate()}")
    finally:
        if held is not None:
            os.close(held)
    if sig == signal.SIGINT:
        assert child.returncode == 130, err
        assert err.strip().splitlines() == ["interrupted: run the same command again to resume"], err
    else:
        assert child.returncode == -signal.SIGKILL
    # SIGINT: stopped by the CLI (the killed warm-up is reaped by init); SIGKILL: by the watchdog
    wait_for(lambda: processes_with_env("PREFECT_HOME", str(home)) == [], 60, "no watchdog or warm-up left")
    assert not list(home.glob("*.db"))


def test_the_warm_up_imports_builds_and_routes_the_api_app_without_a_database(tmp_path):
    """The warm-up process alone, told nothing (its stdin closed at once, as when the CLI refuses
    its input): it imports the server's modules, builds the API app and routes one request through
    it in-process (`route_once`), then ends without a port or a database ever made in PREFECT_HOME."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PYTHONPATH=str(ROOT), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    done = subprocess.run([sys.executable, "-m", "flows.console.local_server", "--serve-when-told", "9"],
                          cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not list(home.rglob("*.db")), sorted(str(p) for p in home.rglob("*"))


@pytest.mark.usefixtures("prefect_harness")
def test_the_demo_tells_its_simulators_to_stop_once_the_flow_returned(tmp_path, monkeypatch):
    """The demo's two simulators wind down together while the run's Prefect server stops, not one
    after the other once the report is out: by the time the report is printed (after the server's
    stop) both were told to stop, and the demo still ends with its report and exit code."""
    import flows.console.demo as demo

    sims, seen_at_report = [], []
    original_start, original_report = demo.start_demo_backends, cli.end_of_run_report

    def recording_start(output_dir):
        started = original_start(output_dir)
        sims.extend(started[2:])
        return started

    def recording_report(stats, params):
        seen_at_report.append([sim.stopping for sim in sims])
        return original_report(stats, params)

    monkeypatch.setattr(demo, "start_demo_backends", recording_start)
    monkeypatch.setattr(cli, "end_of_run_report", recording_report)
    code = cli.main(["--demo", "--output-dir", str(tmp_path / "demo"), "--no-live"])
    assert code in (0, 1), code  # the simulator fails ~10 % of jobs on purpose: within or past the threshold
    assert len(sims) == 2 and seen_at_report == [[True, True]]
    for sim in sims:  # and they are stopped for good once the command returned
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", sim.port), timeout=2).close()
