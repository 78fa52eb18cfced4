"""Python facade: start/stop a simulator (uvicorn in a thread, plus a lifecycle ticker) and steer it."""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Tuple

import uvicorn

from simulator.app import build_app
from simulator.config import SimulatorConfig
from simulator.messages import API_PREFIX, Site
from simulator.state import SimState


# Event loops (threads) accepting on the one port, like uvicorn's workers but as threads. On a loaded
# machine the kernel shares CPU per thread: one loop thread got ~1/load of a core and served 2-4x fewer
# requests than four (bench/simulator_rps.py at load ~30); the GIL still runs one at a time.
EVENT_LOOPS = 4
WORKER_THREADS = 1000  # requests handled (or held at a gate) at once


class _Server(uvicorn.Server):
    """uvicorn's server, told to stop by an event (its own loop polls a flag every 0.1 s)."""

    def __init__(self, config: uvicorn.Config):
        super().__init__(config)
        self.ready = threading.Event()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stopping: Optional[asyncio.Event] = None

    async def main_loop(self) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        self.ready.set()
        await self._stopping.wait()

    def request_stop(self) -> None:
        self.should_exit = True
        if self._loop is not None and self._stopping is not None:
            try:
                self._loop.call_soon_threadsafe(self._stopping.set)
            except RuntimeError:  # the loop is already closed
                pass


def _listening_socket(host: str, port: int) -> socket.socket:
    """Bound and listening before the server thread runs, so the port is known (port 0 = a free one) and
    early clients wait in the backlog. The protocol is named: asyncio turns Nagle off (TCP_NODELAY) only on
    sockets that say IPPROTO_TCP, and headers and body go out in separate writes, so without it Nagle and
    delayed ACKs add ~40 ms to every small keep-alive answer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


class Simulator:
    """A running simulated openEO backend (uvicorn server threads + lifecycle ticker thread)."""

    def __init__(self, config: Optional[SimulatorConfig] = None, port: int = 0, host: str = "127.0.0.1",
                 tick_interval: float = 0.02, verbose: bool = False):
        self.config = config or SimulatorConfig()
        self.state = SimState(self.config)
        self._socket = _listening_socket(host, port)
        self.port: int = self._socket.getsockname()[1]
        self.url: str = f"http://{host}:{self.port}"
        self.api_url: str = self.url + API_PREFIX + "/"
        # Threads are made only when needed; held (gates) and slow (latency knobs) requests keep one each.
        self._workers = ThreadPoolExecutor(max_workers=WORKER_THREADS, thread_name_prefix=f"sim-{self.port}")
        app = build_app(Site(self.state, self.url), self._workers)
        self._servers = [_Server(uvicorn.Config(
            app,
            # httptools (C) parses HTTP at about half the CPU of h11 (bench/simulator_rps.py); "auto" falls
            # back to h11 where it is missing.
            http="auto", loop="asyncio", lifespan="on", proxy_headers=False, server_header=False, date_header=False,
            log_config=None, log_level="info" if verbose else "warning", access_log=verbose,
            # Clients keep connections open between polls; a real backend's proxy keeps them for minutes, and
            # closing one just as a client reuses it would fail that client's request.
            timeout_keep_alive=3600,
            timeout_graceful_shutdown=1,  # answers still being written (a slow asset) get this long at stop
        )) for _ in range(EVENT_LOOPS)]
        self._tick_interval = tick_interval
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self._running = False

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "Simulator":
        if self._running:
            return self
        # Each loop accepts from its own duplicate of the listening socket (and closes only that at stop).
        serving = [threading.Thread(target=server.run, kwargs={"sockets": [self._socket.dup()]},
                                    name=f"sim-http-{self.port}-{i}", daemon=True)
                   for i, server in enumerate(self._servers)]
        tick = threading.Thread(target=self._tick, name=f"sim-tick-{self.port}", daemon=True)
        self._threads = serving + [tick]
        for t in self._threads:
            t.start()
        self._running = True
        for server, thread in zip(self._servers, serving):
            while not server.ready.wait(0.05):
                if not thread.is_alive():
                    raise RuntimeError(f"the simulator's server on port {self.port} did not start")
        return self

    def _tick(self) -> None:
        # Drives transitions even when nobody polls (requests also advance lazily).
        while not self._stop.wait(self._tick_interval):
            self.state.advance()

    def request_stop(self) -> None:
        """Tell the server loops and the ticker to stop, without waiting for them: several simulators
        (the demo's two) wind down together, each loop's last 0.1-s poll and graceful close at once,
        and `stop()` then only joins."""
        self._stop.set()
        self.state.gates.open()  # held requests must not keep the server waiting for them
        for server in self._servers:
            server.request_stop()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Stop serving, close idle keep-alive connections and join the threads."""
        if not self._running:
            self._socket.close()
            return
        self._running = False
        self.request_stop()
        for t in self._threads:
            t.join(timeout=10)
        self._workers.shutdown(wait=False, cancel_futures=True)
        self._socket.close()

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

    def connections(self) -> List[socket.socket]:
        """The sockets of the client connections open now (keep-alive ones included)."""
        return [c.transport.get_extra_info("socket") for server in self._servers
                for c in list(server.server_state.connections) if getattr(c, "transport", None) is not None]

    def jobs(self) -> List[Dict[str, Any]]:
        """Every job as the backend sees it now: id, user, title, status, and when (time.monotonic) it
        was created, started running and ended (None: not yet): a test reads overlaps from these, exact
        whatever the load, instead of sampling the listing."""
        with self.state.lock:
            self.state.advance()
            return [{"id": j.id, "user": j.user, "title": j.title, "status": j.status, "created_at": j.created_at,
                     "started_at": j.started_at, "ended_at": j.ended_at}
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
