"""`python -m flows ...`: the run-jobs command line (same as `python -m flows.run_jobs ...`)."""
from flows.console import command_line

command_line()
