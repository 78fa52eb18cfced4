"""A private PostgreSQL cluster for the test session: loopback only, temp folders, stopped by pid.

`PostgresCluster.start()` runs the machine's own binaries (the `postgresql` Debian package; .ci/run
installs it when `initdb`/`pg_ctl` are missing). initdb refuses root, so as root the cluster runs
as the `postgres` user (`runuser`), in folders owned by it. `database()` makes a fresh database per
test; `restart()` is a real `pg_ctl restart` (the store must ride it out).
"""
from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import List, Optional


def find_bin_dir() -> Optional[Path]:
    """The folder holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists() and Path(candidate, "pg_ctl").exists():
            return Path(candidate)
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return Path(os.path.realpath(pg_ctl)).parent
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresCluster:
    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="pg-test-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        self.sockets.mkdir()
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.sockets, "postgres", "postgres")
            os.chmod(self.root, 0o755)

    def _run(self, *args: str, timeout: float = 120) -> None:
        command: List[str] = list(args)
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def _pg_ctl(self, action: str) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.sockets} -c fsync=off -c max_connections=200"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                  "-w", "-t", "90", action)

    def start(self) -> "PostgresCluster":
        self._run(str(self.bin / "initdb"), "-A", "trust", "-U", "postgres", "-D", str(self.data))
        self._pg_ctl("start")
        return self

    def restart(self) -> None:
        self._pg_ctl("restart")

    @property
    def pid(self) -> Optional[int]:
        try:
            return int((self.data / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def database(self, name: str) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}"')
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop the postmaster by its pid (fast shutdown), then remove the folders."""
        pid = self.pid
        if pid:
            try:
                os.kill(pid, signal.SIGINT)
                for _ in range(300):
                    os.kill(pid, 0)
                    import time

                    time.sleep(0.1)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)
