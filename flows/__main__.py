"""`python -m flows ...`: the run-jobs command line (same as `python -m flows.run_jobs ...`).

Its first act, before the command line's own imports and the flags' parsing, is to warm its Prefect
server up (flows/console/local_server.py: a process that imports the server's modules and serves
only once the input is checked), so those imports overlap everything the command does before.
"""
import sys

from flows.console.local_server import OwnServer

own = OwnServer.for_command(sys.argv[1:])
from flows.console.cli import run_command_line  # noqa: E402 - after the warm-up's start, on purpose

run_command_line(own)
