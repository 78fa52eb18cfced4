"""Backend state: users/tokens, jobs and their time-driven lifecycle, counters.

Everything is guarded by one lock. Transitions are computed by `advance()` as a
small discrete-event simulation over monotonic time, so a status read at any
moment is exact regardless of how often the ticker runs.
"""
from __future__ import annotations

import base64
import datetime as dt
import random
import secrets
import threading
import time
import uuid
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

from simulator.config import SimulatorConfig
from simulator.gates import Gates
from simulator.quotas import Quotas

ACTIVE = ("queued", "running")
TERMINAL = ("finished", "error", "canceled")
ALL_STATUSES = ("created", "queued", "running", "finished", "error", "canceled")
LOG_LEVELS = {"debug": 0, "info": 1, "warning": 2, "error": 3}

# Realistic failure messages, modelled on what Spark/YARN-based backends report.
ERROR_MESSAGES = [
    "Your batch job failed because workers used too much memory. The same task was attempted "
    "multiple times. Consider increasing executor-memory or python-memory.",
    "OpenEO batch job failed: java.lang.OutOfMemoryError: Java heap space",
    "Exception in load_collection: Could not read from https://sentinel-s2-l2a.s3.amazonaws.com: "
    "Connection reset by peer",
    "Job aborted due to stage failure: Task 17 in stage 4.0 failed 4 times, most recent failure: "
    "ExecutorLostFailure (executor 12 exited caused by one of the running tasks) "
    "Reason: Container killed by YARN for exceeding physical memory limits.",
    "NoDataAvailable: There is no data available for the given extents.",
]


