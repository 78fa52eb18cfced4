"""Backend accounts: one identity per account, its job slots shared by every run, its start turns.

- `identity.py`: `account_id(url, user_id, …)` -> `origin~user`, computed once when a backend
  connects and carried by the connection (`ManagedConnection.account`); the state folder.
- `slots.py`: the account's job slots shared by the runs of this machine (flock ledger);
  `fairness.py`: each live run's fair share of them; `waiting.py`: who holds what a run waits for.
- `pacing.py`: client-side quotas: start turns shared across processes, requests in flight, 429 pauses.

No Prefect and no `flows` import here: tasks use the pacing, flows the slots.
"""
from tasks.accounts.identity import STATE_DIR_ENV, account_dir, account_id, origin, state_dir

__all__ = ["STATE_DIR_ENV", "account_dir", "account_id", "origin", "state_dir"]
