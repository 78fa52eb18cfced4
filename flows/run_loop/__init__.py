"""The run loop of the run-jobs flow: the cycle (collect outcomes, apply them, let the scheduler
decide, persist intents, dispatch), the dispatcher that turns orders into Prefect task runs, stop
signals, and what a run publishes and how it ends (events, artifacts off the cycle's thread,
outcomes, a dead owner's flow run)."""
