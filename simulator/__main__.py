"""Run the simulator in the foreground: ``python -m simulator --port 8123 --run-time 3``."""
from __future__ import annotations

import argparse
import sys
import threading
from typing import List, Optional

from simulator.config import add_cli_arguments, config_from_args
from simulator.runner import Simulator


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123, help="0 = pick a free port")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    add_cli_arguments(parser)
    ns = parser.parse_args(argv)
    try:
        config = config_from_args(ns)
    except ValueError as e:
        parser.error(str(e))
    sim = Simulator(config=config, port=ns.port, host=ns.host, verbose=ns.verbose).start()
    print(f"openEO simulator listening on {sim.url} (API root {sim.api_url})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