class ApiError(Exception):
    """An openEO error response (raised by state methods, rendered by the server)."""

    def __init__(self, status: int, code: str, message: str, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Job:
    id: str
    user: str
    seq: int  # creation order; drives "newest first" and listing cursors
    process: Dict[str, Any]
    title: Optional[str] = None
    description: Optional[str] = None
    plan: Optional[str] = None
    budget: Optional[float] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    status: str = "created"
    created: float = 0.0  # epoch
    updated: float = 0.0  # epoch
    # Monotonic timestamps for the lifecycle.
    queued_at: Optional[float] = None
    eligible_at: Optional[float] = None
    started_at: Optional[float] = None
    finish_at: Optional[float] = None
    ended_at: Optional[float] = None
    will_error: bool = False
    error_message: str = ""
    start_seq: int = 0  # FIFO tie-break among queued jobs
    logs: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def output_format(self) -> str:
        """The save_result format from the process graph (drives asset names/types)."""
        graph = (self.process or {}).get("process_graph") or {}
        for node in graph.values() if isinstance(graph, dict) else []:
            if isinstance(node, dict) and node.get("process_id") == "save_result":
                return str((node.get("arguments") or {}).get("format") or "GTiff")
        return "GTiff"


def asset_names(fmt: str, count: int) -> List[Tuple[str, str]]:
    """(name, media type) of each asset for an output format."""
    if fmt.lower() in ("netcdf", "nc"):
        ext, media = "nc", "application/x-netcdf"
    else:
        ext, media = "tif", "image/tiff; application=geotiff"
    if count == 1:
        return [(f"openEO.{ext}", media)]
    return [(f"openEO_{i}.{ext}", media) for i in range(count)]


def asset_bytes(job_id: str, name: str, start: int, end: int, chunk: int = 65536) -> Iterator[bytes]:
    """Deterministic content for bytes [start, end) of an asset, streamed in chunks.

    byte[i] = (i * 31 + h) mod 256 is periodic in 256, so any range is cheap to produce.
    """
    h = zlib.crc32(f"{job_id}/{name}".encode())
    period = bytes(((k * 31 + h) % 256) for k in range(256))
    big = period * (chunk // 256 + 2)
    pos = start
    while pos < end:
        n = min(chunk, end - pos)
        off = pos % 256
        yield big[off : off + n]
        pos += n


class SimState:
    def __init__(self, config: SimulatorConfig):
        self.config = config
        self.lock = threading.RLock()
        self.rng = random.Random(config.seed)
        # Maps monotonic time to wall-clock time for timestamps.
        self._wall_offset = time.time() - time.monotonic()
        self.tokens: Dict[str, Tuple[str, Optional[float]]] = {}  # token -> (user, expires_mono)
        self.users: Dict[str, int] = {}  # username -> logins
        self.gates = Gates()  # tests hold requests of chosen routes (simulator/gates.py)
        self._reset_jobs_and_counters()

    # ----------------------------------------------------------------- admin
    def _reset_jobs_and_counters(self) -> None:
        self.jobs: Dict[str, Job] = {}
        self.active_ids: set = set()  # queued/running job ids, so advance() stays cheap
        self._seq = 0
        self._start_seq = 0
        self._user_clock: Dict[str, float] = {}
        self.requests: Counter = Counter()
        self.faults: Counter = Counter(
            {k: 0 for k in ("429", "rate_limit", "in_flight", "payment_required", "5xx", "lost_response", "outage")})
        self.jobs_total = 0
        self.jobs_per_user: Counter = Counter()
        self.titles_per_user: Dict[str, Counter] = defaultdict(Counter)
        self.max_active: Dict[str, int] = {}
        self.max_running: Dict[str, int] = {}
        self.job_starts = 0
        self.job_restarts = 0
        self.asset_requests: List[Tuple[str, bool]] = []
        self.quotas = Quotas(self.config)
        self.oidc_tokens_per_user: Dict[str, set] = defaultdict(set)  # sub -> access tokens seen (hashed)

    def reset(self) -> None:
        with self.lock:
            self._reset_jobs_and_counters()

    def configure(self, **knobs: Any) -> None:
        with self.lock:
            self.advance()  # settle past events under the old knobs first
            self.config.update(**knobs)
            if "seed" in knobs:
                self.rng = random.Random(self.config.seed)

    def wall(self, mono: float) -> float:
        return mono + self._wall_offset

    def random(self) -> float:
        with self.lock:
            return self.rng.random()

    def choice(self, options: List[Any]) -> Any:
        with self.lock:
            return self.rng.choice(options)

    # ------------------------------------------------------------------ auth
    def login(self, username: str, password: str) -> str:
        if password != self.config.password:
            raise ApiError(403, "CredentialsInvalid", "Credentials are not correct.")
        token = secrets.token_urlsafe(24)
        ttl = self.config.token_ttl
        with self.lock:
            self.tokens[token] = (username, time.monotonic() + ttl if ttl is not None else None)
            self.users[username] = self.users.get(username, 0) + 1
        return token

    def user_for_token(self, token: str) -> str:
        cfg = self.config
        if cfg.static_token and token == cfg.static_token:
            return cfg.static_token_user
        with self.lock:
            entry = self.tokens.get(token)
        if entry is None:
            raise ApiError(403, "TokenInvalid", "Authorization token has expired or is invalid. Please authenticate again.")
        user, expires = entry
        if expires is not None and time.monotonic() >= expires:
            raise ApiError(403, "TokenInvalid", "Authorization token has expired or is invalid. Please authenticate again.")
        return user

    def payment_required(self, user: str, where: str) -> None:
        """402 when `user` cannot pay a job here (credits checked on `where`: create or start)."""
        if not self.quotas.can_pay(user, where):
            self.count_fault("payment_required")
            raise ApiError(402, "PaymentRequired",
                           f"The budget required to fulfil the request is insufficient: {self.quotas.balance(user)} "
                           f"credits left, a job costs {self.config.job_cost}.")

    def record_oidc_user(self, user: str, token: str) -> None:
        with self.lock:
            self.oidc_tokens_per_user[user].add(hash(token))

    # ------------------------------------------------------------- lifecycle
    def _log(self, job: Job, level: str, message: str, mono: float, code: str = "") -> None:
        job.logs.append(
            {
                "id": str(len(job.logs)),
                "code": code or ("Internal" if level == "error" else "Info"),
                "level": level,
                "message": message,
                "time": iso(self.wall(mono)),
            }
        )

    def _active(self, user: str) -> Tuple[List[Job], List[Job]]:
        active = [self.jobs[i] for i in self.active_ids if self.jobs[i].user == user]
        queued = [j for j in active if j.status == "queued"]
        running = [j for j in active if j.status == "running"]
        return queued, running

    def advance(self, now: Optional[float] = None) -> None:
        """Apply every transition due up to `now`, in time order per user."""
        now = time.monotonic() if now is None else now
        with self.lock:
            users = {self.jobs[i].user for i in self.active_ids}
            for user in users:
                self._advance_user(user, now)

    def _advance_user(self, user: str, now: float) -> None:
        cap = self.config.max_running_per_user
        queued, running = self._active(user)
        queued.sort(key=lambda j: (j.eligible_at, j.start_seq))
        t = self._user_clock.get(user, float("-inf"))
        while True:
            finishing = [j for j in running if j.finish_at is not None and j.finish_at <= now]
            next_finish = min(finishing, key=lambda j: j.finish_at) if finishing else None
            head = queued[0] if queued and queued[0].eligible_at <= now else None
            slot = cap is None or len(running) < cap
            if head is not None and slot:
                start_at = max(head.eligible_at, t)
                if next_finish is not None and next_finish.finish_at <= start_at:
                    t = self._finish(next_finish, running)
                    continue
                queued.pop(0)
                t = self._start_running(head, start_at, running)
                continue
            if next_finish is not None:
                t = self._finish(next_finish, running)
                continue
            break
        self._user_clock[user] = max(t, self._user_clock.get(user, float("-inf")))

    def _start_running(self, job: Job, at: float, running: List[Job]) -> float:
        cfg = self.config
        jitter = self.rng.uniform(0.0, cfg.run_time_jitter) if cfg.run_time_jitter > 0 else 0.0
        job.status = "running"
        job.started_at = at
        job.finish_at = at + cfg.run_time + jitter
        job.will_error = self.rng.random() < cfg.p_error or bool(cfg.error_title and cfg.error_title in (job.title or ""))
        if job.will_error:
            job.error_message = self.rng.choice(ERROR_MESSAGES)
        job.updated = self.wall(at)
        self._log(job, "info", "Job started running on the cluster.", at)
        self._log(job, "debug", f"Evaluating process graph with {len(job.process.get('process_graph', {}))} nodes.", at)
        running.append(job)
        self.max_running[job.user] = max(self.max_running.get(job.user, 0), len(running))
        return at

    def _finish(self, job: Job, running: List[Job]) -> float:
        at = job.finish_at
        running.remove(job)
        self.active_ids.discard(job.id)
        job.ended_at = at
        job.updated = self.wall(at)
        if job.will_error:
            job.status = "error"
            self._log(job, "warning", "Task 3 failed, retrying (attempt 2 of 4).", at)
            self._log(job, "error", job.error_message, at, code="Internal")
        else:
            job.status = "finished"
            self._log(job, "info", "Job finished successfully; results written.", at)
        return at

    # ------------------------------------------------------------------ jobs
    def create_job(self, user: str, body: Dict[str, Any]) -> Job:
        process = body.get("process")
        if not isinstance(process, dict) or not isinstance(process.get("process_graph"), dict):
            raise ApiError(400, "ProcessGraphMissing", "No valid process graph specified ('process.process_graph').")
        now = time.monotonic()
        self.payment_required(user, "create")
        with self.lock:
            self._seq += 1
            job = Job(
                # uuid4, not the seeded RNG: two simulators with the same seed must not hand out
                # the same job ids (real backends never do, and results dirs are named by id).
                id="j-" + uuid.uuid4().hex[:20],
                user=user,
                seq=self._seq,
                process=process,
                title=body.get("title"),
                description=body.get("description"),
                plan=body.get("plan"),
                budget=body.get("budget"),
                extra={k: v for k, v in body.items() if k not in ("process", "title", "description", "plan", "budget")},
                created=self.wall(now),
                updated=self.wall(now),
            )
            self._log(job, "info", "Job created.", now)
            self.jobs[job.id] = job
            self.jobs_total += 1
            self.jobs_per_user[user] += 1
            if job.title is not None:
                self.titles_per_user[user][job.title] += 1
            return job

    def get_job(self, user: str, job_id: str) -> Job:
        with self.lock:
            self.advance()
            job = self.jobs.get(job_id)
            if job is None or job.user != user:
                raise ApiError(404, "JobNotFound", f"The batch job '{job_id}' does not exist.")
            return job

    def list_jobs(self, user: str, limit: Optional[int], cursor: Optional[str]) -> Tuple[List[Job], Optional[str]]:
        """Newest first. The cursor is the (opaque) seq of the last job of the previous page."""
        max_page = self.config.listing_max_page
        if max_page is not None:
            limit = max_page if limit is None else min(limit, max_page)
        before = None
        if cursor:
            try:
                before = int(base64.urlsafe_b64decode(cursor.encode()).decode().split(":", 1)[1])
            except Exception:
                raise ApiError(400, "InvalidCursor", "The pagination cursor is invalid.")
        with self.lock:
            self.advance()
            jobs = sorted((j for j in self.jobs.values() if j.user == user), key=lambda j: -j.seq)
            if before is not None:
                jobs = [j for j in jobs if j.seq < before]
            if limit is None or len(jobs) <= limit:
                return jobs, None
            page = jobs[:limit]
            token = base64.urlsafe_b64encode(f"seq:{page[-1].seq}".encode()).decode()
            return page, token

    def update_job(self, user: str, job_id: str, body: Dict[str, Any]) -> None:
        with self.lock:
            job = self.get_job(user, job_id)
            if job.status in ACTIVE:
                raise ApiError(400, "JobLocked", "Job is locked due to a queued or running batch computation.")
            for key in ("title", "description", "plan", "budget"):
                if key in body:
                    setattr(job, key, body[key])
            if "process" in body:
                if not isinstance(body["process"], dict) or "process_graph" not in body["process"]:
                    raise ApiError(400, "ProcessGraphMissing", "No valid process graph specified.")
                job.process = body["process"]
            job.updated = time.time()

    def delete_job(self, user: str, job_id: str) -> None:
        with self.lock:
            job = self.get_job(user, job_id)
            if job.status in ACTIVE:
                self._cancel(job)
            del self.jobs[job_id]

    def start_job(self, user: str, job_id: str) -> None:
        """created -> queued; queued/running: no-op; terminal: restart (as openEO permits)."""
        now = time.monotonic()
        with self.lock:
            job = self.get_job(user, job_id)
            if job.status in ACTIVE:
                return
            limit = self.config.max_queued_per_user
            if limit is not None and sum(map(len, self._active(user))) >= limit:
                raise ApiError(400, "ConcurrentJobLimit",
                               f"You have reached the limit of {limit} concurrent batch jobs; try again later.")
            self.payment_required(user, "start")
            self.quotas.charge(user)
            if job.status in TERMINAL:
                self.job_restarts += 1
                job.finish_at = job.started_at = job.ended_at = None
                job.will_error = False
                self._log(job, "info", "Job restarted.", now)
            self._start_seq += 1
            job.status = "queued"
            self.active_ids.add(job.id)
            job.start_seq = self._start_seq
            job.queued_at = now
            job.eligible_at = now + self.config.queue_time
            job.updated = self.wall(now)
            self._log(job, "info", "Job queued.", now)
            self.job_starts += 1
            queued, running = self._active(user)
            self.max_active[user] = max(self.max_active.get(user, 0), len(queued) + len(running))

    def cancel_job(self, user: str, job_id: str) -> None:
        with self.lock:
            job = self.get_job(user, job_id)
            if job.status in ACTIVE:
                self._cancel(job)

    def _cancel(self, job: Job) -> None:
        now = time.monotonic()
        was_running = job.status == "running"
        job.status = "canceled"
        self.active_ids.discard(job.id)
        job.ended_at = now
        job.updated = self.wall(now)
        self._log(job, "info", "Job canceled by user.", now)
        if was_running:
            # The freed slot only becomes usable from now on.
            self._user_clock[job.user] = max(now, self._user_clock.get(job.user, float("-inf")))

    # ------------------------------------------------------------ rendering
    def progress(self, job: Job, now: float) -> float:
        if job.status in ("finished",):
            return 100.0
        if job.status == "running" and job.started_at is not None and job.finish_at:
            total = max(job.finish_at - job.started_at, 1e-9)
            return round(min(99.0, 100.0 * (now - job.started_at) / total), 1)
        if job.status in ("error", "canceled") and job.started_at is not None and job.ended_at is not None:
            total = max((job.finish_at or job.ended_at) - job.started_at, 1e-9)
            return round(min(99.0, 100.0 * (job.ended_at - job.started_at) / total), 1)
        return 0.0

    def usage(self, job: Job) -> Tuple[Dict[str, Any], float]:
        """Usage and costs derived from the simulated run duration (deterministic)."""
        duration = 0.0
        if job.started_at is not None and job.ended_at is not None:
            duration = max(0.0, job.ended_at - job.started_at)
        usage = {
            "cpu": {"value": round(duration * 4, 3), "unit": "cpu-seconds"},
            "memory": {"value": round(duration * 4 * 2048, 3), "unit": "mb-seconds"},
            "duration": {"value": round(duration, 3), "unit": "seconds"},
        }
        return usage, round(0.5 + duration * 0.02, 4)

    def job_summary(self, job: Job, now: float) -> Dict[str, Any]:
        d: Dict[str, Any] = {
            "id": job.id,
            "title": job.title,
            "description": job.description,
            "status": job.status,
            "created": iso(job.created),
            "updated": iso(job.updated),
            "progress": self.progress(job, now),
        }
        if job.plan is not None:
            d["plan"] = job.plan
        if job.budget is not None:
            d["budget"] = job.budget
        if job.status in TERMINAL and job.started_at is not None:
            d["usage"], d["costs"] = self.usage(job)
        return d

    def job_details(self, job: Job, now: float) -> Dict[str, Any]:
        d = self.job_summary(job, now)
        d["process"] = job.process
        for k, v in job.extra.items():
            d.setdefault(k, v)
        return d

    def logs(self, job: Job, level: Optional[str], offset: Optional[str]) -> List[Dict[str, Any]]:
        min_level = LOG_LEVELS.get((level or "debug").lower())
        if min_level is None:
            raise ApiError(400, "InvalidLogLevel", f"Invalid log level {level!r}; use one of {list(LOG_LEVELS)}.")
        entries = job.logs
        if offset:
            ids = [e["id"] for e in entries]
            if offset in ids:
                entries = entries[ids.index(offset) + 1 :]
        return [e for e in entries if LOG_LEVELS[e["level"]] >= min_level]

    # -------------------------------------------------------------- counters
    def count_request(self, key: str) -> None:
        with self.lock:
            self.requests[key] += 1

    def count_fault(self, kind: str) -> None:
        with self.lock:
            self.faults[kind] += 1

    def refusals(self) -> Dict[str, Dict[str, int]]:
        """429 and 402 answers per 'METHOD /route' (from the request counters)."""
        out: Dict[str, Dict[str, int]] = {"429": {}, "402": {}}
        with self.lock:
            for key, n in self.requests.items():
                route, _, status = key.rpartition(" ")
                if status in out:
                    out[status][route] = out[status].get(route, 0) + n
        return out

    def record_asset_request(self, path: str, had_auth: bool) -> None:
        with self.lock:
            self.asset_requests.append((path, had_auth))

    def counters(self) -> Dict[str, Any]:
        with self.lock:
            self.advance()
            by_status = Counter({s: 0 for s in ALL_STATUSES})
            active: Counter = Counter()
            for j in self.jobs.values():
                by_status[j.status] += 1
                if j.status in ACTIVE:
                    active[j.user] += 1
            return {
                "requests": dict(sorted(self.requests.items())),
                "jobs_total": self.jobs_total,
                "jobs_by_status": dict(by_status),
                "jobs_per_user": dict(self.jobs_per_user),
                "active_per_user": {u: active.get(u, 0) for u in set(active) | set(self.max_active)},
                "max_active_per_user": dict(self.max_active),
                "max_running_seen_per_user": dict(self.max_running),
                "duplicate_titles": {
                    u: {t: n for t, n in titles.items() if n > 1}
                    for u, titles in self.titles_per_user.items()
                    if any(n > 1 for n in titles.values())
                },
                "job_starts": self.job_starts,
                "job_restarts": self.job_restarts,
                "faults_injected": dict(self.faults),
                "refusals": self.refusals(),
                "peak_in_flight_per_user": dict(self.quotas.peak_in_flight),
                "credits_spent_per_user": dict(self.quotas.spent),
                "oidc_tokens_per_user": {u: len(t) for u, t in self.oidc_tokens_per_user.items()},
                "asset_requests": len(self.asset_requests),
            }
