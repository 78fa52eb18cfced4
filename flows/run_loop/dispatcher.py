"""The dispatcher: turns the scheduler's orders into Prefect task runs and hands back their outcomes.

Batching is its choice alone: one task run per row (named after its tile) while few rows move,
batches of rows per task run when hundreds move in one cycle (Prefect's server falls behind on
thousands of tiny task runs; bench/README.md). Tasks drop their `Outcome` into this run's inbox
(tasks/outcome.py); a done-callback on each future (public `add_done_callback`) follows it into
the same queue, so a task that ended without an outcome (it raised, or Prefect failed it) is
noticed and reported as crashed. Nothing here waits on the Prefect API.
"""
from __future__ import annotations

import math
import queue
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

from prefect import tags as prefect_tags
from prefect.context import TagsContext
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from flows.run_loop import slot_waits
from flows.rules.plan import FinishOrder, HookOrder, InFlight, PollOrder, ReconcileOrder, StartOrder
from tasks.download import download_results, save_error_logs
from tasks.hooks import run_hook
from tasks.outcome import Outcome, Step, close_inbox, open_inbox, request_stop
from tasks.poll import find_marked_jobs, poll_backend
from tasks.start import create_jobs, start_jobs

# Batch start tasks when more rows of one backend wait than this many times its workers; then
# batches keep about this many task runs per worker queued (rows in a batch go one after the other).
START_BATCH_FACTOR = 4
# More downloads than this for one backend in one cycle go in batches of at most this size,
# and in at least `task_workers` of them, so downloads stay as parallel as one task per job.
FINISH_BATCH_THRESHOLD = 8
FINISH_BATCH_SIZE = 25
# After the first outcome arrives, wait this long for others before the next cycle (10k rows:
# a cycle per returning task meant thousands of cycles, each looking at the whole DB). Not after
# a poll that saw jobs change: their freed slots are decided on at once (issue 21); nor when no
# task run owes an answer any more (the run's last downloads: nothing else can come).
COALESCE_SECONDS = 0.1


def start_batch_size(orders: int, workers: int) -> int:
    """Rows per create/start task of one backend (`workers`: the workers its tasks run on): 1 while
    few rows wait, else small batches, about START_BATCH_FACTOR per worker. A row waits for the rows
    before it in its batch, so a batch per worker (one long serial run per worker, fewer batches than
    workers when the backends share a pool) would keep slots empty for many rows' time."""
    return 1 if orders <= START_BATCH_FACTOR * workers else math.ceil(orders / (START_BATCH_FACTOR * workers))


def finish_batch_size(orders: int, workers: int) -> int:
    """Jobs per download / error-log task of one backend."""
    return 1 if orders <= FINISH_BATCH_THRESHOLD else min(FINISH_BATCH_SIZE, math.ceil(orders / workers))


def batched(orders: Sequence[Any], size: int) -> List[Sequence[Any]]:
    return [orders[first:first + size] for first in range(0, len(orders), size)]


def take_turns(queues: Mapping[str, Sequence[Any]]) -> List[Tuple[str, Any]]:
    """(key, item) from each key's queue in turn: a0 b0 c0 a1 b1 ..."""
    longest = max((len(items) for items in queues.values()), default=0)
    return [(key, items[i]) for i in range(longest) for key, items in queues.items() if i < len(items)]


@dataclass
class Submission:
    step: Step
    backend: str
    rows: Tuple[int, ...]
    future: Optional[PrefectFuture] = None
    answered: bool = False


