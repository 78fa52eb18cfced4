"""The simulated backend's state: its parts (accounts, jobs, quotas, gates) and the counters tests and
benches read. One lock guards it all; `reset()` forgets jobs and counters, logins stay valid."""
from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any, Dict, List, Tuple

from simulator.accounts import Accounts
from simulator.config import SimulatorConfig
from simulator.gates import Gates
from simulator.jobs import ACTIVE, ALL_STATUSES, Job, JobBook
from simulator.messages import ApiError
from simulator.quotas import Quotas

FAULT_KINDS = ("429", "rate_limit", "in_flight", "payment_required", "5xx", "lost_response", "outage")


class SimState:
    def __init__(self, config: SimulatorConfig):
        self.config = config
        self.lock = threading.RLock()
        self.rng = random.Random(config.seed)
        self._wall_offset = time.time() - time.monotonic()
        self.accounts = Accounts(config, self.lock)
        self.gates = Gates()  # tests hold requests of chosen routes (simulator/gates.py)
        self._reset_jobs_and_counters()

    def _reset_jobs_and_counters(self) -> None:
        self.quotas = Quotas(self.config)
        self.book = JobBook(self.config, self.lock, lambda: self.rng, self._wall_offset, self.charge)
        self.requests: Counter = Counter()  # 'METHOD /template STATUS' -> answers
        self.faults: Counter = Counter({k: 0 for k in FAULT_KINDS})
        self.asset_requests: List[Tuple[str, bool]] = []  # (path, had an Authorization header)
        self.accounts.forget_oidc_tokens()

    def reset(self) -> None:
        with self.lock:
            self._reset_jobs_and_counters()

    def configure(self, **knobs: Any) -> None:
        with self.lock:
            self.advance()  # settle past events under the old knobs first
            self.config.update(**knobs)
            if "seed" in knobs:
                self.rng = random.Random(self.config.seed)

    # What tests and benches read directly (under `lock`).
    @property
    def jobs(self) -> Dict[str, Job]:
        return self.book.jobs

    @property
    def tokens(self) -> Dict[str, Tuple[str, Any]]:
        return self.accounts.tokens

    @property
    def users(self) -> Dict[str, int]:
        return self.accounts.users

    def advance(self) -> None:
        self.book.advance()

    def wall(self, mono: float) -> float:
        return self.book.wall(mono)

    def random(self) -> float:
        with self.lock:
            return self.rng.random()

    def choice(self, options: List[Any]) -> Any:
        with self.lock:
            return self.rng.choice(options)

    def charge(self, user: str, where: str) -> None:
        """402 when `user` cannot pay a job at `where` ('create' or 'start'); a start is charged."""
        if not self.quotas.can_pay(user, where):
            self.count_fault("payment_required")
            raise ApiError(402, "PaymentRequired",
                           f"The budget required to fulfil the request is insufficient: {self.quotas.balance(user)} "
                           f"credits left, a job costs {self.config.job_cost}.")
        if where == "start":
            self.quotas.charge(user)

    # -------------------------------------------------------------- counters
    def count_request(self, key: str) -> None:
        with self.lock:
            self.requests[key] += 1

    def count_fault(self, kind: str) -> None:
        with self.lock:
            self.faults[kind] += 1

    def record_asset_request(self, path: str, had_auth: bool) -> None:
        with self.lock:
            self.asset_requests.append((path, had_auth))

    def refusals(self) -> Dict[str, Dict[str, int]]:
        """429 and 402 answers per 'METHOD /route' (from the request counters)."""
        out: Dict[str, Dict[str, int]] = {"429": {}, "402": {}}
        with self.lock:
            for key, n in self.requests.items():
                route, _, status = key.rpartition(" ")
                if status in out:
                    out[status][route] = out[status].get(route, 0) + n
        return out

    def counters(self) -> Dict[str, Any]:
        with self.lock:
            book = self.book
            book.advance()
            by_status = Counter({s: 0 for s in ALL_STATUSES})
            active: Counter = Counter()
            for j in book.jobs.values():
                by_status[j.status] += 1
                if j.status in ACTIVE:
                    active[j.user] += 1
            titles = book.titles_per_user
            return {
                "requests": dict(sorted(self.requests.items())),
                "jobs_total": book.jobs_total,
                "jobs_by_status": dict(by_status),
                "jobs_per_user": dict(book.jobs_per_user),
                "active_per_user": {u: active.get(u, 0) for u in set(active) | set(book.max_active)},
                "max_active_per_user": dict(book.max_active),
                "max_running_seen_per_user": dict(book.max_running),
                "duplicate_titles": {u: {t: n for t, n in seen.items() if n > 1}
                                     for u, seen in titles.items() if any(n > 1 for n in seen.values())},
                "job_starts": book.job_starts,
                "job_restarts": book.job_restarts,
                "faults_injected": dict(self.faults),
                "refusals": self.refusals(),
                "peak_in_flight_per_user": dict(self.quotas.peak_in_flight),
                "credits_spent_per_user": dict(self.quotas.spent),
                "oidc_tokens_per_user": {u: len(t) for u, t in self.accounts.oidc_tokens_per_user.items()},
                "asset_requests": len(self.asset_requests),
            }
