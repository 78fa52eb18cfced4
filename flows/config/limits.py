"""Limits an operator changes while a campaign runs, and the tags Prefect users filter by.

Overrides are Prefect Variables, one per backend and limit, edited in the UI (Variables page) or
with `prefect variable set openeo-parallel-jobs-cdse 1 --overwrite`:

    openeo-parallel-jobs-<backend>          jobs active at once on the backend (0: start no new jobs)
    openeo-max-starts-per-minute-<backend>  job starts per minute (0: start no new jobs)
    openeo-max-parallel-starts-<backend>    start tasks in flight at once (0: start no new jobs)

`<backend>` is the backend's name in lowercase with dots as dashes (Variable names allow only
lowercase letters, digits, dashes and underscores). Deleting the Variable goes back to the
configured value (parameter or block).

The flow only *reads* them: no lease, no slot, nothing a crash or a Prefect restart could strand.
A background thread reads all of them in one API call once per poll interval and keeps the last
values it got, so the cycle never waits on the Prefect API and an outage changes nothing. When a
value changes, the cycle is woken and the next decision uses it.
"""
from __future__ import annotations

import contextvars
import logging
import re
import threading
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from flows.config.params import BackendConfig
from flows.rules.plan import BackendPolicy

# How long a run waits at its start for the first read of the overrides, so that a campaign
# resumed while an operator holds a backend at 0 starts nothing there (the API is up: it just
# created the flow run).
FIRST_READ_SECONDS = 10.0
# limit -> the middle of its Variable name
KNOBS = {"parallel_jobs": "parallel-jobs", "max_starts_per_minute": "max-starts-per-minute",
         "max_parallel_starts": "max-parallel-starts"}


class BadOverride(ValueError):
    """A Variable's value is not a non-negative number; the configured limit stays in force."""


def backend_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "-", name.lower())


def variable_name(knob: str, backend: str) -> str:
    return f"openeo-{KNOBS[knob]}-{backend_slug(backend)}"


# --- tags ------------------------------------------------------------------------------------
def task_tags(backend: str, account: str) -> Tuple[str, ...]:
    """Tags of every task run of a backend. `account`: the connection's account identity
    (`ManagedConnection.account`, `origin~user`, tasks/accounts/identity.py: holds no secret).
    A tag concurrency limit on `openeo-backend:<name>` caps its start, poll and download task
    runs together."""
    return ("openeo", f"openeo-backend:{backend}", f"openeo-account:{account}")


def campaign_tags(campaign: str) -> Tuple[str, ...]:
    return ("openeo", f"openeo-campaign:{campaign}")


def tag_flow_run(flow_run_id: str, tags: Iterable[str]) -> None:
    """Add `tags` to a flow run's own (a deployment's run is created before it knows its campaign)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        current = client.read_flow_run(flow_run_id).tags or []
        client.update_flow_run(flow_run_id, tags=list(dict.fromkeys([*current, *tags])))


def pace_starts(connections: Mapping[str, Any]) -> Callable[[str, Optional[float]], None]:
    """Where a start-rate override goes: the start rate is paced per account in the connection
    (tasks/accounts/pacing.py), so every backend name of that account in this process follows."""
    def set_rate(backend: str, rate: Optional[float]) -> None:
        pacer = getattr(connections.get(backend), "pacer", None)
        if pacer is not None:
            pacer.set_max_starts_per_minute(rate)
    return set_rate


# --- overrides -------------------------------------------------------------------------------
@dataclass(frozen=True)
class LimitInForce:
    value: Optional[float]  # None: off
    source: str  # "parameter", "block <name>" or "variable <name>"


def parse_override(raw: Any) -> float:
    """A Variable's value as a limit: a number >= 0 (JSON number or a string of one)."""
    try:
        value = float(str(raw).strip()) if isinstance(raw, str) else float(raw)
    except (TypeError, ValueError):
        raise BadOverride(f"{raw!r} is not a number") from None
    if isinstance(raw, bool) or value != value or value < 0:
        raise BadOverride(f"{raw!r} is not a number >= 0")
    return value


