"""The command line's parser: its flags (the flow's from `RunParameters`, flows/console/flags.py;
the command's own), the help with its examples and exit codes, and one-line errors."""
from __future__ import annotations

import argparse

from flows.console.flags import add_flow_flags


EXAMPLES = """\
examples:
  python -m flows.run_jobs --demo
  export OPENEO_PASSWORD=...
  python -m flows.run_jobs --job-db jobs.parquet \\
      --backend cdse=https://openeo.dataspace.copernicus.eu,parallel_jobs=4,user=alice,password_env=OPENEO_PASSWORD \\
      --start-job mypackage.jobs:start_job --poll-interval 60

exit codes: 0 all done, 1 failed beyond --failure-threshold, 2 bad input, 3 stopped with work left
  (time up, no backend accepts, repeated failures: run again to continue), 75 skipped (another run
  owns the job DB), 130 interrupted (run again to resume)
"""


class BadInput(Exception):
    """A flag value the command line itself rejects (argparse), reported in one line."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown (where there is one worth showing), the examples epilog kept as written."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=32, width=100)

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, [], {}):
            return action.help or ""
        return super()._get_help_string(action)


class OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message and exits; we want one line
        # "argument --backend: --backend 'x': ..." -> "--backend 'x': ..."; "argument --x: ..." -> "--x: ..."
        head, sep, rest = message.partition(": ")
        if sep and head.startswith("argument "):
            flag = head[len("argument "):]
            message = rest if rest.startswith(flag) else f"{flag}: {rest}"
        raise BadInput(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="python -m flows.run_jobs",
        description="Run one openEO batch job per job DB row, as a Prefect flow.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    add = parser.add_argument
    add("--demo", action="store_true", help="start two simulated backends and run a small tile grid x 2 years")
    add("--output-dir", default="demo-output", metavar="DIR", help="--demo only: where the job DB and results go")
    add_flow_flags(parser)  # one per flow parameter, from its one home (flows/config/run_parameters.py)
    add("--json", action="store_true", help="print the full run statistics as JSON instead of the short report")
    add("--no-live", action="store_true", help="periodic progress lines instead of the live table on a terminal")
    add("--verbose", action="store_true", help="also show Prefect's task-run log lines ('Finished in state ...')")
    add("--debug", action="store_true", help="show tracebacks of errors")
    return parser