class Dispatcher:
    """Submits this run's tasks and collects their outcomes. Only the flow thread calls it."""

    def __init__(
        self,
        connection_keys: Mapping[str, str],
        creator: Callable[..., Any],
        root_dir: str,
        start_runner: ThreadPoolTaskRunner,
        start_workers: int,
        task_workers: int,
        row_payload: Callable[[int], Dict[str, Any]],
        label: Callable[[int], str],
        token_max_age_seconds: Optional[float] = None,
        hooks: Optional[Mapping[str, str]] = None,
        footprint: Optional[Callable[[int], Dict[str, Any]]] = None,
        collection_id: str = "results",
        tags: Optional[Mapping[str, Sequence[str]]] = None,
        create_runner: Optional[ThreadPoolTaskRunner] = None,  # workers of create tasks (default: the start ones)
        create_workers: Optional[Mapping[str, int]] = None,  # backend -> its share of the create workers
    ):
        self.inbox_id = uuid.uuid4().hex
        self._queue = open_inbox(self.inbox_id)
        self.connection_keys = dict(connection_keys)
        self.creator = creator
        self.root_dir = root_dir
        self.start_runner = start_runner
        self.create_runner = create_runner or start_runner
        self.start_workers = start_workers
        self.create_workers = dict(create_workers or {})
        self.task_workers = task_workers
        self.row_payload = row_payload
        self.label = label
        self.token_max_age_seconds = token_max_age_seconds
        self.hooks = dict(hooks or {})  # "done" / "error" -> import path
        self.footprint = footprint  # row -> what its STAC item takes from the row (tasks/results/footprints.py)
        self.collection_id = collection_id
        self.tags = {backend: tuple(t) for backend, t in (tags or {}).items()}  # backend -> its task runs' tags
        self.pending: Dict[str, Submission] = {}
        slot_waits.install()  # an interrupted run abandons its task runs still waiting for a tag's slot
        self.counters = {"create_tasks": 0, "start_tasks": 0, "poll_tasks": 0, "reconcile_tasks": 0, "download_tasks": 0,
                         "error_log_tasks": 0, "hook_tasks": 0, "crashed_tasks": 0}

    # --- submitting ---------------------------------------------------------------------
    def _track(self, step: Step, backend: str, rows: Iterable[int], submit: Callable[[str], PrefectFuture]) -> None:
        submission_id = uuid.uuid4().hex
        record = Submission(step, backend, tuple(rows))
        self.pending[submission_id] = record
        with prefect_tags(*self.tags.get(backend, ())):  # the task run is created with the tags in context
            record.future = submit(f"{self.inbox_id}/{submission_id}")
        record.future.add_done_callback(lambda _f, sid=submission_id: self._queue.put((sid, None)))

    def tag_sets(self) -> List[FrozenSet[str]]:
        """Per backend, the tags its task runs get (the backend's and the submitting context's)."""
        sets = []
        for tags in self.tags.values():
            with prefect_tags(*tags):
                sets.append(frozenset(TagsContext.get().current_tags))
        return sets

    def submit_starts(self, orders: Sequence[StartOrder]) -> None:
        """Creates and starts as separate task runs on their own workers, so a slow create never
        holds a start worker. What a free slot waits for goes first (each submission takes the
        cycle's thread a Prefect call, and a pool runs its tasks in submission order): starts of
        jobs created earlier, then creates for a free slot, then jobs created ahead. One task run
        per row, named after its tile; when many more rows wait
        than there are workers (thousands of rows, hundreds of slots), small batches, about
        START_BATCH_FACTOR per worker of the backend (`start_batch_size`)."""
        def creating_on(backend: str) -> int:
            return self.create_workers.get(backend, self.start_workers)

        kinds = (  # created earlier; created for a free slot and started in the same task; created ahead
            (lambda o: not o.creates, Step.START, start_jobs, self.start_runner, "start_tasks", lambda b: self.start_workers),
            (lambda o: o.creates and o.then_start, Step.START, start_jobs, self.create_runner, "start_tasks", creating_on),
            (lambda o: o.ahead, Step.CREATE, create_jobs, self.create_runner, "create_tasks", creating_on),
        )
        for kind, step, task, runner, counter, workers in kinds:
            mine = [o for o in orders if kind(o)]
            if mine:
                self._submit_rows(step, task, runner, mine, counter, workers)

    def _submit_rows(self, step: Step, task: Any, runner: ThreadPoolTaskRunner, orders: Sequence[StartOrder],
                     counter: str, workers: Callable[[str], int]) -> None:
        """Batches per backend, submitted taking the backends in turn: a pool runs its tasks in
        submission order, and each backend's first jobs are as urgent as another's."""
        by_backend: Dict[str, List[StartOrder]] = {}
        for order in orders:
            by_backend.setdefault(order.backend, []).append(order)
        batches = {backend: batched(mine, start_batch_size(len(mine), workers(backend)))
                   for backend, mine in by_backend.items()}
        for backend, batch in take_turns(batches):
            payload = [{**self.row_payload(o.row), "_row": o.row, "job_marker": o.marker, "job_id": o.job_id}
                       for o in batch]
            label = self.label(batch[0].row) + (f"+{len(batch) - 1}" if len(batch) > 1 else "") + f"@{backend}"
            self._track(step, backend, [o.row for o in batch], lambda inbox, payload=payload, backend=backend,
                        label=label: runner.submit(task, parameters=dict(
                            rows=payload, backend=backend, connection_key=self.connection_keys[backend],
                            creator=self.creator, label=label, inbox=inbox)))
            self.counters[counter] += 1

    def submit_poll(self, order: PollOrder, not_before: Optional[float] = None) -> None:
        """`not_before` (epoch seconds): the task lists the jobs then, not earlier (submitted ahead)."""
        jobs = {row: [job_id, status] for row, (job_id, status) in order.jobs.items()}
        self._track(Step.POLL, order.backend, (), lambda inbox: poll_backend.submit(
            order.backend, self.connection_keys[order.backend], jobs, list(order.cancel), inbox,
            self.token_max_age_seconds, not_before))
        self.counters["poll_tasks"] += 1

    def submit_reconcile(self, order: ReconcileOrder) -> None:
        self._track(Step.RECONCILE, order.backend, order.markers.values(), lambda inbox: find_marked_jobs.submit(
            order.backend, self.connection_keys[order.backend], dict(order.markers), inbox, sorted(order.unsettled)))
        self.counters["reconcile_tasks"] += 1

    def submit_finishes(self, orders: Sequence[FinishOrder], metadata: Mapping[int, Mapping[str, Any]]) -> None:
        """Downloads and error logs; `metadata`: what the poll already learned of ended jobs."""
        groups: Dict[Tuple[str, bool], List[FinishOrder]] = {}
        for order in orders:
            groups.setdefault((order.backend, order.download), []).append(order)
        for (backend, download), mine in groups.items():
            size = finish_batch_size(len(mine), self.task_workers)
            task = download_results if download else save_error_logs
            for first in range(0, len(mine), size):
                batch = mine[first:first + size]
                jobs = [{"_row": o.row, "job_id": o.job_id, **({"metadata": metadata[o.row]} if o.row in metadata else {}),
                         **({"footprint": self.footprint(o.row)} if download and self.footprint else {})}
                        for o in batch]
                label = self.label(batch[0].row) + (f"+{len(batch) - 1}" if len(batch) > 1 else "")
                extra = {"collection_id": self.collection_id} if download else {}
                self._track(Step.DOWNLOAD if download else Step.ERROR_LOGS, backend, [o.row for o in batch],
                            lambda inbox, task=task, jobs=jobs, backend=backend, label=label, extra=extra: task.submit(
                                backend, self.connection_keys[backend], jobs, self.root_dir, label, inbox, **extra))
                self.counters["download_tasks" if download else "error_log_tasks"] += 1

    def submit_hooks(self, orders: Sequence[HookOrder]) -> None:
        for order in orders:
            row = {**self.row_payload(order.row), "_row": order.row}
            self._track(Step.HOOK, order.backend, [order.row], lambda inbox, order=order, row=row: run_hook.submit(
                self.hooks[order.kind], order.kind, order.backend, self.connection_keys[order.backend], order.job_id,
                row, self.root_dir, self.label(order.row), inbox))
            self.counters["hook_tasks"] += 1

    # --- collecting ---------------------------------------------------------------------
    def collect(self, timeout: float) -> List[Outcome]:
        """Outcomes that arrived, waiting up to `timeout` for the first one."""
        outcomes: List[Outcome] = []
        try:
            item = self._queue.get(timeout=max(0.0, timeout)) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return outcomes
        self._take(item, outcomes)
        urgent = any(o.step is Step.POLL and o.rows for o in outcomes) or not self.awaiting_answers()
        deadline = time.monotonic() + (0.0 if urgent else COALESCE_SECONDS)
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return outcomes
            self._take(item, outcomes)

    def _take(self, item: Tuple[str, Optional[Outcome]], outcomes: List[Outcome]) -> None:
        submission_id, outcome = item
        record = self.pending.get(submission_id)
        if record is None:
            return
        if outcome is not None:
            record.answered = True
            if record.step in (Step.CREATE, Step.START):  # answered row by row: the others are still in it
                record.rows = tuple(row for row in record.rows if row not in outcome.rows)
            outcomes.append(outcome)
            return
        del self.pending[submission_id]  # the task run has ended
        if slot_waits.abandoned(_task_run_id(record.future)):  # at the stop, before its body: its rows are as the DB says
            return
        if not record.answered or (record.step in (Step.CREATE, Step.START) and record.rows):
            self.counters["crashed_tasks"] += 1
            outcomes.append(self._crashed(record))

    @staticmethod
    def _crashed(record: Submission) -> Outcome:
        try:
            if record.future is not None:
                record.future.wait(1)  # done already: this only records its final state
            state = record.future.state if record.future is not None else None
            message = (state.message if state is not None else None) or "task ended without an answer"
        except Exception as exc:  # noqa: BLE001 - the Prefect API may be down: the message is all we lose
            message = f"task ended without an answer ({type(exc).__name__})"
        if record.step in (Step.CREATE, Step.START, Step.DOWNLOAD, Step.ERROR_LOGS):
            rows = {row: {"crashed": message} for row in record.rows}
        elif record.step is Step.HOOK:  # user code that may have run in part: failed, rerun by --retry-failed
            rows = {row: {"error": message} for row in record.rows}
        else:
            rows = {}
        return Outcome(record.step, record.backend, rows, crashed=message)

    # --- state --------------------------------------------------------------------------
    def in_flight(self) -> InFlight:
        starting, finishing, polling, reconciling, hooking, in_start_tasks = set(), set(), set(), set(), set(), set()
        posting: set = set()
        per_backend: Dict[str, int] = {}
        for record in self.pending.values():
            if record.step in (Step.CREATE, Step.START):
                starting.update(record.rows)
                posting.update(record.rows)
                per_backend[record.backend] = per_backend.get(record.backend, 0) + 1
                if record.step is Step.START:
                    in_start_tasks.update(record.rows)
            elif record.step is Step.POLL:
                polling.add(record.backend)
            elif record.step is Step.RECONCILE:
                reconciling.add(record.backend)
                starting.update(record.rows)  # a row being looked up is not free to start
            elif record.step is Step.HOOK:
                hooking.update(record.rows)
            else:
                finishing.update(record.rows)
        return InFlight(frozenset(starting), per_backend, in_start_tasks=frozenset(in_start_tasks),
                        polling=frozenset(polling), reconciling=frozenset(reconciling),
                        finishing=frozenset(finishing), hooking=frozenset(hooking), posting=frozenset(posting))

    def awaiting_answers(self) -> bool:
        """Whether a task run still owes an outcome (a create or start task: for some of its rows);
        one that answered and is only being ended by Prefect owes none."""
        return any(not r.answered or (r.step in (Step.CREATE, Step.START) and r.rows) for r in self.pending.values())

    def busy(self, steps: Optional[Iterable[Step]] = None) -> bool:
        wanted = set(steps) if steps is not None else None
        return any(wanted is None or r.step in wanted for r in self.pending.values())

    def stop(self) -> None:
        """Tasks waiting on rate limits or outages give their rows back instead of waiting on."""
        request_stop(self.inbox_id)

    def abandon_waiting(self) -> None:
        """An interrupted run: its task runs still waiting for a tag's concurrency slot end now,
        without their body, and are forgotten (flows/run_loop/slot_waits.py); the others answer."""
        slot_waits.abandon_slot_waits({task_run_id for record in self.pending.values()
                                       if (task_run_id := _task_run_id(record.future)) is not None})

    def wake(self) -> None:
        """Make a waiting `collect` return now (the run was told to stop, a limit changed). Safe in a signal handler."""
        self._queue.put(("", None))

    def close(self) -> None:
        close_inbox(self.inbox_id)


def _task_run_id(future: Optional[PrefectFuture]) -> Optional[uuid.UUID]:
    return getattr(future, "task_run_id", None) if future is not None else None
