"""One account identity (tasks/accounts/identity.py): computed once when a backend connects, over HTTP
against the simulator (basic auth, and OIDC with a real provider on loopback)."""
from __future__ import annotations

import os

import pytest

from tasks.accounts import account_dir, account_id, origin, state_dir
from tasks.accounts.identity import STATE_DIR_ENV
from flows.config.params import BackendConfig
from flows.config.setup import connect_backend, connection_pool_size
from tests.flow_helpers import backend
from tests.oidc_provider import PUBLIC_CLIENT, started_oidc_simulator, started_provider



def test_origin_is_host_and_port_without_path_scheme_or_default_port():
    assert origin("https://openeo.dataspace.copernicus.eu/openeo/1.2") == "openeo.dataspace.copernicus.eu"
    assert origin("https://OpenEO.Dataspace.Copernicus.eu:443/") == "openeo.dataspace.copernicus.eu"
    assert origin("http://openeo.dataspace.copernicus.eu") == "openeo.dataspace.copernicus.eu"
    assert origin("http://127.0.0.1:8080/openeo/1.2/") == "127.0.0.1:8080"
    assert origin("http://127.0.0.1:8081") != origin("http://127.0.0.1:8080")


def test_user_id_first_then_client_id_then_user_name_then_anonymous():
    url = "https://openeo.dataspace.copernicus.eu/openeo/1.2"
    assert account_id(url, "6f1c0a2e", "cdse-public", None) == "openeo.dataspace.copernicus.eu~6f1c0a2e"
    assert account_id(url, None, "robot", None) == "openeo.dataspace.copernicus.eu~robot"
    assert account_id(url, "", None, "alice") == "openeo.dataspace.copernicus.eu~alice"
    assert account_id(url) == "openeo.dataspace.copernicus.eu~anonymous"
    # safe in a tag, a log line and a folder name: no slashes, spaces or separators from a user id
    assert account_id(url, "a b/c~d") == "openeo.dataspace.copernicus.eu~a_b_c_d"


def test_one_state_folder_setting(tmp_path, monkeypatch):
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path))
    assert state_dir() == tmp_path
    assert account_dir("127.0.0.1:8080~alice") == tmp_path / "accounts" / "127.0.0.1_8080~alice"


def test_basic_users_path_or_not_one_account_each(sim):
    alice_root = connect_backend(BackendConfig(**backend("a", sim, user="alice")))
    alice_api = connect_backend(BackendConfig(**{**backend("b", sim, user="alice"), "url": sim.url + "/openeo/1.2/"}))
    bob = connect_backend(BackendConfig(**backend("c", sim, user="bob")))
    assert alice_root.account == alice_api.account == f"{origin(sim.url)}~alice"
    assert bob.account == f"{origin(sim.url)}~bob"
    assert alice_root.pacer is alice_api.pacer and bob.pacer is not alice_root.pacer  # pacing uses it too
    assert os.environ[STATE_DIR_ENV]  # conftest: the session's own state folder


def test_a_run_s_threads_all_using_one_backend_at_once_discard_no_connection(sim, caplog):
    """Each thread of a run that may use a backend at once (start and create workers, task workers)
    has a pooled connection: with 20 start workers, 49 requests held at the backend at the same time
    all go back to the pool, and urllib3 logs no "Connection pool is full" (10k-row runs logged it
    hundreds of times with the pool of 32)."""
    import concurrent.futures
    import logging

    threads = connection_pool_size(20, 8)
    assert threads >= 2 * 20 + 8
    connection = connect_backend(BackendConfig(**backend("pool", sim, user="alice")), threads)
    caplog.set_level(logging.WARNING, logger="urllib3.connectionpool")
    sim.gates.close("GET /jobs")
    try:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            listings = [pool.submit(connection.list_jobs) for _ in range(threads)]
            assert sim.gates.wait_held(["GET /jobs"], timeout=60, count=threads) == "GET /jobs"
            sim.gates.open()
            for listing in listings:
                listing.result(timeout=60)
    finally:
        sim.gates.open()
    assert not [r for r in caplog.records if "pool is full" in r.getMessage()]


