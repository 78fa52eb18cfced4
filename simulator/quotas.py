"""Per-user quotas as real backends impose them (CDSE: 2 requests in flight, 1 start per 5 s, credits).

- a token bucket per user, on every route or only on the routes named in `rate_limit_routes`
  (excess: 429 with `Retry-After` = seconds until the next token);
- a cap on requests in progress per user (excess: 429);
- a credit balance per user, charged `job_cost` when a job starts (an empty balance: 402).
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Dict, Optional

from simulator.config import SimulatorConfig, route_list


class TokenBucket:
    def __init__(self) -> None:
        self.tokens: Optional[float] = None
        self.last = time.monotonic()

    def take(self, rate: float, burst: int, now: float) -> Optional[float]:
        """Take one token; return None if allowed, else seconds until one is available."""
        if self.tokens is None:
            self.tokens = float(burst)
        self.tokens = min(float(burst), self.tokens + (now - self.last) * rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return None
        return (1.0 - self.tokens) / rate if rate > 0 else 1.0


class Quotas:
    """Rate limits, requests in flight and credits, per user. Thread-safe."""

    def __init__(self, config: SimulatorConfig):
        self.config = config
        self._lock = threading.Lock()
        self.buckets: Dict[str, TokenBucket] = {}
        self.in_flight: Counter = Counter()
        self.peak_in_flight: Dict[str, int] = {}
        self.spent: Counter = Counter()

    # ------------------------------------------------------------------ rate limit
    def applies_to(self, method: str, template: str) -> bool:
        routes = route_list(self.config.rate_limit_routes)
        return not routes or f"{'GET' if method == 'HEAD' else method} {template}" in routes

    def rate_limited(self, user: str, method: str, template: str) -> Optional[float]:
        """None if the request may pass, else seconds until the user's bucket has a token."""
        rate = self.config.rate_limit_per_second
        if rate is None or not self.applies_to(method, template):
            return None
        with self._lock:
            bucket = self.buckets.setdefault(user, TokenBucket())
            return bucket.take(rate, max(1, int(self.config.rate_limit_burst)), time.monotonic())

    # ------------------------------------------------------------- requests in flight
    def enter(self, user: str) -> bool:
        """Count a request of `user` as in progress; False (not counted) when the cap is reached."""
        cap = self.config.max_requests_in_flight
        with self._lock:
            if cap is not None and self.in_flight[user] >= cap:
                return False
            self.in_flight[user] += 1
            self.peak_in_flight[user] = max(self.peak_in_flight.get(user, 0), self.in_flight[user])
            return True

    def leave(self, user: str) -> None:
        with self._lock:
            self.in_flight[user] -= 1

    # ------------------------------------------------------------------------ credits
    def balance(self, user: str) -> Optional[float]:
        if self.config.credits is None:
            return None
        with self._lock:
            return self.config.credits - self.spent[user]

    def can_pay(self, user: str, where: str) -> bool:
        """Whether `user` can pay a job at `where` ('create' or 'start'), if credits are checked there."""
        if self.config.credits is None or where not in route_list(self.config.credits_checked_on):
            return True
        balance = self.balance(user)
        return balance is not None and balance >= self.config.job_cost

    def charge(self, user: str) -> None:
        if self.config.credits is not None:
            with self._lock:
                self.spent[user] += self.config.job_cost