def read_variables(names: Iterable[str]) -> Dict[str, Any]:
    """The values of those Variables that exist, in one API call."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        response = client.request("POST", "/variables/filter",
                                  json={"variables": {"name": {"any_": sorted(names)}}, "limit": 200})
    return {v["name"]: v["value"] for v in response.json()}


class LimitOverrides:
    """The limits in force per backend: configured, or overridden by a Prefect Variable."""

    def __init__(self, backends: Mapping[str, BackendConfig], sources: Mapping[str, str], interval: float,
                 logger: logging.Logger, on_change: Callable[[], None] = lambda: None,
                 on_rate: Callable[[str, Optional[float]], None] = lambda backend, rate: None,
                 read: Callable[[Iterable[str]], Dict[str, Any]] = read_variables):
        self.configured = {name: {knob: getattr(b, knob) for knob in KNOBS} for name, b in backends.items()}
        self.sources = {name: sources.get(name, "parameter") for name in backends}
        self.names = {variable_name(knob, name): (name, knob) for name in backends for knob in KNOBS}
        self.interval = interval
        self.logger = logger
        self.on_change = on_change
        self.on_rate = on_rate  # the start rate is paced in the connection, not by the scheduler
        self.read = read
        self.overrides: Dict[Tuple[str, str], float] = {}  # (backend, knob) -> value; replaced, never mutated
        self.reads = 0
        self.failed_reads = 0
        self._complaints: Dict[str, str] = {}
        self._untold: List[str] = []  # changes read but not yet used by a decision (logged by `policies`)
        self._swap = threading.Lock()
        self._stop = threading.Event()
        self._first = threading.Event()
        context = contextvars.copy_context()  # the flow's Prefect settings and client context
        self._thread = threading.Thread(target=context.run, args=(self._loop,), name="limit-overrides", daemon=True)
        self._thread.start()

    def wait_first_read(self, timeout: float) -> bool:
        """For a campaign that must start under the operator's limits (and tests): the first read."""
        return self._first.wait(timeout)

    # --- the cycle's view (no I/O) ------------------------------------------------------------
    def policies(self, base: Mapping[str, BackendPolicy]) -> Dict[str, BackendPolicy]:
        """The cycle's policies with the overrides applied; a change is logged here, where it takes
        effect: the decision that follows this call is the first one made with it."""
        with self._swap:
            overrides, untold, self._untold = self.overrides, self._untold, []
        for line in untold:
            self.logger.warning("%s", line)
        if not overrides:
            return dict(base)
        out = {}
        for name, policy in base.items():
            jobs = overrides.get((name, "parallel_jobs"))
            starts = overrides.get((name, "max_parallel_starts"))
            rate = overrides.get((name, "max_starts_per_minute"))
            if jobs is not None:
                policy = replace(policy, parallel_jobs=int(jobs))
            if starts is not None:
                policy = replace(policy, max_parallel_starts=int(starts))
            if rate == 0:
                policy = replace(policy, max_parallel_starts=0)  # a rate of 0: no start at all
            out[name] = policy
        return out

    def in_force(self) -> Dict[str, Dict[str, LimitInForce]]:
        overrides = self.overrides
        table: Dict[str, Dict[str, LimitInForce]] = {}
        for name, knobs in self.configured.items():
            table[name] = {}
            for knob, value in knobs.items():
                if (name, knob) in overrides:
                    table[name][knob] = LimitInForce(overrides[(name, knob)], f"variable {variable_name(knob, name)}")
                else:
                    table[name][knob] = LimitInForce(value, self.sources[name])
        return table

    def as_stats(self) -> Dict[str, Dict[str, Dict[str, Any]]]:
        """The limits in force as plain values: backend -> limit -> {"value", "source"}."""
        return {name: {knob: {"value": limit.value, "source": limit.source} for knob, limit in knobs.items()}
                for name, knobs in self.in_force().items()}

    def describe(self) -> str:
        """One line per backend, e.g. `cdse: parallel_jobs 1 (variable openeo-parallel-jobs-cdse), ...`."""
        lines = []
        for name, knobs in self.in_force().items():
            parts = [f"{knob} {'off' if limit.value is None else f'{limit.value:g}'} ({limit.source})"
                     for knob, limit in knobs.items()]
            lines.append(f"{name}: " + ", ".join(parts))
        return "\n".join(lines)

    # --- the reader thread ----------------------------------------------------------------------
    def refresh(self) -> bool:
        """Read the Variables once; True if a limit in force changed. Keeps the last values on errors."""
        try:
            raw = self.read(self.names)
        except Exception as exc:  # noqa: BLE001 - the Prefect API may be down: keep the last known values
            self.failed_reads += 1
            self.logger.debug("limit overrides not read (keeping the last ones): %s", exc)
            return False
        if self._stop.is_set():  # closed while the read was out: the run is over
            return False
        self.reads += 1
        new: Dict[Tuple[str, str], float] = {}
        for variable, value in raw.items():
            if variable not in self.names:
                continue
            try:
                new[self.names[variable]] = parse_override(value)
                self._complaints.pop(variable, None)
            except BadOverride as exc:
                if self._complaints.get(variable) != str(exc):
                    self._complaints[variable] = str(exc)
                    self.logger.warning("Variable %s ignored: %s (the configured limit stays in force)", variable, exc)
        old = self.overrides
        if new == old:
            return False
        told = []
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                backend, knob = key
                shown = "the configured value" if key not in new else f"{new[key]:g}"
                told.append(f"{knob} of backend {backend} is now {shown} (Variable {variable_name(knob, backend)})")
                if knob == "max_starts_per_minute" and new.get(key) != 0:
                    self.on_rate(backend, new.get(key, self.configured[backend][knob]))
        with self._swap:  # the values and their log lines reach the cycle together
            self.overrides, self._untold = new, self._untold + told
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            changed = self.refresh()
            self._first.set()
            if changed:
                self.on_change()
            self._stop.wait(self.interval)

    def close(self) -> None:
        """Tell the reader to end; not waited for. A read in flight is one HTTP request to the
        Prefect API, seconds long when the server is loaded (a 1500-row stop waited for it); the
        daemon thread ends when it returns, and its answer is kept by nobody."""
        self._stop.set()