@pytest.fixture(scope="module")
def provider():
    yield from started_provider(access_token_ttl=60)


@pytest.fixture(scope="module")
def oidc_sim(provider):
    yield from started_oidc_simulator(provider)


def test_two_oidc_users_of_one_client_are_two_accounts(oidc_sim, provider, monkeypatch):
    """The old slot key was host + client id: alice and bob, logged in through the same public
    client, shared one ledger. /me tells them apart."""
    accounts = []
    for user in ("alice", "bob"):
        monkeypatch.setenv("ACCOUNTS_TEST_REFRESH", provider.issue_refresh_token(PUBLIC_CLIENT, user))
        connection = connect_backend(BackendConfig(name=user, url=oidc_sim.url, auth={
            "type": "oidc_refresh_token", "client_id": PUBLIC_CLIENT, "refresh_token_env": "ACCOUNTS_TEST_REFRESH"}))
        accounts.append(connection.account)
    assert accounts == [f"{origin(oidc_sim.url)}~alice", f"{origin(oidc_sim.url)}~bob"]


def test_client_credentials_name_the_client_and_never_the_secret(oidc_sim, monkeypatch):
    monkeypatch.setenv("ACCOUNTS_TEST_SECRET", "robot-secret")
    connection = connect_backend(BackendConfig(name="r", url=oidc_sim.url + "/openeo/1.2", auth={
        "type": "oidc_client_credentials", "client_id": "robot", "client_secret_env": "ACCOUNTS_TEST_SECRET"}))
    assert connection.describe_account()["user_id"] == "robot"
    assert connection.account == f"{origin(oidc_sim.url)}~robot"
    assert "secret" not in connection.account


# --- fair shares of an account's slots (jobdb/fair_shares.py, tasks/accounts/slots.py) -------------------
from jobdb import slot_waiting as waiting_module  # noqa: E402
from jobdb.fair_shares import fair_shares, others_with_reservations  # noqa: E402
from tasks.accounts.slots import AccountSlots  # noqa: E402

ACCOUNT = "127.0.0.1:9~alice"


def test_fair_shares_split_evenly_leftovers_to_the_first_and_unwanted_slots_to_others():
    assert fair_shares(4, [4, 4]) == [2, 2]
    assert fair_shares(5, [5, 5]) == [3, 2]  # the claimant (first) gets the odd slot
    assert fair_shares(4, [4, 4, 4]) == [2, 1, 1]
    assert fair_shares(4, [1, 4]) == [1, 3]  # wants less than its share: the rest goes to the other
    assert fair_shares(4, [0, 4, 4]) == [0, 2, 2]
    assert fair_shares(4, [1, 1]) == [1, 1]  # nobody wants more: two slots stay free
    assert fair_shares(0, [3, 3]) == [0, 0]


def test_a_claim_counts_others_holding_or_their_unused_share_whichever_is_more():
    # A holds all 4 (came first), B arrives wanting 4: B starts nothing until A is below its share
    assert others_with_reservations(4, 4, [(4, 4)]) == 4
    # A (holding 2 of its 4 wanted, after two jobs ended) sees B's unused share reserved
    assert others_with_reservations(4, 4, [(0, 4)]) == 2
    # B wants only 1: A may use the other 3
    assert others_with_reservations(4, 4, [(0, 1)]) == 1
    # a run that wants nothing new reserves nothing beyond what it holds
    assert others_with_reservations(4, 4, [(3, 3)]) == 3


