"""MLflow tracking: the schema of every tag and name, the stores' writers, the worker sink, the outbox, callbacks."""
