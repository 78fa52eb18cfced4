"""Simulator knobs: one dataclass, settable from Python, the CLI and HTTP."""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Dict, Optional


@dataclass
class SimulatorConfig:
    """All knobs of the simulated backend. Defaults are fast, fault-free values for tests."""

    # Latencies (seconds slept inside the handler, outside the state lock).
    create_latency: float = 0.0
    start_latency: float = 0.0  # production sees ~14 s on POST /jobs/{id}/results

    # Job lifecycle timing.
    queue_time: float = 0.2
    run_time: float = 0.5
    run_time_jitter: float = 0.0  # uniform extra run time in [0, jitter]
    max_running_per_user: Optional[int] = None  # None = unlimited
    # Starting a job while this many are queued/running answers 400 ConcurrentJobLimit; None = off.
    max_queued_per_user: Optional[int] = None

    # Outcome.
    p_error: float = 0.0  # probability a job ends in "error"

    # Fault injection (never applied to /_sim/* control routes).
    p_429: float = 0.0  # probability a POST answers 429 before processing
    retry_after: Optional[float] = 1.0  # Retry-After seconds on 429s; None = omit header
    rate_limit_per_second: Optional[float] = None  # per-user token bucket; None = off
    rate_limit_burst: int = 10
    p_5xx: float = 0.0  # probability of 500/502/503 before processing, any method
    p_lost_response: float = 0.0  # POST processed, then answered 502
    outage_until: Optional[float] = None  # epoch seconds; every request answers 503 until then
    corrupt_title: Optional[str] = None  # jobs whose title contains this: invalid JSON on GET /jobs/{id}[/results]

    # Authentication.
    password: str = "secret"  # any username is accepted with this password
    static_token: Optional[str] = None  # extra bearer token accepted forever
    static_token_user: str = "static"
    token_ttl: Optional[float] = None  # seconds; None = tokens never expire

    # Results.
    asset_count: int = 1
    asset_size: int = 1024
    asset_host: Optional[str] = None  # base URL of another server serving /_assets/...

    # Listing.
    listing_max_page: Optional[int] = None  # server-side cap on page size; None = no cap

    seed: Optional[int] = None

    def update(self, **knobs: Any) -> None:
        """Set knobs by name, rejecting unknown names (typos must not pass silently)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(knobs) - names
        if unknown:
            raise ValueError(f"Unknown simulator knob(s): {sorted(unknown)}")
        for name, value in knobs.items():
            setattr(self, name, _coerce(_field_type(name), value))

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


_HINTS: Dict[str, Any] = {}


def _field_type(name: str) -> Any:
    if not _HINTS:
        _HINTS.update(typing.get_type_hints(SimulatorConfig))
    return _HINTS[name]


def _coerce(tp: Any, value: Any) -> Any:
    """Convert JSON/CLI values to the field's type (e.g. "none" -> None, 3 -> 3.0)."""
    args = typing.get_args(tp)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), tp) if args else tp
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "") and optional):
        if not optional:
            raise ValueError(f"None not allowed for type {tp}")
        return None
    if base is bool:
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
    if base in (int, float):
        return base(value)
    return str(value)


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """One --kebab-case flag per knob; values are parsed with the field's type."""
    defaults = SimulatorConfig()
    for f in dataclasses.fields(SimulatorConfig):
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(
            flag,
            dest=f.name,
            default=None,
            metavar=f.name.upper(),
            help=f"(default: {getattr(defaults, f.name)!r}; 'none' for None where optional)",
        )


def config_from_args(ns: argparse.Namespace) -> SimulatorConfig:
    cfg = SimulatorConfig()
    given = {
        f.name: getattr(ns, f.name)
        for f in dataclasses.fields(SimulatorConfig)
        if getattr(ns, f.name, None) is not None
    }
    cfg.update(**given)
    return cfg
