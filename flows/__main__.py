"""`python -m flows ...`: the run-jobs command line (same as `python -m flows.run_jobs ...`)."""
from flows.cli import exit_process, main

exit_process(main())
