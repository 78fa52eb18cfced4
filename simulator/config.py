"""Simulator knobs: one dataclass, settable from Python, the CLI and HTTP."""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, Optional


def knob(default: Any, help: str) -> Any:  # noqa: A002 - argparse's word
    """A dataclass field whose help text is shown by `python -m simulator --help`."""
    return field(default=default, metadata={"help": help})


@dataclass
class SimulatorConfig:
    """All knobs of the simulated backend. Defaults are fast, fault-free values for tests."""

    # Latencies (seconds slept inside the handler, outside the state lock).
    create_latency: float = knob(0.0, "seconds POST /jobs takes")
    start_latency: float = knob(0.0, "seconds POST /jobs/{id}/results takes (production sees ~14 s)")

    # Job lifecycle timing.
    queue_time: float = knob(0.2, "seconds a started job stays queued before it may run")
    run_time: float = knob(0.5, "seconds a job runs")
    run_time_jitter: float = knob(0.0, "uniform extra run time in [0, jitter] seconds")
    max_running_per_user: Optional[int] = knob(None, "jobs running at once per user; more wait queued (none = unlimited)")
    runs_left: Optional[int] = knob(
        None, "jobs that may still start running (any user), counted down as they start; more wait queued (none = no limit)")
    max_queued_per_user: Optional[int] = knob(
        None, "starting a job while this many are queued/running answers 400 ConcurrentJobLimit (none = off)")

    # Outcome.
    p_error: float = knob(0.0, "probability that a job ends in 'error'")
    error_title: Optional[str] = knob(None, "jobs whose title contains this text end in 'error' (none = off)")

    # Fault injection (never applied to /_sim/* control routes).
    p_429: float = knob(0.0, "probability that a POST answers 429 before it is processed")
    retry_after: Optional[float] = knob(1.0, "Retry-After seconds sent with 429s (none = omit the header)")
    rate_limit_per_second: Optional[float] = knob(
        None, "token bucket per user: tokens added per second; excess requests answer 429 (none = off)")
    rate_limit_burst: int = knob(10, "token bucket size (requests allowed at once)")
    rate_limit_routes: Optional[str] = knob(
        None, "comma-separated 'METHOD /template' routes the token bucket applies to, e.g. "
        "'POST /jobs/{id}/results' (none = every route)")
    max_requests_in_flight: Optional[int] = knob(
        None, "API requests one user may have in progress at once; more answer 429 (none = unlimited)")
    p_5xx: float = knob(0.0, "probability of a 500/502/503 before processing, any method")
    p_lost_response: float = knob(0.0, "probability that a POST is processed, then answered 502")
    outage_until: Optional[float] = knob(None, "epoch seconds; every request answers 503 until then")
    corrupt_title: Optional[str] = knob(
        None, "jobs whose title contains this text get invalid JSON on GET /jobs/{id}[/results]")

    # Credits (an account that cannot pay answers 402 PaymentRequired).
    credits: Optional[float] = knob(None, "credit balance of every user (none = unlimited)")
    job_cost: float = knob(1.0, "credits a job costs, charged when it is started")
    credits_checked_on: str = knob(
        "create,start", "where an empty balance answers 402: 'create', 'start' or 'create,start'")

    # Authentication.
    basic_auth: bool = knob(True, "accept HTTP Basic logins (false = OIDC only, as CDSE)")
    password: str = knob("secret", "the password of every user name for HTTP Basic logins")
    static_token: Optional[str] = knob(None, "an extra bearer token accepted forever")
    static_token_user: str = knob("static", "the user that --static-token authenticates")
    token_ttl: Optional[float] = knob(None, "seconds a basic-auth access token lives (none = forever)")
    oidc_issuer: Optional[str] = knob(
        None, "URL of an OIDC provider to trust: /credentials/oidc lists it and 'Bearer oidc/<provider>/<token>' "
        "is checked at its userinfo endpoint (none = no OIDC)")
    oidc_provider_id: str = knob("sim-oidc", "the provider id listed at /credentials/oidc")
    oidc_default_client_id: Optional[str] = knob(
        None, "a public client listed as the provider's default client (device code + refresh token grants)")
    oidc_cache_seconds: float = knob(1.0, "seconds a token checked at the userinfo endpoint stays trusted")

    # Results.
    asset_count: int = knob(1, "assets per finished job")
    asset_size: int = knob(1024, "bytes per asset")
    asset_host: Optional[str] = knob(None, "base URL of another server serving /_assets/... (none = this one)")
    asset_bytes_per_second: Optional[float] = knob(None, "stream assets at most this fast (none = as fast as possible)")
    results_license: Optional[str] = knob("CC-BY-4.0", "license named in results documents (none = omitted)")

    # Listing.
    listing_max_page: Optional[int] = knob(None, "server-side cap on the page size of GET /jobs (none = no cap)")

    seed: Optional[int] = knob(None, "random seed (none = random)")

    def update(self, **knobs: Any) -> None:
        """Set knobs by name, rejecting unknown names (typos must not pass silently)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(knobs) - names
        if unknown:
            raise ValueError(f"Unknown simulator knob(s): {sorted(unknown)}")
        previous = self.to_dict()
        for name, value in knobs.items():
            setattr(self, name, _coerce(_field_type(name), value))
        try:
            self.validate()
        except ValueError:
            for name, value in previous.items():
                setattr(self, name, value)
            raise

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Reject knob values the server could not apply (checked on every change)."""
        for name in ("rate_limit_per_second", "credits", "job_cost", "oidc_cache_seconds", "retry_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative, got {value}")
        if self.max_requests_in_flight is not None and self.max_requests_in_flight < 1:
            raise ValueError(f"max_requests_in_flight must be at least 1, got {self.max_requests_in_flight}")
        unknown = set(route_list(self.credits_checked_on)) - {"create", "start"}
        if unknown:
            raise ValueError(f"credits_checked_on takes 'create' and/or 'start', got {sorted(unknown)}")
        for route in route_list(self.rate_limit_routes):
            method, _, path = route.partition(" ")
            if method not in ("GET", "POST", "PATCH", "DELETE", "HEAD", "PUT") or not path.startswith("/"):
                raise ValueError(f"rate_limit_routes: {route!r} is not 'METHOD /template', e.g. 'POST /jobs/{{id}}/results'")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def route_list(text: Optional[str]) -> list:
    """'POST /jobs, GET /jobs/{id}' -> ['POST /jobs', 'GET /jobs/{id}'] (also for plain word lists)."""
    return [" ".join(part.split()) for part in (text or "").split(",") if part.strip()]


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
            help=f"{f.metadata.get('help', '')} (default: {getattr(defaults, f.name)!r})",
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
