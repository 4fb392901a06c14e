"""MLflow: runs, the outbox that outlives an outage, and the local trainer's wiring to a run.

May import `kmervae.base`, `kmervae.core` and mlflow (lazily, where a call needs it; with its clients'
error types from requests and sqlalchemy); never Ray or the
subpackages above it (`apply`, `distributed`).
"""
