"""What the sweep driver does per result, kept small (benchmarks/capacity.py measures it; docs/CLUSTER.md
"Capacity"): Optuna's storage hears a trial's level ends only, Tune writes no TensorBoard files, and MLflow
fetches no run back when one is set terminated."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
from ray.tune.utils.callback import _create_default_callbacks

from search.tracking import store
from search.tune.searcher import TicketOptunaSearch
from search.tune.study import optuna_storage
from search.tune.tuner import AUTO_LOGGERS_ENV, loggers


def explore(trial: optuna.Trial) -> dict[str, Any]:
    return {"x": trial.suggest_float("x", 0.0, 1.0)}


def _reported(tmp_path: Path, every_result: bool) -> dict[int, float]:
    storage = optuna_storage(str(tmp_path / f"s{every_result}.journal"))
    searcher = TicketOptunaSearch(space=explore, metric="val_score", mode="max", study_name="s", storage=storage)
    searcher.every_result = every_result
    searcher.suggest("a")
    for i in range(1, 7):  # three evaluations per level: levels end at results 3 and 6
        searcher.on_trial_result("a", {"val_score": i / 10, "training_iteration": i, "level_done": i % 3 == 0})
    return optuna.load_study(study_name="s", storage=storage).trials[0].intermediate_values


def test_optuna_hears_only_level_ends_unless_asked_for_every_result(tmp_path: Path) -> None:
    assert _reported(tmp_path, every_result=False) == {3: 0.3, 6: 0.6}
    assert _reported(tmp_path, every_result=True) == {i: i / 10 for i in range(1, 7)}


def test_a_stopped_trial_leaves_optuna_its_last_evaluation(tmp_path: Path) -> None:
    """TPE ranks PRUNED trials by their last step and intermediate value: the one inside a level arrives at
    the trial's end, once."""
    storage = optuna_storage(str(tmp_path / "s.journal"))
    searcher = TicketOptunaSearch(space=explore, metric="val_score", mode="max", study_name="s", storage=storage)
    searcher.suggest("a")
    results = [{"val_score": i / 10, "training_iteration": i, "level_done": i == 3} for i in range(1, 6)]
    for result in results:
        searcher.on_trial_result("a", result)
    searcher.on_trial_complete("a", results[-1])  # stopped by the scheduler inside level 1
    trial = optuna.load_study(study_name="s", storage=storage).trials[0]
    assert trial.state.name == "PRUNED" and trial.intermediate_values == {3: 0.3, 5: 0.5}


def test_tune_keeps_the_result_files_but_writes_no_tensorboard_events(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(AUTO_LOGGERS_ENV, raising=False)
    mine = JsonLoggerCallback()
    kept = loggers([mine])
    assert os.environ[AUTO_LOGGERS_ENV] == "1"
    assert kept[0] is mine and [type(c) for c in kept] == [JsonLoggerCallback, CSVLoggerCallback]  # no duplicate
    final = _create_default_callbacks(kept, metric=None)  # what Tune itself adds to them at fit()
    assert not any(isinstance(c, TBXLoggerCallback) for c in final)
    assert sum(isinstance(c, JsonLoggerCallback) for c in final) == 1
    monkeypatch.setenv(AUTO_LOGGERS_ENV, "0")  # the user's way back to TensorBoard
    assert any(isinstance(c, TBXLoggerCallback) for c in _create_default_callbacks(loggers([]), metric=None))


@pytest.mark.slow
def test_setting_a_run_terminated_fetches_nothing_back_from_the_server(tmp_path: Path,
                                                                       capfd: pytest.CaptureFixture[str]) -> None:
    """MLflow's client fetches the whole run to print its URL unless told not to (search/tracking/store.py)."""
    from tests.helpers.servers import MlflowServer

    assert os.environ[store.SUPPRESS_URL_ENV] == "true"  # importing the store module says so
    with MlflowServer(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts") as server:
        client = MlflowClient(server.uri)
        run = client.create_run(client.create_experiment("e")).info.run_id
        capfd.readouterr()
        client.set_terminated(run, "FINISHED")
        log = server.log_tail(400)
    assert "View run" not in capfd.readouterr().out
    assert "runs/update" in log and "runs/get" not in log


def test_system_metrics_are_sampled_as_often_as_the_nodes_say_or_not_at_all(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from search.tracking import native

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = store.prepare(uri, "sampled", str(tmp_path / "artifacts"), {})
    run = MlflowClient(uri).create_run(tracking.experiment_id).info.run_id
    monkeypatch.setenv(native.SYSTEM_METRICS_ENV, "0")
    assert native.start_system_metrics(run, uri) is None
    monkeypatch.setenv(native.SYSTEM_METRICS_ENV, "120")
    monitor = native.start_system_metrics(run, uri)
    try:
        assert monitor is not None and monitor.sampling_interval == 120
    finally:
        monitor.finish()
    monkeypatch.setenv(native.SYSTEM_METRICS_ENV, "often")
    assert native.system_metrics_interval_s() == native.SYSTEM_METRICS_INTERVAL_S
    monkeypatch.delenv(native.SYSTEM_METRICS_ENV)
    assert native.system_metrics_interval_s() == native.SYSTEM_METRICS_INTERVAL_S
