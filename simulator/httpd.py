"""The HTTP server of the simulator: keep-alive connections, request bodies, response writing (stdlib)."""
from __future__ import annotations

import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Tuple

from simulator.server import Response, Router
from simulator.state import SimState


class SimRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries Content-Length
    server: "SimHTTPServer"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by default
        if self.server.verbose:
            super().log_message(format, *args)

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without NODELAY, Nagle + delayed ACK
        # adds ~40 ms to every small keep-alive response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                line = self.rfile.readline()
                n = int(line.split(b";")[0].strip() or b"0", 16)
                if n == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(n))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self) -> None:
        body = self._read_body()
        template, resp = self.server.router.dispatch(self.command, self.path, self.headers, body)
        self.server.router.state.count_request(f"{self.command} {template} {resp.status}")
        self._send(resp)

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = do_HEAD = _handle

    def _send(self, resp: Response) -> None:
        try:
            self._write(resp)
        finally:
            if resp.on_sent is not None:
                resp.on_sent()

    def _write(self, resp: Response) -> None:
        headers = dict(resp.headers)
        payload = b""
        if resp.stream is None:
            if isinstance(resp.body, (dict, list)):
                payload = json.dumps(resp.body).encode()
                headers.setdefault("Content-Type", "application/json")
            elif isinstance(resp.body, bytes):
                payload = resp.body
            if resp.status != 204:
                headers["Content-Length"] = str(len(payload))
        self.send_response(resp.status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD" or resp.status == 204:
            return
        try:
            if resp.stream is not None:
                for chunk in resp.stream:
                    self.wfile.write(chunk)
            elif payload:
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class SimHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client killed mid-request (crash tests) is expected: no traceback on stderr.
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)

    def __init__(self, addr: Tuple[str, int], state: SimState, verbose: bool = False):
        super().__init__(addr, SimRequestHandler)
        host, port = self.server_address[:2]
        self.root_url = f"http://{host}:{port}"
        self.router = Router(state, self.root_url)
        self.verbose = verbose
        self._conns: set = set()
        self._conns_lock = threading.Lock()

    def track(self, conn: socket.socket, add: bool) -> None:
        with self._conns_lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def close_connections(self) -> None:
        """Unblock handler threads idling on keep-alive connections so stop() is prompt."""
        with self._conns_lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
