"""`python -m flows ...`: the run-jobs command line (same as `python -m flows.run_jobs ...`)."""
from flows.console.cli import run_command_line

run_command_line()