class Run:
    """A run's use of the ledger as the cycle makes it: take what is free, up to what it wants."""

    def __init__(self, run_id: str, state, limit: int = 4, note=None):
        self.slots = AccountSlots({"b": ACCOUNT}, run_id, note=note or {"flow_run_id": f"fr-{run_id}"},
                                  state_dir=state, limits={"b": limit})
        self.limit, self.holding, self.waiting = limit, 0, 0

    def claim(self) -> int:
        def decide(others):
            free = max(0, self.limit - self.holding - others["b"])
            started = min(free, self.waiting)
            return started, {"b": self.holding + started}

        started = self.slots.claim(decide, wants={"b": self.holding + self.waiting})
        self.holding += started
        self.waiting -= started
        return started


def test_two_holders_then_a_third_arrives_shares_come_out_fair(tmp_path):
    a, b, c = (Run(r, tmp_path) for r in ("run-a", "run-b", "run-c"))
    try:
        a.waiting = 10
        assert a.claim() == 4  # alone: all the account's slots
        b.waiting = 10
        assert b.claim() == 0  # A holds them all; B's want is recorded
        a.holding -= 2  # two of A's jobs end
        assert a.claim() == 0  # the freed slots are B's unused share
        assert b.claim() == 2
        assert (a.holding, b.holding) == (2, 2)
        c.waiting = 10
        assert c.claim() == 0  # nothing free: C records its want
        a.holding -= 1
        b.holding -= 1
        assert b.claim() == 0  # at its share of 3 wanting runs: C's share is reserved
        assert a.claim() == 1  # below its share; the odd slot goes to whoever asks
        assert c.claim() == 1
        assert sorted((a.holding, b.holding, c.holding)) == [1, 1, 2]
        assert a.holding + b.holding + c.holding == 4
    finally:
        for run in (a, b, c):
            run.slots.close()


def test_a_run_that_wants_less_leaves_the_rest_and_no_run_exceeds_the_limit(tmp_path):
    a, b = Run("run-a", tmp_path), Run("run-b", tmp_path)
    try:
        b.waiting = 1
        assert b.claim() == 1
        a.waiting = 10
        assert a.claim() == 3  # B wants 1: A takes the 3 others
        b.waiting = 10  # B has more rows now, but nothing is free: nobody is cancelled
        assert b.claim() == 0
        assert a.holding + b.holding == 4
        a.holding -= 3
        assert a.claim() == 2 and b.claim() == 1  # each up to its share: 2 + 2
        assert (a.holding, b.holding) == (2, 2)
    finally:
        a.slots.close()
        b.slots.close()


def test_without_limits_first_come_first_served_and_wants_capped_at_the_limit(tmp_path):
    plain = AccountSlots({"b": ACCOUNT}, "run-plain", state_dir=tmp_path)
    fair = Run("run-fair", tmp_path)
    try:
        fair.waiting = 50
        fair.claim()
        assert plain.claim(lambda others: (others, {"b": 0})) == {"b": 4}  # holdings only, no reservation
        entry = (tmp_path / "accounts" / ACCOUNT.replace(":", "_") / "run-fair.slots.json").read_text()
        assert '"wants": 4' in entry and '"holding": 4' in entry
    finally:
        plain.close()
        fair.slots.close()


def test_waiting_for_slots_names_the_holders_once_then_at_most_every_minute(tmp_path, monkeypatch):
    a = Run("run-a", tmp_path, note={"flow_run_id": "5c0e-flow", "job_db": "/data/a.parquet"})
    b = Run("run-b", tmp_path)
    try:
        a.waiting = 4
        a.claim()
        assert a.slots.waiting_notices() == []
        b.waiting = 3
        b.claim()
        notices = b.slots.waiting_notices()
        assert len(notices) == 1
        assert "5c0e-flow" in notices[0] and "/data/a.parquet" in notices[0] and "holds 4" in notices[0]
        assert "this run holds 0, wants 3" in notices[0]
        assert ACCOUNT in notices[0]
        assert b.slots.waiting_by_backend() == {"b": b.slots.holders[ACCOUNT][0].describe()}
        b.claim()
        assert b.slots.waiting_notices() == []  # still waiting: not every cycle
        monkeypatch.setattr(waiting_module, "NOTICE_EVERY_SECONDS", 0.0)
        b.claim()
        assert len(b.slots.waiting_notices()) == 1  # ... but again after the interval
        a.holding = 0
        a.claim()
        assert b.claim() == 3
        assert b.slots.waiting_by_backend() == {} and b.slots.waiting_notices() == []
    finally:
        a.slots.close()
        b.slots.close()


