"""Jobs and their time-driven lifecycle: created -> queued -> running -> finished | error, canceled.

Guarded by the state's one lock. Transitions are computed by `advance()` as a small discrete-event
simulation over monotonic time, so a status read at any moment is exact however often the ticker runs.
"""
from __future__ import annotations

import base64
import datetime as dt
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from simulator.config import SimulatorConfig
from simulator.messages import ApiError

ACTIVE = ("queued", "running")
TERMINAL = ("finished", "error", "canceled")
ALL_STATUSES = ("created", "queued", "running", "finished", "error", "canceled")

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
    created_at: Optional[float] = None
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


class JobBook:
    """Every job of every user, their transitions and the job counters tests and benches read."""

    def __init__(self, config: SimulatorConfig, lock: threading.RLock, rng: Callable[[], random.Random],
                 wall_offset: float, charge: Callable[[str, str], None]):
        self.config = config
        self.lock = lock
        self._rng = rng  # the state's generator (re-seeded by `configure(seed=...)`)
        self._wall_offset = wall_offset  # maps monotonic time to wall-clock time for timestamps
        self._charge = charge  # (user, 'create'|'start'): 402 when the user cannot pay, else charge at start
        self.jobs: Dict[str, Job] = {}
        self.active_ids: set = set()  # queued/running job ids, so advance() stays cheap
        self._seq = 0
        self._start_seq = 0
        self._user_clock: Dict[str, float] = {}
        self.jobs_total = 0
        self.jobs_per_user: Counter = Counter()
        self.titles_per_user: Dict[str, Counter] = defaultdict(Counter)
        self.max_active: Dict[str, int] = {}
        self.max_running: Dict[str, int] = {}
        self.job_starts = 0
        self.job_restarts = 0

    def wall(self, mono: float) -> float:
        return mono + self._wall_offset

    def log(self, job: Job, level: str, message: str, mono: float, code: str = "") -> None:
        job.logs.append({"id": str(len(job.logs)), "code": code or ("Internal" if level == "error" else "Info"),
                         "level": level, "message": message, "time": iso(self.wall(mono))})

    # ------------------------------------------------------------------ lifecycle
    def _active(self, user: str) -> Tuple[List[Job], List[Job]]:
        active = [self.jobs[i] for i in self.active_ids if self.jobs[i].user == user]
        queued = [j for j in active if j.status == "queued"]
        running = [j for j in active if j.status == "running"]
        return queued, running

    def advance(self, now: Optional[float] = None) -> None:
        """Apply every transition due up to `now`, in time order per user."""
        now = time.monotonic() if now is None else now
        with self.lock:
            for user in {self.jobs[i].user for i in self.active_ids}:
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
            slot = (cap is None or len(running) < cap) and self.config.runs_left != 0
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
        cfg, rng = self.config, self._rng()
        jitter = rng.uniform(0.0, cfg.run_time_jitter) if cfg.run_time_jitter > 0 else 0.0
        if cfg.runs_left is not None:
            cfg.runs_left -= 1  # a test lets exactly so many queued jobs run (tests/test_account_sharing.py)
        job.status = "running"
        job.started_at = at
        job.finish_at = at + cfg.run_time + jitter
        job.will_error = rng.random() < cfg.p_error or bool(cfg.error_title and cfg.error_title in (job.title or ""))
        if job.will_error:
            job.error_message = rng.choice(ERROR_MESSAGES)
        job.updated = self.wall(at)
        self.log(job, "info", "Job started running on the cluster.", at)
        self.log(job, "debug", f"Evaluating process graph with {len(job.process.get('process_graph', {}))} nodes.", at)
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
            self.log(job, "warning", "Task 3 failed, retrying (attempt 2 of 4).", at)
            self.log(job, "error", job.error_message, at, code="Internal")
        else:
            job.status = "finished"
            self.log(job, "info", "Job finished successfully; results written.", at)
        return at

    def _cancel(self, job: Job) -> None:
        now = time.monotonic()
        was_running = job.status == "running"
        job.status = "canceled"
        self.active_ids.discard(job.id)
        job.ended_at = now
        job.updated = self.wall(now)
        self.log(job, "info", "Job canceled by user.", now)
        if was_running:
            # The freed slot only becomes usable from now on.
            self._user_clock[job.user] = max(now, self._user_clock.get(job.user, float("-inf")))

    # ------------------------------------------------------------------ requests
    def create(self, user: str, body: Dict[str, Any]) -> Job:
        process = body.get("process")
        if not isinstance(process, dict) or not isinstance(process.get("process_graph"), dict):
            raise ApiError(400, "ProcessGraphMissing", "No valid process graph specified ('process.process_graph').")
        now = time.monotonic()
        self._charge(user, "create")
        with self.lock:
            self._seq += 1
            job = Job(
                # uuid4, not the seeded RNG: two simulators with the same seed must not hand out
                # the same job ids (real backends never do, and results dirs are named by id).
                id="j-" + uuid.uuid4().hex[:20], user=user, seq=self._seq, process=process,
                title=body.get("title"), description=body.get("description"), plan=body.get("plan"),
                budget=body.get("budget"),
                extra={k: v for k, v in body.items() if k not in ("process", "title", "description", "plan", "budget")},
                created=self.wall(now), updated=self.wall(now), created_at=now,
            )
            self.log(job, "info", "Job created.", now)
            self.jobs[job.id] = job
            self.jobs_total += 1
            self.jobs_per_user[user] += 1
            if job.title is not None:
                self.titles_per_user[user][job.title] += 1
            return job

    def get(self, user: str, job_id: str) -> Job:
        with self.lock:
            self.advance()
            job = self.jobs.get(job_id)
            if job is None or job.user != user:
                raise ApiError(404, "JobNotFound", f"The batch job '{job_id}' does not exist.")
            return job

    def list(self, user: str, limit: Optional[int], cursor: Optional[str]) -> Tuple[List[Job], Optional[str]]:
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
            return page, base64.urlsafe_b64encode(f"seq:{page[-1].seq}".encode()).decode()

    def update(self, user: str, job_id: str, body: Dict[str, Any]) -> None:
        with self.lock:
            job = self.get(user, job_id)
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

    def delete(self, user: str, job_id: str) -> None:
        with self.lock:
            job = self.get(user, job_id)
            if job.status in ACTIVE:
                self._cancel(job)
            del self.jobs[job_id]

    def start(self, user: str, job_id: str) -> None:
        """created -> queued; queued/running: no-op; terminal: restart (as openEO permits)."""
        now = time.monotonic()
        with self.lock:
            job = self.get(user, job_id)
            if job.status in ACTIVE:
                return
            limit = self.config.max_queued_per_user
            if limit is not None and sum(map(len, self._active(user))) >= limit:
                raise ApiError(400, "ConcurrentJobLimit",
                               f"You have reached the limit of {limit} concurrent batch jobs; try again later.")
            self._charge(user, "start")
            if job.status in TERMINAL:
                self.job_restarts += 1
                job.finish_at = job.started_at = job.ended_at = None
                job.will_error = False
                self.log(job, "info", "Job restarted.", now)
            self._start_seq += 1
            job.status = "queued"
            self.active_ids.add(job.id)
            job.start_seq = self._start_seq
            job.queued_at = now
            job.eligible_at = now + self.config.queue_time
            job.updated = self.wall(now)
            self.log(job, "info", "Job queued.", now)
            self.job_starts += 1
            queued, running = self._active(user)
            self.max_active[user] = max(self.max_active.get(user, 0), len(queued) + len(running))

    def cancel(self, user: str, job_id: str) -> None:
        with self.lock:
            job = self.get(user, job_id)
            if job.status in ACTIVE:
                self._cancel(job)
