"""Prefect's tag-limit check kept off the task runs' path (flows/run_loop/tag_limits.py, issue 21):
the run renews Prefect's "no limit on this tag set" memory only for tag sets without a limit on the
server; an operator's limit is left to Prefect's own check."""
from __future__ import annotations

import threading
import uuid

from flows.run_loop.tag_limits import TagLimitWatch, limit_names, prefect_memory


def test_tag_sets_without_a_limit_skip_the_servers_check_and_a_limited_one_does_not(prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    free, capped = f"openeo-backend:free-{uuid.uuid4().hex[:6]}", f"openeo-backend:capped-{uuid.uuid4().hex[:6]}"
    cache, lock = {}, threading.Lock()
    watch = TagLimitWatch([("openeo", free), ("openeo", capped)], memory=(cache, lock))
    watch.refresh()
    assert cache == {frozenset({"tag:openeo", f"tag:{free}"}): True, frozenset({"tag:openeo", f"tag:{capped}"}): True}

    with get_client(sync_client=True) as client:  # an operator limits one backend's task runs
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=f"tag:{capped}", limit=1))
    assert f"tag:{capped}" in limit_names()
    watch.refresh()
    assert cache == {frozenset({"tag:openeo", f"tag:{free}"}): True}  # the limited set goes through Prefect's check


def test_an_unreadable_server_changes_nothing_and_the_watch_stops():
    cache, lock = {}, threading.Lock()

    def down():
        raise ConnectionError("no API")

    watch = TagLimitWatch([("openeo", "openeo-backend:a")], interval=0.01, read_limits=down, memory=(cache, lock))
    watch.start()
    watch.close()
    watch._thread.join(30)  # close() does not wait for the thread: it ends at its next look
    assert cache == {} and not watch._thread.is_alive()


def test_prefect_keeps_the_memory_the_watch_renews():
    """If a Prefect upgrade moves it, this fails (the watch itself would then silently do nothing)."""
    assert prefect_memory() is not None


def test_the_watch_reads_the_limits_of_the_server_its_caller_uses():
    """The CLI names its own server in a `temporary_settings` context, not in the environment: a
    watch thread without the caller's context asked another server (a temporary one it started,
    which outlived the CLI) and renewed "no limit" for tag sets an operator had limited."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    seen, read_twice = [], threading.Event()

    def read():
        seen.append(PREFECT_API_URL.value())
        if len(seen) >= 2:
            read_twice.set()
        return frozenset()

    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        watch = TagLimitWatch([("openeo", "openeo-backend:a")], interval=0.01, read_limits=read,
                              memory=({}, threading.Lock())).start()
    try:
        assert read_twice.wait(60), "the watch thread never read the limits"
    finally:
        watch.close()
    assert set(seen) == {"http://127.0.0.1:9/api"}, seen  # the first read (the caller's thread) and the thread's


def slow_after_the_first_read():
    """A limit reader whose reads after the first wait for `answer` (a loaded server); `reading`
    is set once such a read is out. Returns (read_limits, reading, answer)."""
    reading, answer = threading.Event(), threading.Event()
    reads = []

    def read_limits():
        reads.append(1)
        if len(reads) > 1:
            reading.set()
            answer.wait(60)  # the server takes its time
        return frozenset()

    return read_limits, reading, answer


def test_a_read_the_server_answers_late_does_not_let_prefects_memory_lapse():
    """Prefect forgets "no limit" after 5 s; a read answered later than that (a loaded server:
    11-150 s) must not leave every task run of the backend waiting behind Prefect's own request
    to that server: the memory is renewed from the last answer meanwhile."""
    import time

    cache, lock = {}, threading.Lock()
    slow_after_the_first, reading, answer = slow_after_the_first_read()

    key = frozenset({"tag:openeo", "tag:openeo-backend:a"})
    watch = TagLimitWatch([("openeo", "openeo-backend:a")], interval=0.01, read_limits=slow_after_the_first,
                          memory=(cache, lock))
    watch.start()
    try:
        assert reading.wait(30)  # the second read is under way and does not answer
        with lock:
            cache.clear()  # what Prefect's 5 s memory does meanwhile
        for _ in range(3000):  # until renewed (bounded; pacing, not synchronisation)
            with lock:
                if cache.get(key):
                    break
            time.sleep(0.01)
        with lock:
            renewed = cache.get(key)
        assert renewed and not answer.is_set()  # renewed while the read still waits
    finally:
        answer.set()
        watch.close()


def test_close_does_not_wait_for_a_read_the_server_has_not_answered():
    """At a stop the watch is closed while its read may wait for a loaded server (seconds; a
    1500-row stop waited for it): close() tells the threads to end and returns; the read's late
    answer renews nothing."""
    import time

    cache, lock = {}, threading.Lock()
    slow_after_the_first, reading, answer = slow_after_the_first_read()

    watch = TagLimitWatch([("openeo", "openeo-backend:a")], interval=0.01, read_limits=slow_after_the_first,
                          memory=(cache, lock)).start()
    try:
        assert reading.wait(30)  # the second read is out and does not answer
        t0 = time.monotonic()
        watch.close()
        closing = time.monotonic() - t0
        watch._renewer.join(30)  # no I/O: it ends at once
        with lock:
            cache.clear()
        answer.set()
        watch._thread.join(30)
        # joined before: 1 s, the join's timeout, with the read still out; now microseconds
        assert closing < 0.5, f"close() took {closing:.2f} s: it waited for the read"
        assert cache == {}, "the read answered after close() renewed Prefect's memory"
    finally:
        answer.set()
        watch.close()
