"""The SQL store's snapshot is kept row by row (jobdb/sql/view.py `HeldView`): after any sequence of
rows taken, changed and given back it equals a snapshot built from scratch, part for part and in
row order (the scheduler reads the parts in their order)."""
from __future__ import annotations

import random
from dataclasses import fields

from jobdb.sql.view import HeldView, snapshot_of
from jobdb.status import CREATED, CREATING, ERROR, FINISHED, NOT_STARTED, QUEUED, RUNNING, START_FAILED

STATUSES = (NOT_STARTED, CREATING, CREATED, QUEUED, RUNNING, FINISHED, ERROR, START_FAILED)


def random_record(rng: random.Random) -> dict:
    return {"status": rng.choice(STATUSES), "backend_name": rng.choice([None, "a", "b"]),
            "id": rng.choice([None, "j1", "j2"]), "job_marker": rng.choice([None, "m"]),
            "results_status": rng.choice([None, "downloaded"]), "attempt": rng.choice([None, 1, 2]),
            "postprocess_status": rng.choice([None, "done"]), "previous_job_ids": rng.choice([None, "j0"]),
            "running_start_time": None, "error_message": None, "previous_error": None}


def as_lists(snapshot) -> dict:
    return {f.name: (list(v.items()) if isinstance(v := getattr(snapshot, f.name), dict) else v)
            for f in fields(snapshot)}


def test_a_kept_snapshot_equals_one_built_from_scratch_in_row_order():
    rng = random.Random(15)
    records: dict = {}
    view = HeldView()
    flags = (False, False)
    for step in range(400):
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(60)
            kind = rng.random()
            if kind < 0.4 or i not in records:  # taken (a claim), or changed whole
                records[i] = random_record(rng)
            elif kind < 0.8:  # one change applied
                records[i].update(status=rng.choice(STATUSES), results_status=rng.choice([None, "downloaded"]))
            else:  # given back (no work left, or adopted by another run)
                del records[i]
            view.touch(i)
        if step % 50 == 49:
            flags = (rng.random() < 0.5, rng.random() < 0.5)  # the run's options set after rows were taken
        counts = {NOT_STARTED: step}
        kept = view.snapshot(records, counts, 60, *flags)
        assert as_lists(kept) == as_lists(snapshot_of(records, counts, 60, *flags)), step
