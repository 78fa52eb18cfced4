"""Python facade: start/stop a simulator in background threads and steer it."""
from __future__ import annotations

import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from simulator.config import SimulatorConfig
from simulator.httpd import SimHTTPServer
from simulator.server import API_PREFIX
from simulator.state import SimState


class Simulator:
    """A running simulated openEO backend (HTTP server thread + lifecycle ticker thread)."""

    def __init__(self, config: Optional[SimulatorConfig] = None, port: int = 0, host: str = "127.0.0.1",
                 tick_interval: float = 0.02, verbose: bool = False):
        self.config = config or SimulatorConfig()
        self.state = SimState(self.config)
        self._server = SimHTTPServer((host, port), self.state, verbose=verbose)
        self.url: str = self._server.root_url
        self.api_url: str = self.url + API_PREFIX + "/"
        self.port: int = self._server.server_address[1]
        self._tick_interval = tick_interval
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self._running = False

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "Simulator":
        if self._running:
            return self
        serve = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                 name=f"sim-http-{self.port}", daemon=True)
        tick = threading.Thread(target=self._tick, name=f"sim-tick-{self.port}", daemon=True)
        self._threads = [serve, tick]
        for t in self._threads:
            t.start()
        self._running = True
        return self

    def _tick(self) -> None:
        # Drives transitions even when nobody polls (requests also advance lazily).
        while not self._stop.wait(self._tick_interval):
            self.state.advance()

    def stop(self) -> None:
        """Shut down the server, close idle keep-alive connections and join threads."""
        if not self._running:
            self._server.server_close()
            return
        self._running = False
        self._stop.set()
        self.state.gates.open()  # held requests must not keep handler threads alive
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> "Simulator":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -------------------------------------------------------------- control
    def configure(self, **knobs: Any) -> None:
        """Change knobs at run time, e.g. ``sim.configure(p_error=0.1)``."""
        self.state.configure(**knobs)

    def counters(self) -> Dict[str, Any]:
        return self.state.counters()

    def reset(self) -> None:
        """Forget all jobs and counters (users/tokens stay valid)."""
        self.state.reset()

    def outage(self, seconds: float) -> None:
        """Answer every (non-control) request with 503 for the next `seconds`."""
        self.state.configure(outage_until=time.time() + seconds)

    @property
    def gates(self):
        """Hold requests of chosen routes until released (simulator/gates.py): `sim.gates.close('POST /jobs')`."""
        return self.state.gates

    def jobs(self) -> List[Dict[str, Any]]:
        """Every job as the backend sees it now: id, user, title, status."""
        with self.state.lock:
            self.state.advance()
            return [{"id": j.id, "user": j.user, "title": j.title, "status": j.status}
                    for j in self.state.jobs.values()]

    @property
    def users(self) -> Dict[str, int]:
        """Users that authenticated so far (username -> number of logins)."""
        with self.state.lock:
            return dict(self.state.users)

    @property
    def asset_requests(self) -> List[Tuple[str, bool]]:
        """(path, had Authorization header) for every asset download served."""
        with self.state.lock:
            return list(self.state.asset_requests)

    def __repr__(self) -> str:
        return f"<Simulator {self.url} running={self._running}>"


def start_simulator(config: Optional[SimulatorConfig] = None, port: int = 0, **kwargs: Any) -> Simulator:
    """Start a simulator on a free loopback port (port=0) in daemon threads and return it."""
    return Simulator(config=config, port=port, **kwargs).start()
