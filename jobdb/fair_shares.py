"""Fair shares of one account's job slots among the live runs that use it (pure; no I/O).

Shared by every slot store: the flock ledger (tasks/accounts/slots.py) and the SQL store (jobdb/sql/slots.py).

Every live run records how many slots it *wants*: the slots its rows hold plus the rows it could
start now, at most `parallel_jobs`. The account's `parallel_jobs` are split max-min fairly
among the wants, one slot at a time round robin: a run that wants less than an equal split
leaves the rest to the others, and slots that do not split evenly (5 among 2) go to whoever is
claiming — the claimant comes first in the round, then the others in a fixed order.

A claim then sees every other run as holding `max(what it holds, its fair share)`: the slots it
holds are taken, and the part of its share it has not used yet is reserved for it. A run that
holds more than its share (it came first) keeps its running jobs — nothing is cancelled — but
starts no more until it is back under its share; the freed slots go to the runs below theirs.
The reservation only adds to what others hold, so all runs together never exceed `parallel_jobs`.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple


def fair_shares(limit: int, wants: Sequence[int]) -> List[int]:
    """Max-min fair split of `limit` slots among `wants` (round robin from the first)."""
    shares = [0] * len(wants)
    left = max(0, int(limit))
    while left > 0:
        given = False
        for i, want in enumerate(wants):
            if left > 0 and shares[i] < want:
                shares[i] += 1
                left -= 1
                given = True
        if not given:
            break  # every want met: the rest stays free
    return shares


def others_with_reservations(limit: int, my_wants: int, others: Sequence[Tuple[int, int]]) -> int:
    """What the claimant must count as taken by other runs: each other run's slots, or its fair
    share when that is more. `others`: (holding, wants) of each other live run, in a fixed order."""
    wants = [min(limit, max(0, my_wants))] + [min(limit, max(holding, want)) for holding, want in others]
    shares = fair_shares(limit, wants)[1:]
    return sum(max(holding, share) for (holding, _), share in zip(others, shares))