def test_a_run_wants_what_it_holds_plus_the_rows_it_could_start_there():
    from flows.rules.plan import BackendPolicy, Situation
    from flows.rules.starts import slots_wanted
    from jobdb.store import Snapshot

    snapshot = Snapshot(rows=9, waiting=(0, 1, 2, 3, 4), pinned={0: "b", 1: "c"}, holding={"b": 2, "c": 1})
    backends = {"b": BackendPolicy(4), "c": BackendPolicy(4), "refusing": BackendPolicy(4, accepting=False)}
    situation = Situation(backends=backends, now=0.0)
    # 3 rows may go anywhere; one is pinned to each of b and c; nothing new where credits ran out
    assert slots_wanted(snapshot, situation) == {"b": 2 + 3 + 1, "c": 1 + 3 + 1, "refusing": 0}
    stopping = Situation(backends=backends, now=0.0, starting_allowed=False)
    assert slots_wanted(snapshot, stopping) == {"b": 2, "c": 1, "refusing": 0}  # a stopping run starts nothing


def test_the_display_shows_who_holds_the_slots_a_run_waits_for(caplog):
    import io
    import logging

    from rich.console import Console

    from flows.console.progress_display import LiveDisplay, PlainDisplay

    by_backend = {"cdse": {"not_started": 6}}
    holders = {"cdse": "flow run 5c0e (job DB /data/a.parquet, worker-1 pid 42) holds 4"}
    logger = logging.getLogger("test.accounts.display")
    plain = PlainDisplay(logger, every_seconds=0)
    with caplog.at_level(logging.INFO, logger="test.accounts.display"):
        plain.waiting_for_slots(holders)
        plain.update(by_backend, 6, 5.0)
        plain.waiting_for_slots({})
        plain.update({"cdse": {"not_started": 5, "running": 1}}, 6, 6.0)
    lines = [r.getMessage() for r in caplog.records]
    assert "cdse: waiting for slots held by flow run 5c0e (job DB /data/a.parquet" in lines[0]
    assert "waiting" not in lines[1]
    out = io.StringIO()
    live = LiveDisplay(Console(file=out, width=200), refresh_per_second=50)
    live.waiting_for_slots(holders)
    live.update(by_backend, 6, 5.0)
    live.close()
    shown = " ".join(out.getvalue().split())  # the caption wraps at the table's width
    assert "cdse: waiting for slots held by flow run 5c0e (job DB /data/a.parquet, worker-1 pid 42) holds 4" in shown


def test_start_turns_live_in_the_accounts_folder_and_are_shared_by_processes(tmp_path):
    """Two processes pacing one account's starts, given only the state folder: one schedule."""
    import subprocess
    import sys
    from pathlib import Path

    from tasks.accounts.pacing import StartSchedule

    script = ("from tasks.accounts.pacing import StartSchedule\n"
              f"s = StartSchedule({ACCOUNT!r}, 0.3)\n"
              "print(*[s.reserve() for _ in range(3)])\n")
    env = {**os.environ, STATE_DIR_ENV: str(tmp_path), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    turns = sorted(float(t) for proc in procs for t in proc.communicate(timeout=600)[0].split())
    assert all(proc.returncode == 0 for proc in procs)
    assert len(turns) == 6 and min(b - a for a, b in zip(turns, turns[1:])) >= 0.3 - 1e-6
    assert (tmp_path / "accounts" / "127.0.0.1_9~alice" / "starts.json").exists()
    assert StartSchedule(ACCOUNT, 0.3, tmp_path / "elsewhere").path.parent == tmp_path / "elsewhere"
