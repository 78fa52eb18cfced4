"""Job slots of a backend account shared by every run on this machine, without leases.

Each account (tasks/accounts/identity.py) has a folder under the state folder (`$OPENEO_JOBS_STATE_DIR`,
default `~/.local/state/openeo-prefect-jobs`). Every run that uses the account keeps there
- `<run>.alive`: an OS file lock (flock) held for the run's whole life, and
- `<run>.slots.json`: how many of the account's slots the run's rows hold now, how many it
  wants (holding + rows it could start), and who it is (flow run, job DB or campaign, pid, host).
A run claims slots under the account's ledger lock: it counts what the *live* runs hold (a run
whose `.alive` lock can be taken is dead: its entry is deleted) plus their unused fair share
(jobdb/fair_shares.py), decides, writes its own counts, and lets go. The kernel drops a dead
process's flocks at once, so slots of a killed run come back at the next claim — there is no
lease to expire, no server to repair, nothing a Prefect restart can strand. Slots of jobs still
running on the backend stay counted by the run that owns their rows (a resumed run of the same
job DB counts them again from the DB).

Scope: runs sharing the state directory — one machine, or several on a file system with working
flock (NFSv4). Runs on machines that share nothing are bounded by the backend itself: its
`ConcurrentJobLimit` refusals hand rows back (tasks/start.py).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Protocol, TypeVar

from filelock import FileLock, Timeout

from jobdb.atomic import write_atomic
from jobdb.fair_shares import others_with_reservations
from jobdb.slot_waiting import Holder, WaitingNotices
from tasks.accounts.identity import account_dir

log = logging.getLogger(__name__)
T = TypeVar("T")
ENTRY = ".slots.json"  # a run's entry in an account's ledger (the folder also holds start turns)


class JobSlots(Protocol):
    """What the cycle needs from any store of account slots (this ledger, or a SQL store's)."""

    def claim(self, decide: Callable[[Dict[str, int]], tuple[T, Mapping[str, int]]],
              wants: Optional[Mapping[str, int]] = None) -> T: ...

    def waiting_notices(self) -> List[str]: ...

    def waiting_by_backend(self) -> Dict[str, str]: ...

    def close(self) -> None: ...


class AccountSlots:
    """This run's entries in the ledgers of its backends' accounts.

    `accounts`: backend name -> account identity (`ManagedConnection.account`); two names of one
    account share its ledger, whatever a run calls the backend. `limits`: backend name ->
    `parallel_jobs`, for fair shares (jobdb/fair_shares.py); without it, first come first served."""

    def __init__(self, accounts: Mapping[str, str], run_id: str, note: Optional[dict] = None,
                 state_dir: Optional[Path] = None, limits: Optional[Mapping[str, int]] = None):
        self.run_id = run_id
        self.accounts = dict(accounts)
        self.dirs = {key: account_dir(key, state_dir) for key in set(self.accounts.values())}
        self.limits: Dict[str, int] = {}  # account -> the strictest parallel_jobs this run gives it
        for name, limit in (limits or {}).items():
            key = self.accounts.get(name)
            if key is not None:
                self.limits[key] = min(int(limit), self.limits.get(key, int(limit)))
        self.holders: Dict[str, List[Holder]] = {key: [] for key in self.dirs}  # as of the last claim
        self.notices = WaitingNotices()
        self._note = {"pid": os.getpid(), "host": socket.gethostname(), **(note or {})}
        self._alive: Dict[str, FileLock] = {}
        self._written: Dict[str, tuple] = {}
        for key, folder in self.dirs.items():
            folder.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(folder / f"{run_id}.alive"), thread_local=False)
            lock.acquire(timeout=0)
            self._alive[key] = lock

    def claim(self, decide: Callable[[Dict[str, int]], tuple[T, Mapping[str, int]]],
              wants: Optional[Mapping[str, int]] = None) -> T:
        """Under the accounts' ledger locks: `decide(others)` gets the slots other live runs take
        per backend name and returns (anything, the slots this run holds per backend name after
        its decision); that is written to the ledger, and `anything` returned.

        `wants`: per backend name, the slots this run could use now (its holding plus the rows it
        could start). It is recorded for the other runs' claims, and `others` includes each other
        live run's unused fair share of the account (jobdb/fair_shares.py)."""
        wanted = self._per_account(wants or {})
        with self._ledger_locks():
            self.holders = {key: self._read_others(folder) for key, folder in self.dirs.items()}
            taken = {key: self._taken(key, wanted.get(key, 0)) for key in self.dirs}
            result, mine = decide({name: taken[key] for name, key in self.accounts.items()})
            totals = self._per_account(mine)
            for key in self.dirs:
                holding = totals.get(key, 0)
                self._write(key, holding, max(holding, min(wanted.get(key, 0), self.limits.get(key, holding))))
        now = time.monotonic()
        for key in self.dirs:
            self.notices.update(key, self.limits.get(key), totals.get(key, 0), wanted.get(key, 0), taken[key],
                                self.holders[key], now)
        return result

    def waiting_by_backend(self) -> Dict[str, str]:
        """Backend name -> who holds the slots this run waits for there (as of the last claim)."""
        return self.notices.by_backend(self.accounts)

    def waiting_notices(self) -> List[str]:
        """Lines to log since the last call: an account whose slots other runs hold while this run
        has rows to start — when it starts waiting, then at most every minute (jobdb/slot_waiting.py)."""
        return self.notices.take_lines()

    def others(self) -> Dict[str, int]:
        """Slots other live runs hold, per backend name (without claiming anything)."""
        with self._ledger_locks():
            by_account = {key: sum(h.holding for h in self._read_others(folder)) for key, folder in self.dirs.items()}
        return {name: by_account[key] for name, key in self.accounts.items()}

    def close(self) -> None:
        """Leave the ledgers: this run holds nothing any more (its jobs' rows stay in its DB)."""
        for key, folder in self.dirs.items():
            (folder / f"{self.run_id}{ENTRY}").unlink(missing_ok=True)
            lock = self._alive.pop(key, None)
            if lock is not None:
                lock.release(force=True)
                (folder / f"{self.run_id}.alive").unlink(missing_ok=True)

    # --- shares -----------------------------------------------------------------------------
    def _per_account(self, by_name: Mapping[str, int]) -> Dict[str, int]:
        totals: Dict[str, int] = {}
        for name, count in by_name.items():
            key = self.accounts.get(name)
            if key is not None:
                totals[key] = totals.get(key, 0) + int(count)
        return totals

    def _taken(self, key: str, my_wants: int) -> int:
        holders = self.holders[key]
        if key not in self.limits:
            return sum(h.holding for h in holders)
        return others_with_reservations(self.limits[key], my_wants, [(h.holding, h.wants) for h in holders])

    # --- ledger files -------------------------------------------------------------------
    @contextmanager
    def _ledger_locks(self) -> Iterator[None]:
        with ExitStack() as stack:
            for key in sorted(self.dirs):  # a fixed order: two runs never wait on each other in a cycle
                stack.enter_context(FileLock(str(self.dirs[key] / "ledger.lock"), thread_local=False))
            yield

    def _write(self, key: str, holding: int, wants: int) -> None:
        if self._written.get(key) == (holding, wants):
            return
        path = self.dirs[key] / f"{self.run_id}{ENTRY}"
        write_atomic(path, json.dumps({**self._note, "run_id": self.run_id, "holding": holding, "wants": wants}),
                     durable=False)  # rewritten every cycle; a lost entry is rewritten by the next
        self._written[key] = (holding, wants)

    def _read_others(self, folder: Path) -> List[Holder]:
        """The other live runs' entries, in run id order (fair shares need a fixed order)."""
        holders = []
        for entry in sorted(folder.glob(f"*{ENTRY}")):
            run_id = entry.name[:-len(ENTRY)]
            if run_id == self.run_id:
                continue
            if not self._is_alive(folder, run_id):
                log.info("job slots: run %s has ended without leaving the ledger; its slots are free again", run_id)
                entry.unlink(missing_ok=True)
                (folder / f"{run_id}.alive").unlink(missing_ok=True)
                continue
            try:
                data = json.loads(entry.read_text())
                holding = int(data["holding"])
                holders.append(Holder(run_id, holding, int(data.get("wants", holding)), data))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being rewritten by its owner (atomic replace) or foreign: skip this once
        return holders

    @staticmethod
    def _is_alive(folder: Path, run_id: str) -> bool:
        probe = FileLock(str(folder / f"{run_id}.alive"), thread_local=False)
        try:
            probe.acquire(timeout=0)
        except Timeout:
            return True
        probe.release(force=True)
        return False
