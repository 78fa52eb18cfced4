"""Who holds the slots a run waits for, told once and then at most every minute.

Shared by every slot store (the flock ledger in tasks/accounts/slots.py, a SQL store): each gives the
other live runs of an account as `Holder`s, and after each claim calls `WaitingNotices.update`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

NOTICE_EVERY_SECONDS = 60.0  # how often a run still waiting for others' slots says so again


@dataclass(frozen=True)
class Holder:
    """Another live run's entry for an account: what it holds, what it wants, who it is."""

    run_id: str
    holding: int
    wants: int
    note: Mapping[str, object] = field(default_factory=dict)  # flow_run_id, job_db or campaign, pid, host

    def describe(self) -> str:
        """`flow run 5c0e… (job DB /data/jobs.parquet, worker-1 pid 4242) holds 3`."""
        note = self.note
        if note.get("label"):  # not a run: e.g. active jobs whose runs have ended (a SQL store counts them)
            return f"{note['label']} hold {self.holding}"
        who = f"flow run {note['flow_run_id']}" if note.get("flow_run_id") else f"run {self.run_id}"
        where = [f"campaign {note['campaign']}"] if note.get("campaign") else []
        where += [f"job DB {note['job_db']}"] if note.get("job_db") else []
        where += [f"{note.get('host', '?')} pid {note['pid']}"] if note.get("pid") else []
        return f"{who} ({', '.join(where)}) holds {self.holding}" if where else f"{who} holds {self.holding}"


class WaitingNotices:
    """Per account: is this run waiting for slots other runs hold, and what to say about it."""

    def __init__(self, every_seconds: Optional[float] = None):
        self.every_seconds = every_seconds
        self.waiting: Dict[str, str] = {}  # account -> who holds the slots this run waits for
        self._told: Dict[str, float] = {}
        self._lines: List[str] = []

    def update(self, account: str, limit: Optional[int], mine: int, wanted: int, taken: int,
               holders: Sequence[Holder], now: float) -> None:
        """After a claim: this run holds `mine` and wants `wanted`; the others take `taken` (their
        holdings and reserved shares). Waiting = wants more, none free, and others hold some."""
        holding = [h for h in holders if h.holding > 0]
        if limit is None or not holding or wanted <= mine or mine + taken < limit:
            self.waiting.pop(account, None)
            return
        self.waiting[account] = "; ".join(h.describe() for h in holding)
        told = self._told.get(account)
        every = NOTICE_EVERY_SECONDS if self.every_seconds is None else self.every_seconds
        if told is None or now - told >= every:
            self._told[account] = now
            self._lines.append(f"waiting for job slots of account {account} (parallel_jobs {limit}; this run "
                               f"holds {mine}, wants {min(limit, wanted)}): {self.waiting[account]}")

    def by_backend(self, accounts: Mapping[str, str]) -> Dict[str, str]:
        """Backend name -> who holds the slots this run waits for there."""
        return {name: self.waiting[key] for name, key in accounts.items() if key in self.waiting}

    def take_lines(self) -> List[str]:
        lines, self._lines = self._lines, []
        return lines
