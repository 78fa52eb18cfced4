"""`python -m flows ...`: the run-jobs command line (same as `python -m flows.run_jobs ...`)."""
import sys

from flows.cli import main

sys.exit(main())
