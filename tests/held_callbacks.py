"""A `start_job` callback whose module import waits until the test lets it go: it holds the command
line inside its input checks (after the flags, before its server is told to serve), so a test can
interrupt it exactly there. The test opens the FIFO named by HOLD_IMPORT_FIFO for writing (which
returns once this import is waiting on it) and closes it to let the import go on."""
import os

with open(os.environ["HOLD_IMPORT_FIFO"], "rb") as fifo:
    fifo.read()  # until the test closes its end

from flows.tiling.demo_callbacks import start_job  # noqa: E402,F401 - the callback itself
