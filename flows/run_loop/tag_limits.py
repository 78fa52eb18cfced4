"""Prefect's check for tag concurrency limits, kept off the task runs' path (issue 21).

Before a tagged task run's body, Prefect 3.9's task engine asks the server for a slot of every
`tag:<tag>` limit, through one client-side service per tag set that handles one request at a
time, and remembers "no limit on this tag set" for 5 s (`_no_limits_cache` in
`prefect.concurrency.services`). So every 5 s each backend's task runs (its polls, starts,
creates, downloads: one tag set) wait behind one request, and that request takes seconds when
the server is busy recording the run's own task runs (bench/README.md, issue 21: 2-15 s, running
slots idle up to a minute, a backend's first jobs 15 s late).

`TagLimitWatch` asks the same question beside the run instead: a thread reads the server's
concurrency limits every `WATCH_SECONDS` (one API call for all backends) and renews Prefect's
"no limit" memory for each tag set of this run on which no limit exists. A tag set with a limit
(an operator's, active or not) is left to Prefect's own check, its memory dropped, so a limit is
honoured as before, within the seconds Prefect's own memory allows. When the API does not
answer, or Prefect keeps no such memory (another version), the watch changes nothing.

The memory is renewed every interval from the last answer, apart from the reads: a server that
answers a read later than Prefect's 5 s memory (a loaded machine: 11-150 s, bench/README.md)
would otherwise let it lapse, and every task run of the backend would wait behind Prefect's own
request to that same slow server (three_backends at load 17: no listing and no start for 110 s).
A limit an operator sets meanwhile is honoured once a read answers.
"""
from __future__ import annotations

import contextvars
import logging
import threading
from typing import Callable, FrozenSet, Iterable, Optional

# How often the limits are read: well inside Prefect's 5 s memory, one request for all backends.
WATCH_SECONDS = 2.0
PAGE = 200

log = logging.getLogger(__name__)


def limit_names() -> FrozenSet[str]:
    """Names of every concurrency limit on the Prefect server (`tag:<tag>` for tag limits)."""
    from prefect.client.orchestration import get_client

    names = set()
    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            page = client.read_global_concurrency_limits(limit=PAGE, offset=offset)
            names.update(limit.name for limit in page)
            if len(page) < PAGE:
                return frozenset(names)
            offset += PAGE


def prefect_memory():
    """Prefect's "no limit on this tag set" memory and its lock, where Prefect 3.9 keeps them."""
    try:
        from prefect.concurrency import services
        return services._no_limits_cache, services._cache_lock  # noqa: SLF001 - see the module doc
    except (ImportError, AttributeError):
        return None


class TagLimitWatch:
    def __init__(self, tag_sets: Iterable[Iterable[str]], interval: float = WATCH_SECONDS,
                 read_limits: Callable[[], FrozenSet[str]] = limit_names, memory=None):
        # the task engine's key: the names it asks for, `tag:<tag>` for each tag of the task run
        self.keys = {frozenset(f"tag:{tag}" for tag in tags) for tags in tag_sets if tags}
        self.interval = interval
        self._read = read_limits
        self._memory = memory if memory is not None else prefect_memory()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._renewer: Optional[threading.Thread] = None
        self._limited: Optional[FrozenSet[str]] = None  # the last answer: the limits on the server

    def refresh(self) -> None:
        try:
            limited = self._read()
        except Exception as exc:  # noqa: BLE001 - Prefect's own check decides meanwhile, as without the watch
            log.debug("tag limits not read: %s", exc)
            return
        if self._stop.is_set():  # closed while the read was out: Prefect's memory is left alone
            return
        self._limited = frozenset(limited)
        self.renew()

    def renew(self) -> None:
        """Prefect's memory as the last answer says (nothing before the first answer)."""
        limited = self._limited
        if limited is None:
            return
        cache, lock = self._memory
        with lock:
            for key in self.keys:
                if key & limited:
                    cache.pop(key, None)
                else:
                    cache[key] = True

    def start(self) -> "TagLimitWatch":
        """Read once now (the first cycle submits a task run per free slot at once), then every interval."""
        if self._memory is not None and self.keys:
            self.refresh()
            # The caller's context: Prefect's settings (the CLI's own server is a `temporary_settings`
            # context, not the environment) are context variables, which a new thread does not
            # inherit. Without them the thread's client reads another server's limits (none) and
            # starts a Prefect temporary server of its own that outlives the CLI.
            context = contextvars.copy_context()
            self._thread = threading.Thread(target=context.run, args=(self._loop,), name="tag-limit-watch",
                                            daemon=True)
            self._thread.start()
            self._renewer = threading.Thread(target=self._renew_loop, name="tag-limit-renew", daemon=True)
            self._renewer.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()

    def _renew_loop(self) -> None:  # no I/O: never waits on the server
        while not self._stop.wait(self.interval):
            self.renew()

    def close(self) -> None:
        """Tell both threads to end; not waited for. The reader may be in a read of a loaded server
        (seconds: a 1500-row stop waited for it); it ends when the read returns, and renews nothing
        then (daemon threads: a process that exits meanwhile does not wait for them either)."""
        self._stop.set()
