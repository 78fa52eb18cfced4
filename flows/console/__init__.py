"""The command line: `python -m flows` / `openeo-jobs`, the live progress display, and the CLI's own
local Prefect server."""


def command_line() -> None:
    """`python -m flows ...` and the console script `openeo-jobs`. Its first act, before the command
    line's own imports and the flags' parsing, is to warm its Prefect server up (local_server.py: a
    process that imports the server's modules and serves only once the input is checked), so those
    imports overlap everything the command does before."""
    import signal
    import sys

    # Ctrl-C is the command's own in every phase, as the run's interrupt handling makes it later: a
    # process started with SIGINT ignored (a parent that ignores it; Python then installs no handler
    # of its own) would otherwise sit through a Ctrl-C in its input checks
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from flows.console.local_server import OwnServer

    own = OwnServer.for_command(sys.argv[1:])
    from flows.console.cli import run_command_line

    run_command_line(own)
