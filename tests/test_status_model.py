"""The one status model (jobdb/status.py): every update the rules can make is a legal transition,
the stores refuse an illegal one, foreign statuses read as ours, and no module spells a status."""
from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pandas as pd
import pytest

from flows.rules.bookkeeping import RowNow, effects_of
from flows.rules.plan import BackendPolicy, InFlight, Situation
from flows.rules.scheduler import plan_cycle
from jobdb import JobDatabase, JobDbError
from jobdb import status as st
from jobdb.interface import open_store
from jobdb.sql.campaign import SqlDatabase
from jobdb.sql.view import snapshot_of
from jobdb.store import JobStore
from tasks.outcome import Outcome, Step

ROOT = Path(__file__).resolve().parents[1]


# --- every row the scheduler may see -----------------------------------------------------
def every_row_kind() -> pd.DataFrame:
    """One row per status × backend (none / a / b) × results state × attempt × hook state."""
    records = []
    for status, backend, results, attempt, hook in itertools.product(
            st.STATUSES, (None, "a", "b"), (None, st.RESULTS_DOWNLOADED, st.RESULTS_FAILED, st.RESULTS_LOGS_SAVED),
            (None, 1, 3), (None, st.POSTPROCESS_DONE, st.POSTPROCESS_FAILED)):
        has_job = status in st.NEEDS_JOB_ID or (status in st.TERMINAL and status != st.SKIPPED and backend)
        records.append({
            "tile_id": f"T{len(records)}", "status": status, "backend_name": backend,
            "id": f"j-{len(records)}" if has_job else None,
            "job_marker": f"m-{len(records)}" if status == st.CREATING and backend else None,
            "results_status": results, "attempt": attempt, "postprocess_status": hook,
            "error_message": "boom" if status in st.FAILED else None,
            "previous_error": "boom" if attempt == 3 else None,
            "running_start_time": "2020-01-01T00:00:00Z" if status == st.RUNNING else None,
        })
    return pd.DataFrame(records)


def situations():
    for allowed, a_accepting, max_attempts, hooks, download in itertools.product(
            (True, False), (True, False), (1, 3), (frozenset(), frozenset({st.HOOK_DONE, st.HOOK_ERROR})),
            (True, False)):
        yield Situation(
            backends={"a": BackendPolicy(2, accepting=a_accepting), "b": BackendPolicy(10**6, max_parallel_starts=3),
                      "c": BackendPolicy(5)},
            now=100.0, holds={0: 200.0}, starting_allowed=allowed, poll_due=True, download=download,
            cancel_after=60.0, utc_now=pd.Timestamp("2024-01-01", tz="UTC").to_pydatetime(), hooks=hooks,
            max_attempts=max_attempts)


def snapshots(tmp_path):
    df = every_row_kind()
    path = tmp_path / "all.parquet"
    JobDatabase.create(path, df)
    store = JobStore.open(path)
    store.track_hooks = store.track_retries = True
    records = {i: {k: (None if pd.isna(v) else v) for k, v in row.items()} for i, row in df.iterrows()}
    counts = df["status"].value_counts().to_dict()
    return df, [store.snapshot(), snapshot_of(records, counts, len(df), True, True)]


def test_every_update_the_scheduler_makes_is_a_legal_transition(tmp_path):
    df, views = snapshots(tmp_path)
    seen = set()
    for snapshot, situation in itertools.product(views, situations()):
        plan = plan_cycle(snapshot, situation, InFlight(), lambda row, attempt: f"m{row}-{attempt}")
        assert not set(plan.updates) & set(plan.intents)  # applied one after the other: never the same row
        for row, update in {**plan.updates, **plan.intents}.items():
            old, new = df.at[row, "status"], update.get("status", df.at[row, "status"])
            assert st.is_legal(old, new), f"row {row}: {old} -> {new} ({situation})"
            seen.add((old, new))
    # the drive reaches every move the scheduler decides (so the test covers them all)
    assert {(st.NOT_STARTED, st.CREATING), (st.CREATED, st.QUEUED_FOR_START), (st.CREATING, st.NOT_STARTED),
            (st.ERROR, st.NOT_STARTED), (st.START_FAILED, st.NOT_STARTED), (st.CREATED, st.NOT_STARTED)} <= seen


