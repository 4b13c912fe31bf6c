"""The dataset input of a trial run: a collision of two trials inserting one dataset must not fail a trial."""

from __future__ import annotations

from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST, INTERNAL_ERROR

from search.tracking import native

FLAT = {"data.name": "digits", "data.seed": 0}


class Client:
    """Raises the given errors on the first calls of log_inputs, then takes them (what MLflow's store does when
    two trials insert one dataset at once: a unique-key violation, then the row exists)."""

    def __init__(self, *errors: MlflowException) -> None:
        self.errors, self.calls = list(errors), 0

    def log_inputs(self, run_id: str, inputs: list[Any]) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)


def test_a_duplicate_dataset_key_is_retried_then_linked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native.time, "sleep", lambda s: None)
    dup = MlflowException('duplicate key value violates unique constraint "dataset_pk"', error_code=BAD_REQUEST)
    client = Client(dup)
    native.log_dataset(client, "r", FLAT)  # type: ignore[arg-type]
    assert client.calls == 2
    stubborn = Client(dup, dup, dup, dup)
    native.log_dataset(stubborn, "r", FLAT)  # type: ignore[arg-type]  # gives up on the label, not the trial
    assert stubborn.calls == native.DATASET_TRIES


def test_a_server_that_is_away_is_left_to_the_outbox() -> None:
    away = MlflowException("connection refused", error_code=INTERNAL_ERROR)
    with pytest.raises(MlflowException):  # the outbox retries the whole step when the server is back
        native.log_dataset(Client(away), "r", FLAT)  # type: ignore[arg-type]
