"""Fixtures shared by tests/search modules."""

from __future__ import annotations

from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from search.tracking.store import prepare
from search.tune.reconcile import reconcile
from tests.search.test_reconcile import ticket, write_trial


@pytest.fixture(scope="session")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("native")
    uri = f"sqlite:///{tmp}/mlflow.db"
    tracking = prepare(uri, "sw", str(tmp / "artifacts"), {"objective": "accuracy_at_density", "sampler": "tpe"})
    write_trial(tmp / "ray", "done", ticket(**{"prune.levels": 1}), levels=2, final=True)
    reconcile(tracking, str(tmp / "ray"), {})
    reconcile(tracking, str(tmp / "ray"), {})  # idempotent: nothing new, no second model
    return {"uri": uri, "tracking": tracking, "client": MlflowClient(uri)}
