"""How long the cycle waits for outcomes (flows/run_loop/dispatcher.py): after the first one, a
short while for others (thousands of rows: one cycle per outcome would be thousands of cycles),
but not when no task run owes an answer any more: the run's last downloads answered, nothing
else can come, and the run's end is not put off (issue 21's tail). No Prefect: the records and
the inbox are the dispatcher's own; the queue's waits are recorded, not timed."""
from __future__ import annotations

import queue

import pytest

from flows.run_loop.dispatcher import COALESCE_SECONDS, Dispatcher, Submission
from tasks.outcome import Outcome, Step


class RecordingQueue(queue.Queue):
    """The inbox's queue, recording how long each `get` may wait."""

    def __init__(self):
        super().__init__()
        self.waits = []

    def get(self, block=True, timeout=None):
        self.waits.append(timeout if block else 0.0)
        return super().get(block, timeout)


@pytest.fixture
def dispatcher():
    d = Dispatcher({}, None, "", None, 1, 1, row_payload=lambda row: {}, label=str)
    d._queue = RecordingQueue()
    yield d
    d.close()


def download_answers(d: Dispatcher, rows_by_submission):
    for sid, rows in rows_by_submission.items():
        d.pending[sid] = Submission(Step.DOWNLOAD, "a", tuple(rows))
    for sid, rows in rows_by_submission.items():
        yield sid, Outcome(Step.DOWNLOAD, "a", {row: {"assets": 1} for row in rows})


def test_the_last_answer_is_taken_without_waiting_for_more(dispatcher):
    (sid, outcome), = download_answers(dispatcher, {"s1": [0]})
    dispatcher._queue.put((sid, outcome))
    assert dispatcher.collect(5.0) == [outcome]
    # the first get waits for the outcome; after it, none waits: no task run owes an answer
    assert dispatcher._queue.waits[0] == 5.0 and all(w == 0.0 for w in dispatcher._queue.waits[1:])


def test_while_another_task_run_owes_its_answer_others_are_waited_for_a_while(dispatcher):
    answers = list(download_answers(dispatcher, {"s1": [0], "s2": [1]}))
    dispatcher._queue.put(answers[0])
    assert dispatcher.collect(5.0) == [answers[0][1]]
    assert 0.0 < dispatcher._queue.waits[1] <= COALESCE_SECONDS  # s2 may answer within the coalescing wait
