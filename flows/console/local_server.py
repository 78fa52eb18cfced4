"""A Prefect server for one CLI run, in its own session, that ends when the CLI ends.

Prefect's temporary server is started in the CLI's process group: a terminal's Ctrl-C reaches it
too and kills it first, so the interrupted run can no longer record its final state (it stays
`Running`), and a SIGKILLed CLI leaves the server behind as an orphan. This module starts
`prefect server start` (the public command, same `PREFECT_HOME` database) under a small watchdog
in a new session: Ctrl-C reaches only the CLI, which winds down and records `Cancelled`; the
watchdog restarts the server if it dies, and stops it as soon as the CLI's end of a pipe closes —
on a normal exit, an exception or a SIGKILL alike.

The server's start is mostly imports (bench/README.md, "Start-up of the command line"), so the
CLI spawns the watchdog first thing (`LocalServer(when_told=True)`), before its own imports and
checks: the watchdog's first server process imports Prefect's server modules and then waits,
bound to no port and touching no database, until the CLI's input checks have passed and it says
`start` (`LocalServer.start`); then it runs `prefect server start` in the warm interpreter. Input
refused before that ends the warm-up unused: no server ever started.

Run as `python -m flows.console.local_server PORT [--when-told]`: the watchdog itself (stdin = the
pipe from the CLI); `python -m flows.console.local_server --serve-when-told PORT`: its first server.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

from flows.console.server_warm_up import START_LINE, serve_when_told

# A stopping server gets this long to finish its work (its event persister's last batch) before
# it is killed: the command's exit waits for it (a stop takes <= 3 s, bench/stops.py).
SERVER_STOP_SECONDS = 2.0
# Between `/health` probes of a starting server: each probe is a loopback GET refused (port not yet
# bound) or answered in ~1 ms, and every run's first job waits for the first 200 (a 0.2-s step cost
# 0.1 s on average of each start-up).
HEALTH_POLL_SECONDS = 0.05
STARTUP_TIMEOUT_SECONDS = 300.0  # a fresh PREFECT_HOME on a loaded machine took 106 s (migrations)
# Leases of Prefect concurrency limits (an operator's tag limit on `openeo-backend:<name>`) kept
# in files under PREFECT_HOME instead of the server's memory: they survive a server restart and
# the server's repossessor frees them when they expire (60 s after a killed run stopped renewing).
# In memory, a restart forgets the lease but not the slot it holds: the slot stays taken for good.
LEASE_STORAGE_SETTING = "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"
FILE_LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"


def server_env(environ: Optional[dict] = None) -> dict:
    """The environment of the CLI's own server: no analytics, leases on disk (unless set otherwise,
    e.g. to prefect-redis's lease storage)."""
    env = dict(os.environ if environ is None else environ)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault(LEASE_STORAGE_SETTING, FILE_LEASE_STORAGE)
    return env


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(api_url: str, process: subprocess.Popen, timeout: float, what: str) -> None:
    """Until the server answers `/health`; RuntimeError if `process` exits or `timeout` passes."""
    import httpx  # here, not at the top: the watchdog process (this module's main) never needs it

    deadline = time.monotonic() + timeout
    # One client for all the probes: `httpx.get` builds a client, and with it an SSL context from
    # certifi's bundle, per call (0.3-1 s of CPU each on a loaded machine, taken from the server's start).
    with httpx.Client(timeout=2) as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{what} exited at start (code {process.returncode})")
            try:
                if client.get(f"{api_url}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not answer within {timeout:.0f} s")
            time.sleep(HEALTH_POLL_SECONDS)  # polling another process's startup; there is no event to wait on


class LocalServer:
    """The watchdog + server of one CLI run. Starting returns at once, so the CLI checks the
    backends and imports Prefect while the server boots (its ~4 s warm start was the larger part
    of a run's fixed cost; bench/startup.py); `wait_until_up()` then waits for `/health`.

    `when_told=True`: the server's interpreter imports its modules now but serves only after
    `start()` (the CLI's checks passed); `stop()` before that ends it unused."""

    def __init__(self, when_told: bool = False) -> None:
        self.port = free_port()
        env = server_env()
        self.watchdog = subprocess.Popen(
            [sys.executable, "-m", "flows.console.local_server", str(self.port)] + (["--when-told"] if when_told else []),
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, env=env,
        )
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.started = not when_told

    def start(self) -> None:
        """Let the warmed-up server serve (at once if it was started without `when_told`)."""
        if not self.started:
            self.started = True
            try:
                self.watchdog.stdin.write(START_LINE)
                self.watchdog.stdin.flush()
            except (BrokenPipeError, ValueError):  # the watchdog is gone: wait_until_up says so
                pass

    def wait_until_up(self, timeout: float = STARTUP_TIMEOUT_SECONDS) -> str:
        self.start()
        wait_until_healthy(self.api_url, self.watchdog, timeout, "the local Prefect server")
        return self.api_url

    def stop(self) -> None:
        if not self.started:  # only warming up: no port, no database, nothing to wind down
            if self.watchdog.poll() is None:  # not reaped yet: its process group is still ours to end
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.watchdog.pid, signal.SIGKILL)  # its session: the watchdog and its server's interpreter
            self.watchdog.stdin.close()
            self.watchdog.wait(5)
            return
        if self.watchdog.stdin is not None and not self.watchdog.stdin.closed:
            self.watchdog.stdin.close()  # the watchdog stops the server
        try:
            self.watchdog.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.watchdog.pid, signal.SIGKILL)
            self.watchdog.wait(5)


