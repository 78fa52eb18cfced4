"""Run the simulator in the foreground: ``python -m simulator --port 8123 --run-time 3``."""
from __future__ import annotations

import argparse
import logging
import sys
import threading
from typing import List, Optional

from simulator.config import SimulatorConfig, add_cli_arguments, config_from_args
from simulator.runner import Simulator


def accepted_credentials(config: SimulatorConfig) -> str:
    """One line saying how a client may log in (the default password is shown: it is a test value)."""
    ways = []
    if config.basic_auth:
        shown = repr(config.password) if config.password == SimulatorConfig().password else "as given by --password"
        ways.append(f"HTTP Basic (any user name, password {shown})")
    if config.oidc_issuer:
        client = f", default client {config.oidc_default_client_id!r}" if config.oidc_default_client_id else ""
        ways.append(f"OIDC bearer tokens of {config.oidc_issuer} (provider id {config.oidc_provider_id!r}{client})")
    if config.static_token:
        ways.append(f"the static bearer token given by --static-token (user {config.static_token_user!r})")
    return "accepts: " + ("; ".join(ways) if ways else "no credentials (enable --basic-auth or --oidc-issuer)")


CONTROL_ENDPOINTS = """\
control endpoints (never faulted, no login; change a running simulator from a test or a shell):
  GET   /_sim/config     every knob (the options above), as JSON
  PATCH /_sim/config     change knobs while it runs, e.g. {"p_error": 0.5, "run_time": 10}
  GET   /_sim/counters   requests per route, jobs per status, faults injected, peak active jobs, ...
  POST  /_sim/reset      forget all jobs and counters (logins stay valid)
  POST  /_sim/outage     {"seconds": 30}: every API request answers 503 for that long
  GET   /_sim/gates      requests held per route
  POST  /_sim/gates      {"close": ["POST /jobs"]} holds every new request of those 'METHOD /template'
                         routes until {"open": ["POST /jobs"]} ({"open": []}: all): a held create
                         makes its job when let go, after the client may have timed out
example:
  curl -X POST -d '{"seconds": 30}' http://127.0.0.1:8123/_sim/outage
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulator", description=__doc__, epilog=CONTROL_ENDPOINTS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8123, help="0 = pick a free port")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    add_cli_arguments(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        config = config_from_args(ns)
    except ValueError as e:
        parser.error(str(e))
    if ns.verbose:  # uvicorn's access log, one line a request
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sim = Simulator(config=config, port=ns.port, host=ns.host, verbose=ns.verbose).start()
    print(f"openEO simulator listening on {sim.url} (API root {sim.api_url})", flush=True)
    print(accepted_credentials(config), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
