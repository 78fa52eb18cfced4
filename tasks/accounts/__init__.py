"""Backend accounts: one identity per account, its job slots shared by every run, its start turns.

- `identity.py`: `account_id(url, user_id, …)` -> `origin~user`, computed once when a backend
  connects and carried by the connection (`ManagedConnection.account`); the state folder.
- `slots.py`: the account's job slots shared by the runs of this machine (flock ledger); each live
  run's fair share of them and who holds what a run waits for are rules every slot store shares,
  so they live one layer down: jobdb/fair_shares.py, jobdb/slot_waiting.py (the SQL store's slots too).
- `pacing.py`: client-side quotas: start turns shared across processes, requests in flight, 429 pauses.

No Prefect and no `flows` import here: tasks use the pacing, flows the slots.
"""
from tasks.accounts.identity import STATE_DIR_ENV, account_dir, account_id, origin, state_dir

__all__ = ["STATE_DIR_ENV", "account_dir", "account_id", "origin", "state_dir"]