class OwnServer:
    """The CLI run's own Prefect server (none when PREFECT_API_URL names one). It warms up
    (`LocalServer(when_told=True)`: imports, no port, no database) from the command's first moment
    (`for_command`, before the CLI imports its own modules and parses the flags) while the CLI
    checks its input, and serves once the CLI's `start_prefect_early` (flows/console/cli.py) says so.
    Its imports (~9 CPU-s) are the longest part of the way to the first job (bench/README.md)."""

    def __init__(self) -> None:
        self.server = None
        self.decided = False  # whether PREFECT_API_URL names a server was asked once, and kept

    @classmethod
    def for_command(cls, argv: list) -> "OwnServer":
        """The command line's first act: warm its server up now, unless it only prints its help."""
        own = cls()
        if not {"-h", "--help"} & set(argv):
            own.warm_up()
        return own

    def warm_up(self) -> None:
        # Asked once: asking again once the flow's import thread is importing Prefect would wait
        # for that import (`api_url_configured` reads Prefect's settings then; 1.3 s at load 6).
        if not self.decided:
            self.decided = True
            if not api_url_configured():
                self.server = LocalServer(when_told=True)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


@contextlib.contextmanager
def local_prefect_server(timeout: float = STARTUP_TIMEOUT_SECONDS, server: Optional[LocalServer] = None
                         ) -> Iterator[str]:
    """Start the watchdog + server (or take `server`, started earlier), wait until healthy, yield
    the API URL, stop it afterwards."""
    server = server or LocalServer()
    try:
        yield server.wait_until_up(timeout)
    finally:
        server.stop()


def _watch(port: int, when_told: bool = False) -> int:
    """Keep `prefect server start` up until stdin closes (the CLI ended), then stop it. A server
    that dies meanwhile (killed, crashed) is started again on the same port and database: the
    run goes on without its API for those seconds and catches up. `when_told`: the first server
    imports its modules at once but serves only once the CLI writes `START_LINE`."""
    ended, told, news = threading.Event(), threading.Event(), threading.Event()

    def wait_for_eof() -> None:
        seen = b""
        try:
            while chunk := os.read(sys.stdin.fileno(), 1024):  # blocks until the CLI closes the pipe or dies
                seen += chunk
                if START_LINE in seen:
                    told.set()
                    news.set()
        except OSError:
            pass
        ended.set()
        news.set()

    # The UI in a browser calls the API at PREFECT_UI_API_URL, which defaults to port 4200, not --port.
    env = {**server_env(), "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api"}

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )

    def start_when_told() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "flows.console.local_server", "--serve-when-told", str(port)],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)

    def on_sigterm(*_) -> None:
        ended.set()
        news.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    threading.Thread(target=wait_for_eof, daemon=True).start()
    server = start_when_told() if when_told else start()
    try:
        if when_told:
            news.wait()
            if told.is_set() and not ended.is_set():
                try:
                    server.stdin.write(START_LINE)
                    server.stdin.close()
                except OSError:  # it died warming up: the loop below starts a plain `prefect server start`
                    pass
        while not ended.wait(1.0):
            if server.poll() is not None:
                server = start()
    finally:
        server.terminate()
        try:  # the CLI waits for this; the run's state, logs and events are in (SQLite survives a kill)
            server.wait(SERVER_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
    return 0


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[0] == "--serve-when-told":
        return serve_when_told(int(argv[1]))
    return _watch(int(argv[0]), when_told="--when-told" in argv[1:])


def api_url_configured() -> bool:
    """Whether PREFECT_API_URL names a server, without importing Prefect when it is not imported yet
    (environment, then the active profile of profiles.toml; `prefect_api` asks Prefect itself later)."""
    if "prefect.settings" in sys.modules:
        from prefect.settings import PREFECT_API_URL

        return bool(PREFECT_API_URL.value())
    if os.environ.get("PREFECT_API_URL"):
        return True
    try:
        import tomllib
    except ImportError:  # Python 3.10: Prefect itself will tell (`prefect_api`)
        return False
    home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml")).expanduser()
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return False
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active", "ephemeral")
    return bool(profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL"))


if __name__ == "__main__":
    sys.exit(main())