# --- every fact a task may report ---------------------------------------------------------
# What tasks/start.py answers for a row of a job it starts (`queued_for_start`: its job exists) ...
STARTS_OF_A_JOB = [
    *({"status": s, "id": "j", "start_time": "t", "error_message": None} for s in st.BACKEND_STARTED),
    {"status": st.CREATED, "id": "j", "handed_back": "later"},
    {"status": st.CREATED, "id": "j", "handed_back": "402", "refused": "402"},
    {"status": st.START_FAILED, "id": "j", "error_message": "start failed: bad"},
    {"crashed": "boom"},
]
# ... and for a row whose job it creates first (`creating`)
START_FACTS = STARTS_OF_A_JOB + [
    {"status": st.CREATED, "id": "j", "started_by_callback": False},
    {"status": st.NOT_STARTED, "handed_back": "429"},
    {"status": st.NOT_STARTED, "handed_back": "402", "refused": "402"},
    {"status": st.SKIPPED, "error_message": None},
    {"status": st.START_FAILED, "error_message": "bad"},
]
POLL_FACTS = [*({"status": s} for s in st.BACKEND_STATUSES), {"status": st.ERROR, "error": "gone"},
              {"status": st.FINISHED, "metadata": {"usage": {}, "costs": 1}}, {"status": "weird"}, {"status": None}]
RECONCILE_FACTS = [{"job": None}, *({"job": {"id": "j", "status": s}} for s in (*st.BACKEND_STATUSES, "weird"))]
OTHER_FACTS = {Step.DOWNLOAD: [{"item": {"id": "x"}}, {"error": "x"}], Step.ERROR_LOGS: [{"error_message": "x"}, {"error": "x"}],
               Step.HOOK: [{}, {"error": "x"}]}


def bookkeeping_moves():
    """(old, new) of every status update bookkeeping makes, over every status and every fact."""
    facts = {Step.START: START_FACTS, Step.POLL: POLL_FACTS, Step.RECONCILE: RECONCILE_FACTS, **OTHER_FACTS}
    for (step, step_facts), old, pinned in itertools.product(facts.items(), st.STATUSES, (False, True)):
        if step is Step.START and old == st.QUEUED_FOR_START:
            step_facts = STARTS_OF_A_JOB  # (a start of an existing job never creates or skips)
        for fact in step_facts:
            effects = effects_of(Outcome(step, "a", {0: fact}), lambda row: RowNow(old, None, pinned))
            for row, update in effects.updates.items():
                if step in OTHER_FACTS:
                    assert "status" not in update
                new = update.get("status", old)
                assert [c for c in effects.changes if c[0] == row] == ([(row, old, new)] if new != old else [])
                yield old, new, (step, fact)


def test_every_update_bookkeeping_makes_is_a_legal_transition():
    moves = list(bookkeeping_moves())
    for old, new, why in moves:
        assert st.is_legal(old, new), f"{old} -> {new} from {why}"
    made = {(old, new) for old, new, _ in moves if old != new}
    # The cycle merges a cycle's outcomes (a later one sees the earlier one's status), then applies
    # them in one update: two moves in a row must be a legal move too.
    for (a, b), (b2, c) in itertools.product(made, made):
        if b == b2 and a != c:
            assert st.is_legal(a, c), f"{a} -> {b} -> {c}"
    assert (st.CREATING, st.QUEUED) in made and (st.RUNNING, st.FINISHED) in made
    assert not {old for old, _ in made} & {st.NOT_STARTED, *st.TERMINAL}  # ended rows are the scheduler's


def test_the_table_is_what_the_docs_say():
    assert set(st.TRANSITIONS) == set(st.STATUSES)
    assert not st.TRANSITIONS[st.FINISHED] and not st.TRANSITIONS[st.SKIPPED]
    assert all(st.TRANSITIONS[s] == {st.NOT_STARTED} for s in st.FAILED)
    assert st.is_legal(st.FINISHED, st.FINISHED)  # no change is always legal
    with pytest.raises(st.IllegalTransition, match="'finished' -> 'running'"):
        st.check_transitions({4: {"status": st.RUNNING}}, lambda row: st.FINISHED)


# --- the stores enforce it ----------------------------------------------------------------
def illegal_then_legal(store, row: int):
    before = store.value(row, "status")
    with pytest.raises(st.IllegalTransition, match=r"'not_started' -> 'finished'"):
        store.apply({row: {"status": st.CREATING, "backend_name": "a", "job_marker": "m"},
                     row + 1: {"status": st.FINISHED, "id": "j-1"}})
    assert store.value(row, "status") == before and store.value(row + 1, "status") == st.NOT_STARTED
    store.apply({row: {"status": st.CREATING, "backend_name": "a", "job_marker": "m"}})
    assert store.value(row, "status") == st.CREATING


