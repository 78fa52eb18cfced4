"""Start a real `prefect server` (and workers) as subprocesses, and stop them again."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

from flows.console.local_server import wait_until_healthy

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(prefect_home: Path, api_url: Optional[str] = None) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
    )
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def stop(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM the process group we started, wait, SIGKILL it on timeout."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


class PrefectServer:
    """`prefect server start` on a free loopback port with its own PREFECT_HOME."""

    def __init__(self, home: Path, startup_timeout: float = 600,  # a bound for hangs (a loaded machine)
                 database_url: Optional[str] = None, api_url: Optional[str] = None):
        """`database_url`: the server's own database (`postgresql+asyncpg://…`); SQLite in `home` by default.
        `api_url`: a server already running (the session's, `prefect_harness`): start none, only the
        commands and processes (workers) of the test, against that one."""
        self.home = home
        self.database_url = database_url
        self.log = open(home / "server.log", "wb")
        self.processes: List[subprocess.Popen] = []
        if api_url is not None:
            self.api_url, self.server = api_url, None
            return
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.server = self.spawn(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)], log=self.log, api=False
        )
        self.wait_healthy(startup_timeout)

    def env(self, **extra: str) -> Dict[str, str]:
        return {**base_env(self.home, self.api_url), **extra}

    def spawn(self, argv: List[str], log=None, api: bool = True, **env: str) -> subprocess.Popen:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=self.env(**env) if api else self.server_env(),
            stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.processes.append(process)
        return process

    def server_env(self) -> Dict[str, str]:
        env = base_env(self.home)
        if self.database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
        return env

    def wait_healthy(self, timeout: float) -> None:
        try:
            wait_until_healthy(self.api_url, self.server, timeout, "prefect server")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {(self.home / 'server.log').read_text()[-2000:]}") from None

    def cli(self, *args: str, timeout: float = 600, **env: str) -> str:  # a bound for hangs (a loaded machine)
        """Run a prefect CLI command against this server; return its output or raise."""
        done = subprocess.run(
            [PREFECT, *args], cwd=ROOT, env=self.env(**env), capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(f"prefect {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def close(self) -> None:
        for process in reversed(self.processes):
            stop(process)
        self.log.close()
