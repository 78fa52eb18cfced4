"""`python -m flows.run_jobs ...` whose job DB is written only when it must be: the intents before
any POST and the final persist; the throttled persists in between are off (1 h apart). What a run
learns after its last intent (e.g. while it stops) then reaches the disk only through the final
persist, so a test can see that it happened."""
import sys

from jobdb.store import JobStore

_open = JobStore.open.__func__
JobStore.open = classmethod(lambda cls, job_db, min_persist_interval=1.0: _open(cls, job_db, 3600.0))

from flows.console.cli import main  # noqa: E402 - after the patch

if __name__ == "__main__":
    sys.exit(main())
