"""Command line for local runs: `python -m flows.run_jobs ...` (or `python -m flows ...`), `--demo`.

Order of work: parse flags, run the Prefect-free preflight checks (one `error: --flag: ...` line
and exit 2 on bad input, in about a second), only then import the flow and start Prefect.
Exit codes: one per outcome, `flows.run_loop.outcomes.RunOutcome` (the README's table).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from flows.console.flags import FLAGS, flow_parameters
from flows.console.parser import BadInput, build_parser
from flows.console.terminal import configure_terminal, end_of_run_report
from flows.run_loop.outcomes import RunOutcome

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def run_command_line(own=None) -> None:
    """Run, then exit with the run's code. `own`: the server `flows.console.command_line` (`python -m
    flows`, `openeo-jobs`) started warming up first thing."""
    exit_process(main(own=own))


def main(argv: Optional[List[str]] = None, flow: Optional[Callable[..., Any]] = None, own=None) -> int:
    """The command line. `flow`: the run-jobs flow object (default: imported after the checks);
    `own`: its server, warming up already (`OwnServer.for_command`; default: warmed up once the
    flags are valid)."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    from flows.console.local_server import OwnServer

    own = own or OwnServer()
    try:
        return checked_run(argv, flow, own, debug)
    except KeyboardInterrupt:  # Ctrl-C while the input is checked (the run's own Ctrl-C is `run`'s)
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return RunOutcome.INTERRUPTED.exit_code
    finally:
        own.stop()  # unused (input refused) or already stopped by the run: the watchdog is gone


def checked_run(argv: Optional[List[str]], flow: Optional[Callable[..., Any]], own, debug: bool) -> int:
    server = None

    def start_prefect() -> None:  # once the offline checks passed, while the backends are checked
        nonlocal server
        own.warm_up()  # (warming up already, unless a check skipped that step)
        server = start_prefect_early(flow, own.server)

    def flags_valid() -> None:  # next: the callback's import, the job DB's read, the backend checks
        own.warm_up()
        if own.server is None:  # PREFECT_API_URL names a server: nothing to warm up but the flow's import
            import_flow_early(flow)

    try:
        args = build_parser().parse_args(argv)
        if args.demo:
            own.warm_up()
            return run_demo(Path(args.output_dir), args, flow, own.server)
        params = flow_parameters(args)
        if not params.get("job_db") or not params.get("backends"):
            raise BadInput("--job-db and at least one --backend are required (or use --demo; see --help)")
        from flows.config.preflight import preflight

        # Bad input is one line: urllib3's retry warnings while a backend is checked would print
        # too once the flow's import (on its thread) has set Prefect's logging up.
        retries_log = logging.getLogger("urllib3.connectionpool")
        level = retries_log.level
        retries_log.setLevel(logging.ERROR)
        try:
            # flags valid: the server (or only the flow's import) warms up while the callback is
            # imported and the job DB read
            preflight(params, after_flags=flags_valid, before_connecting=start_prefect)
        finally:
            retries_log.setLevel(level)
    except Exception as exc:  # noqa: BLE001 - every problem found before the run is bad input
        if server is not None:
            server.stop()
        if type(exc).__name__ == "JobDbLocked":  # not bad input: another run owns the DB (jobdb.JobDbLocked)
            return skipped(exc)
        return bad_input(exc, debug)
    return run(flow, params, args, server if server is not None else own.server)


def start_prefect_early(flow: Optional[Callable[..., Any]], server=None, then: Tuple[str, ...] = ()):
    """Start this run's Prefect server (`server`, warmed up by `OwnServer.warm_up`; None when
    PREFECT_API_URL names one) and import the flow (and with it Prefect) on a thread, both without
    waiting: they overlap the backend checks or the demo's set-up instead of following them.
    `then`: modules the run needs at its end, imported after the flow (`import_flow_early`).
    Returns the server, or None."""
    if server is not None:
        server.start()
    import_flow_early(flow, then)
    return server


def import_flow_early(flow: Optional[Callable[..., Any]], then: Tuple[str, ...] = ()) -> None:
    """Import the flow (and with it Prefect) on a thread, once (`run_jobs_flow` waits for it);
    then, on another thread nobody waits for, the modules `then` (the demo's tile map: matplotlib
    and folium, ~1.5 s at its end under load, imported while the server boots instead)."""
    import threading

    global _import_thread
    if flow is None and _import_thread is None:
        _import_thread = threading.Thread(target=_import_flow, args=(then,), name="import-flow", daemon=True)
        _import_thread.start()


_import_thread = None  # the flow's import warming up (start_prefect_early), if any


def exit_process(code: int) -> None:
    """End the command with `code`, at once once it has reported. Leave without Python's own
    teardown when
    - a bad-input exit comes while the import thread is still importing Prefect: an interpreter
      shutting down under a daemon thread that writes to stderr aborts (exit -6, seen under load);
    - a run has ended: its job DB is persisted and released, its final state recorded, the report
      printed; what is left is Prefect's queued log lines and events (sent here, bounded) and the
      teardown of a thousand modules, seconds on a loaded machine (bench/stops.py: the exit came
      8 s after the run's end; a stop takes <= 3 s, issue 16)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if _import_thread is not None and _import_thread.is_alive():
        os._exit(code)
    if _flow_called:
        from flows.run_loop.owners import send_queued_prefect_calls

        send_queued_prefect_calls(timeout=PREFECT_QUEUE_SECONDS)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


# The CLI sends the run's last queued log lines and events for at most this long before it exits.
PREFECT_QUEUE_SECONDS = 2.0
_flow_called = False  # `run` ran the flow: exit_process may skip the interpreter's teardown


def run_jobs_flow() -> Callable[..., Any]:
    """The run-jobs flow, imported on this thread once the warm-up import (`start_prefect_early`)
    has ended. Until then this thread imports nothing of Prefect: two threads importing Prefect at
    once can meet its circular imports half done ("Failed to initialize plugins: cannot import
    name 'SettingsContext' from partially initialized module 'prefect.context'", printed by 2 of
    4 demos under load)."""
    if _import_thread is not None:
        _import_thread.join()
    from flows.run_jobs import run_jobs

    return run_jobs


def _import_flow(then: Tuple[str, ...] = ()) -> None:
    try:
        import flows.run_jobs  # noqa: F401 - warms the import; `run` imports it again (at once)

        warm_prefect_client()
    except Exception:  # noqa: BLE001 - `run` imports it again and reports what went wrong
        pass
    if then:  # after Prefect's import, never beside it (see `run_jobs_flow`)
        import threading

        threading.Thread(target=_import_quietly, args=(then,), name="import-report", daemon=True).start()


def _import_quietly(modules: Tuple[str, ...]) -> None:
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a warm-up only: the code that needs it imports it and says what is wrong
            pass


def warm_prefect_client() -> None:
    """What Prefect's engine does lazily on its way to the flow run, done here while the server
    boots: it imports FastAPI to serialize the parameters and builds pydantic's validators of the
    API's models on their first answer (3 + 3 s at load 30 between the server's first answer and
    the flow's start, bench/startup.py). Public pydantic API; the models are Prefect's client schemas."""
    import fastapi.encoders  # noqa: F401 - prefect.flows.Flow.serialize_parameters
    from prefect.client.schemas.objects import Flow, FlowRun, State, TaskRun

    for model in (Flow, FlowRun, TaskRun, State):
        model.model_rebuild()


def skipped(exc: BaseException) -> int:
    """Another live run owns the job DB: one line, nothing changed, the "skipped" code."""
    describe = getattr(exc, "describe", None)
    print(f"skipped: {describe() if describe else exc}", file=sys.stderr)
    return RunOutcome.SKIPPED.exit_code


def bad_input(exc: BaseException, debug: bool) -> int:
    from flows.config.params import SetupError

    if debug:
        traceback.print_exception(exc)
    if isinstance(exc, SetupError) and exc.parameter:
        print(f"error: {FLAGS.get(exc.parameter, exc.parameter)}: {exc}", file=sys.stderr)
    elif isinstance(exc, (SetupError, BadInput)):
        print(f"error: {exc}", file=sys.stderr)
    else:
        print(f"error: {type(exc).__name__}: {exc}" + ("" if debug else " (--debug shows the traceback)"),
              file=sys.stderr)
    return RunOutcome.BAD_INPUT.exit_code


def run(flow: Optional[Callable[..., Any]], params: Dict[str, Any], args: argparse.Namespace, server=None,
        flow_returned: Callable[[], None] = lambda: None) -> int:
    """Run the flow in this process (against its own local Prefect server, `server` if started
    already), then report. `flow_returned` is called as soon as the flow returned, before the server's
    stop (the demo's simulators stop meanwhile)."""
    if flow is None:
        flow = run_jobs_flow()  # first: the imports below import Prefect too
    from flows.config.params import SetupError
    from flows.console.progress_display import prefect_console, stop_live_display, use_live_display
    from jobdb import JobDbLocked

    configure_terminal(verbose=args.verbose)
    if not args.no_live and prefect_console().is_terminal:
        use_live_display()
    started = time.monotonic()
    global _flow_called
    try:
        with prefect_api(server):
            _flow_called = True  # from here on exit_process skips the interpreter's teardown
            state = flow(**params, return_state=True)
            flow_returned()
    except KeyboardInterrupt:  # a second Ctrl-C: the run stopped at once
        stop_live_display()
        print(f"\ninterrupted after {time.monotonic() - started:.0f} s; the job DB keeps every job started "
              "so far: run the same command again to resume", file=sys.stderr)
        return RunOutcome.INTERRUPTED.exit_code
    finally:
        stop_live_display()
    result = state.result(raise_on_failure=False)
    stats = getattr(result, "stats", None) if isinstance(result, BaseException) else result
    if isinstance(result, JobDbLocked):  # the lock was taken between the preflight and the flow
        return skipped(result)
    if isinstance(result, SetupError):
        return bad_input(result, args.debug)
    outcome = RunOutcome.of_state(state)
    if outcome is RunOutcome.SKIPPED:
        print(state.message, file=sys.stderr)
        return outcome.exit_code
    if isinstance(stats, dict):
        print(json.dumps(stats, indent=2, default=str) if args.json else end_of_run_report(stats, params))
    elif isinstance(result, BaseException):
        print(f"error: the run failed: {type(result).__name__}: {result}", file=sys.stderr)
        return RunOutcome.FAILED.exit_code
    message = state.message or ""
    if outcome is RunOutcome.INTERRUPTED and "resume" not in message:  # the flow wound down (Ctrl-C, SIGTERM)
        message = f"run cancelled: {message or 'interrupted'}; run the same command again to resume"
    elif outcome is RunOutcome.FAILED:
        message = f"run failed: {message}"
    if message:
        print(message, file=sys.stderr)
    return outcome.exit_code


@contextlib.contextmanager
def prefect_api(server=None) -> Iterator[None]:
    """A Prefect server for this run in its own session (flows/console/local_server.py; `server` when it
    was started early), unless the user points PREFECT_API_URL at one: Ctrl-C then reaches only
    this process, which records the run's final state before it exits, and no server outlives the
    command (not even after a SIGKILL)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():  # e.g. from a Prefect profile, which the early start could not see
        if server is not None:
            server.stop()
        yield
        return
    from flows.console.local_server import local_prefect_server

    with local_prefect_server(server=server) as api_url, temporary_settings(updates={PREFECT_API_URL: api_url}):
        try:
            yield
        finally:
            from flows.run_loop.owners import send_queued_prefect_calls

            # the run's last log lines and events, while the server is still there
            send_queued_prefect_calls(timeout=PREFECT_QUEUE_SECONDS)


# What the demo's tile map imports at the run's end (flows/report/tile_map.py: PNG and HTML map).
TILE_MAP_MODULES = ("matplotlib.figure", "matplotlib.backends.backend_agg", "matplotlib.collections", "folium")


def run_demo(output_dir: Path, args: argparse.Namespace, flow: Optional[Callable[..., Any]], server=None) -> int:
    """Two simulated backends, a small tile grid x 2 years, the real flow; prints a report."""
    # boots while the simulators and the grid are made (`main` stops it)
    start_prefect_early(flow, server, then=TILE_MAP_MODULES)
    from flows.console.demo import accepted_parameters, demo_parameters, start_demo_backends

    job_db, config, sim_a, sim_b = start_demo_backends(output_dir)
    with sim_a, sim_b:
        params = demo_parameters(job_db, config, (sim_a, sim_b))  # while the flow's import warms up
        flow = run_jobs_flow() if flow is None else flow
        accepted = accepted_parameters(flow)  # the demo passes the newer ones only when the flow has them
        return run(flow, {k: v for k, v in params.items() if k in accepted}, args, server,
                   flow_returned=lambda: (sim_a.request_stop(), sim_b.request_stop()))


if __name__ == "__main__":
    sys.exit(main())
