"""`python -m jobdb copy SRC DST [--campaign NAME]` (jobdb/copy.py)."""
import sys

from jobdb.copy import main

sys.exit(main())
