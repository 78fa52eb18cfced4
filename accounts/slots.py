"""Job slots of a backend account shared by every run on this machine, without leases.

Each account (accounts/identity.py) has a folder under the state folder (`$OPENEO_JOBS_STATE_DIR`,
default `~/.local/state/openeo-prefect-jobs`). Every run that uses the account keeps there
- `<run>.alive`: an OS file lock (flock) held for the run's whole life, and
- `<run>.slots.json`: how many of the account's slots the run's rows hold now.
A run claims slots under the account's ledger lock: it counts what the *live* runs hold (a run
whose `.alive` lock can be taken is dead: its entry is deleted), decides, writes its own count,
and lets go. The kernel drops a dead process's flocks at once, so slots of a killed run come
back at the next claim — there is no lease to expire, no server to repair, nothing a Prefect
restart can strand. Slots of jobs still running on the backend stay counted by the run that
owns their rows (a resumed run of the same job DB counts them again from the DB).

Scope: runs sharing the state directory — one machine, or several on a file system with working
flock (NFSv4). Runs on machines that share nothing are bounded by the backend itself: its
`ConcurrentJobLimit` refusals hand rows back (tasks/start.py).
"""
from __future__ import annotations

import json
import logging
import os
import socket
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, TypeVar

from filelock import FileLock, Timeout

from accounts.identity import account_dir

log = logging.getLogger(__name__)
T = TypeVar("T")
ENTRY = ".slots.json"  # a run's entry in an account's ledger (the folder also holds start turns)


class AccountSlots:
    """This run's entries in the ledgers of its backends' accounts.

    `accounts`: backend name -> account identity (`ManagedConnection.account`); two names of one
    account share its ledger, whatever a run calls the backend."""

    def __init__(self, accounts: Mapping[str, str], run_id: str, note: Optional[dict] = None,
                 state_dir: Optional[Path] = None):
        self.run_id = run_id
        self.accounts = dict(accounts)
        self.dirs = {key: account_dir(key, state_dir) for key in set(self.accounts.values())}
        self._note = {"pid": os.getpid(), "host": socket.gethostname(), **(note or {})}
        self._alive: Dict[str, FileLock] = {}
        self._written: Dict[str, int] = {}
        for key, folder in self.dirs.items():
            folder.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(folder / f"{run_id}.alive"), thread_local=False)
            lock.acquire(timeout=0)
            self._alive[key] = lock

    def claim(self, decide: Callable[[Dict[str, int]], tuple[T, Mapping[str, int]]]) -> T:
        """Under the accounts' ledger locks: `decide(others)` gets the slots other live runs hold
        per backend name and returns (anything, the slots this run holds per backend name after
        its decision); that is written to the ledger, and `anything` returned."""
        with ExitStack() as stack:
            for key in sorted(self.dirs):  # a fixed order: two runs never wait on each other in a cycle
                stack.enter_context(FileLock(str(self.dirs[key] / "ledger.lock"), thread_local=False))
            others_by_account = {key: self._others(folder) for key, folder in self.dirs.items()}
            result, mine = decide({name: others_by_account[key] for name, key in self.accounts.items()})
            totals: Dict[str, int] = {}
            for name, count in mine.items():
                key = self.accounts.get(name)
                if key is not None:
                    totals[key] = totals.get(key, 0) + int(count)
            for key in self.dirs:
                self._write(key, totals.get(key, 0))
        return result

    def others(self) -> Dict[str, int]:
        """Slots other live runs hold, per backend name (without claiming anything)."""
        with ExitStack() as stack:
            for key in sorted(self.dirs):
                stack.enter_context(FileLock(str(self.dirs[key] / "ledger.lock"), thread_local=False))
            by_account = {key: self._others(folder) for key, folder in self.dirs.items()}
        return {name: by_account[key] for name, key in self.accounts.items()}

    def close(self) -> None:
        """Leave the ledgers: this run holds nothing any more (its jobs' rows stay in its DB)."""
        for key, folder in self.dirs.items():
            (folder / f"{self.run_id}{ENTRY}").unlink(missing_ok=True)
            lock = self._alive.pop(key, None)
            if lock is not None:
                lock.release(force=True)
                (folder / f"{self.run_id}.alive").unlink(missing_ok=True)

    # --- ledger files -------------------------------------------------------------------
    def _write(self, key: str, count: int) -> None:
        if self._written.get(key) == count:
            return
        path = self.dirs[key] / f"{self.run_id}{ENTRY}"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({**self._note, "run_id": self.run_id, "holding": count}))
        os.replace(tmp, path)
        self._written[key] = count

    def _others(self, folder: Path) -> int:
        total = 0
        for entry in folder.glob(f"*{ENTRY}"):
            run_id = entry.name[:-len(ENTRY)]
            if run_id == self.run_id:
                continue
            if not self._is_alive(folder, run_id):
                log.info("job slots: run %s has ended without leaving the ledger; its slots are free again", run_id)
                entry.unlink(missing_ok=True)
                (folder / f"{run_id}.alive").unlink(missing_ok=True)
                continue
            try:
                total += int(json.loads(entry.read_text())["holding"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being rewritten by its owner (atomic replace) or foreign: skip this once
        return total

    @staticmethod
    def _is_alive(folder: Path, run_id: str) -> bool:
        probe = FileLock(str(folder / f"{run_id}.alive"), thread_local=False)
        try:
            probe.acquire(timeout=0)
        except Timeout:
            return True
        probe.release(force=True)
        return False