def test_the_file_store_refuses_an_illegal_transition(tmp_path):
    path = tmp_path / "jobs.csv"
    JobDatabase.create(path, pd.DataFrame({"tile_id": ["A", "B", "C"]}))
    illegal_then_legal(JobStore.open(path), 0)


def test_the_sql_store_refuses_an_illegal_transition(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    SqlDatabase.open(url, create=True).create_campaign("eu", pd.DataFrame({"tile_id": ["A", "B", "C"]}))
    store = open_store(url, "eu", str(tmp_path))
    store.lock.acquire("run")
    try:
        store.snapshot()  # claims the waiting rows
        illegal_then_legal(store, 0)
    finally:
        store.lock.release()


# --- statuses from outside ----------------------------------------------------------------
def test_statuses_written_by_openeos_manager_or_a_backend_read_as_ours(tmp_path, caplog):
    path = tmp_path / "from_openeo.csv"
    path.write_text("tile_id,status,id,backend_name\n"
                    "A,queued_for_start_failed,j-a,x\nB,submitted,j-b,x\nC,paused_by_vendor,j-c,x\nD,finished,j-d,x\n")
    db = JobDatabase.open(path)
    assert db.df["status"].tolist() == [st.CREATED, st.QUEUED, st.QUEUED, st.FINISHED]
    assert "paused_by_vendor" in caplog.text and "read as 'queued'" in caplog.text
    no_id = tmp_path / "no_id.csv"
    no_id.write_text("tile_id,status\nA,not_started\nB,paused_by_vendor\n")
    before = no_id.read_bytes()
    with pytest.raises(JobDbError, match="'paused_by_vendor'.*row 1") as info:
        JobDatabase.open(no_id)
    assert "\n" not in str(info.value) and no_id.read_bytes() == before


def test_backend_statuses():
    assert {s: st.from_backend(s) for s in st.BACKEND_STATUSES} == {s: s for s in st.BACKEND_STATUSES}
    assert st.from_backend("submitted") == st.QUEUED
    assert st.from_backend("paused_by_vendor") is None and st.from_backend(None) is None
    assert st.from_backend(st.CREATING) is None  # ours, never a backend's


# --- no status spelled outside jobdb/status.py ---------------------------------------------
SWEPT = ("flows", "tasks", "jobdb", "bench")
# Words that spell a status but name something else: (file, word) -> how many, and what they are.
NOT_STATUSES = {
    ("jobdb/database.py", "error"): 2,  # create(on_exists="error"), as openeo's create_job_db
    ("flows/tile_area.py", "error"): 6,  # the same on_exists choice
    ("tasks/openeo_calls.py", "error"): 1,  # the log level asked of GET /jobs/{id}/logs
    ("tasks/results/items.py", "created"): 1,  # STAC item properties
    ("tasks/results/rebuild.py", "created"): 1,
    ("tasks/poll.py", "created"): 1,  # LISTING_TIMES: a listing entry's time fields
    ("flows/run_loop/ending.py", "skipped"): 2,  # a run's outcome (flows/run_loop/outcomes.py), not a row's status
    ("bench/quota.py", "start_failed"): 1,  # a column heading of the printed table
}


def status_literals(path: Path):
    """String constants equal to a job status, except dictionary keys and subscripts (field names)
    and f-string parts."""
    tree = ast.parse(path.read_text())
    exempt = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            exempt.update(id(k) for k in node.keys if k is not None)
        elif isinstance(node, ast.Subscript):
            exempt.add(id(node.slice))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("get", "pop", "setdefault") and node.args:
            exempt.add(id(node.args[0]))
        elif isinstance(node, ast.Compare) and isinstance(node.ops[0], (ast.In, ast.NotIn)) \
                and isinstance(node.left, ast.Constant) and isinstance(node.comparators[0], ast.Name):
            exempt.add(id(node.left))  # `"error" in fact`: a key
        elif isinstance(node, ast.JoinedStr):
            exempt.update(id(v) for v in node.values)
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in st.STATUSES and id(node) not in exempt]


def test_no_status_literal_outside_the_status_module():
    found, allowed = [], dict(NOT_STATUSES)
    for folder in SWEPT:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "jobdb" / "status.py":
                continue
            name = path.relative_to(ROOT).as_posix()
            for line, value in status_literals(path):
                if allowed.get((name, value), 0) > 0:
                    allowed[(name, value)] -= 1
                else:
                    found.append(f"{name}:{line}: {value!r}")
    assert not found, "use the constants of jobdb/status.py:\n" + "\n".join(found)
