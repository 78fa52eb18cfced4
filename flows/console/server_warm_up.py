"""The first server process of the CLI's watchdog (`python -m flows.console.local_server
--serve-when-told PORT`, flows/console/local_server.py): it imports Prefect's server modules, builds
the API app and routes one request through it, all without a port or a database, then waits for
the CLI's `start` line (its input passed the checks) and only then runs `prefect server start` in
this warm interpreter. Its stdin closed without that line (input refused, the CLI or the watchdog
gone): it ends unused.
"""
from __future__ import annotations

import sys

START_LINE = b"start\n"  # the CLI's word to a warmed-up server (`LocalServer.start`)
# The modules `prefect server start` imports on its way to answering `/health` (python -X importtime
# of a warm start): its CLI command, the API app, uvicorn, and the collections (prefect-aws) whose
# blocks its start-up hashes to see whether they are registered already.
SERVER_MODULES = ("prefect.cli.server", "prefect.cli._server_utils", "prefect.server.api.server", "uvicorn",
                  "prefect.server.models.block_registration", "prefect.server.database", "aiosqlite")


def serve_when_told(port: int) -> int:
    """A `prefect server start` that imports first and serves once told: warm-up without a server."""
    import importlib

    try:
        for name in SERVER_MODULES:
            importlib.import_module(name)
        import prefect.plugins

        prefect.plugins.load_prefect_collections()  # imports and registers them, as the server's start would
        from prefect.server.api.server import create_app

        # The API app, built as `prefect server start` builds it (no port, no database yet): Prefect
        # caches it by the settings, so the command below takes this one (0.8 CPU-s under load).
        app = create_app(final=True)
        route_once(app.api_app)
    except Exception:  # noqa: BLE001 - a warm-up only: the server's own start does it again, or says what is wrong
        pass
    if sys.stdin.readline().encode() != START_LINE:  # the CLI refused its input, or ended
        return 0
    from prefect.cli import app

    sys.argv = ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    app()  # the same command as `python -m prefect server start ...`, in this interpreter
    return 0


def route_once(api_app) -> None:
    """One request through the API app in this process (ASGI, no port, no database): FastAPI builds
    each included router's route contexts on the first request it routes, ~2 CPU-s for Prefect's
    API, which the server's first real answer (the CLI's `GET /admin/version`) paid after `/health`
    (6-8 s at load 8, bench/README.md)."""
    import asyncio

    import httpx

    async def request() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api_app), base_url="http://warm-up") as client:
            await client.get("/admin/version")

    asyncio.run(request())
