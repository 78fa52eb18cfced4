"""Pure rules, no Prefect and no HTTP: the scheduler decides what to start, poll, reconcile and
download; bookkeeping turns a task's outcome into job DB updates. Both are tested without I/O."""
