"""One retry layer per request (tasks/retry_policy.py): against the simulator over HTTP, a GET that
meets only failures (503s, 429s, both) is sent at most `RUN.attempts` times, every wait stays
under `RUN.max_wait` (a Retry-After of an hour included), so the request ends within the bound
README.md documents. Waits are recorded, not slept: no test here depends on the clock."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from flows.config.params import BackendConfig
from flows.config.setup import connect_backend
from simulator import SimulatorConfig, start_simulator
from tasks.accounts.identity import STATE_DIR_ENV
from tasks.connections import IDEMPOTENT_RETRY, use_pacing
from tasks.retry_policy import RUN, SETUP, BudgetRetry, parse_retry_after

ROUTE = "GET /jobs/{id}"


class RecordingPacer:
    """The account's pacer, reduced to what a failed request asks of it: pauses, recorded."""

    def __init__(self):
        self.pauses = []

    def acquire(self, is_start: bool):
        return self

    def release(self) -> None:
        pass

    def release_with(self, response) -> None:
        pass

    def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)


@pytest.fixture
def waits(monkeypatch):
    """urllib3's waits of our retry budget, recorded instead of slept."""
    recorded = []

    def backoff(self):
        recorded.append(self.get_backoff_time())

    def retry_after(self, response):
        seconds = self.get_retry_after(response)
        if seconds:
            recorded.append(seconds)
        return bool(seconds)

    monkeypatch.setattr(BudgetRetry, "_sleep_backoff", backoff)
    monkeypatch.setattr(BudgetRetry, "sleep_for_retry", retry_after)
    return recorded


@pytest.fixture
def paced(tmp_path, monkeypatch):
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))
    sim = start_simulator(SimulatorConfig(queue_time=60, run_time=60, retry_after=3600))
    os.environ["RETRY_TEST_PASSWORD"] = sim.config.password
    connection = connect_backend(BackendConfig(name="b", url=sim.url, auth={
        "type": "basic", "username": "alice", "password_env": "RETRY_TEST_PASSWORD"}))
    job_id = connection.create_job({"s": {"process_id": "save_result", "arguments": {"data": 1, "format": "GTiff"},
                                          "result": True}}, title="t").job_id
    pacer = RecordingPacer()
    use_pacing(connection, pacer, IDEMPOTENT_RETRY)
    yield sim, connection, job_id, pacer
    sim.stop()


def sends(sim) -> int:
    return sum(n for key, n in sim.counters()["requests"].items() if key.startswith(ROUTE + " "))


def fail_one_get(sim, connection, job_id):
    """How often one GET was sent, and the status of its last answer."""
    before = sends(sim)
    with pytest.raises(Exception) as info:
        connection.get(f"/jobs/{job_id}", expected_status=200)
    return sends(sim) - before, getattr(info.value, "http_status_code", None)


@pytest.mark.parametrize("faults", ["503", "429", "503+429"])
def test_a_failing_request_ends_within_the_documented_bound(paced, waits, faults):
    sim, connection, job_id, pacer = paced
    if faults == "429":  # every request of the route beyond the first refused, Retry-After: 1 h
        sim.configure(rate_limit_per_second=1e-6, rate_limit_burst=1, rate_limit_routes=ROUTE)
        connection.get(f"/jobs/{job_id}", expected_status=200)  # takes the bucket's only token
    elif faults == "503+429":  # the first 3 sends pass the bucket and meet a 503, the rest a 429
        sim.configure(rate_limit_per_second=1e-6, rate_limit_burst=3, rate_limit_routes=ROUTE, p_5xx=1.0)
    else:
        sim.configure(p_5xx=1.0)
    t0 = time.monotonic()
    sent, last = fail_one_get(sim, connection, job_id)
    answered_in = (time.monotonic() - t0) / sent  # each failed answer came at once: the loopback is fast
    assert sent == RUN.attempts  # one budget, whatever failed: no layer multiplies another
    assert last in (429, *RUN.statuses)
    if faults == "503+429":  # both layers resent, from one budget
        answers = sim.counters()["requests"]
        assert sum(n for k, n in answers.items() if k.startswith(ROUTE + " 5")) == 3
        assert answers[f"{ROUTE} 429"] == RUN.attempts - 3
    # a wait before each resend; a last 429 also pauses the account (for its other requests, not this one)
    own_waits = waits + (pacer.pauses[:-1] if last == 429 else pacer.pauses)
    assert len(own_waits) == RUN.attempts - 1 and max(waits + pacer.pauses) <= RUN.max_wait
    if "429" in faults:
        assert RUN.max_wait in pacer.pauses  # the backend asked for an hour; the account waited the cap
    # what this request took (its waits recorded, not slept) is within the documented worst case
    assert sent * answered_in + sum(own_waits) <= RUN.worst_case_seconds(answer_seconds=answered_in)


def test_a_post_is_never_resent_by_the_request_layer(paced, waits):
    sim, connection, job_id, pacer = paced
    sim.configure(p_5xx=1.0, seed=1)
    before = sim.counters()["requests"]
    with pytest.raises(Exception):
        connection.post(f"/jobs/{job_id}/results", expected_status=202)
    after = sim.counters()["requests"]
    posted = {k: after[k] - before.get(k, 0) for k in after if k.startswith("POST /jobs/{id}/results")
              and after[k] != before.get(k, 0)}
    assert sum(posted.values()) == 1 and not waits and not pacer.pauses


def test_the_readme_table_states_the_policy():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Retries"):]
    for policy in (RUN, SETUP):
        row = next(line for line in section.splitlines() if line.startswith(f"| {policy.name} "))
        assert f"{policy.attempts} sends" in row and f"{policy.max_wait:g} s" in row, row
        assert re.search(rf"\b{policy.worst_case_seconds():g} s\b", row), row


def test_retry_after_parsing_is_urllib3s():
    assert parse_retry_after("12") == 12 and parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert 0 <= parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") <= 0.001  # a date in the past: at once
