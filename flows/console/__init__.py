"""The command line: `python -m flows` / `openeo-jobs`, the live progress display, and the CLI's own
local Prefect server."""
