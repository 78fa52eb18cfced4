"""What a run is given and checks before any job is created: the parameter models, backend blocks,
the `--backend` spec, logging in, connecting, and the preflight (which runs without Prefect)."""
