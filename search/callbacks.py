"""Driver-side Tune callbacks: trial runs' final MLflow status, and console progress for the CLI."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlflow.tracking import MlflowClient
from ray import tune

from search import schema as S
from search.tracking import Tracking, find_trial_run


class TrackingCallback(tune.Callback):
    """Marks each trial's MLflow run once Tune is done with it (stopped trials never say so themselves).

    Stopped by the scheduler -> KILLED with the reason; errored -> FAILED with the error; finished ->
    FINISHED. Workers set the status too; this makes sure no trial run is left RUNNING.
    """

    def __init__(self, tracking: Tracking) -> None:
        self.tracking = tracking
        self._client: MlflowClient | None = None

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles callbacks with the experiment
        return {"tracking": self.tracking, "_client": None}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking.tracking_uri)
        return self._client

    def _mark(self, trial: Any, status: str, reason: str) -> None:
        run_id = find_trial_run(self.client, self.tracking, trial.trial_id)
        if run_id is None:
            return
        if reason:
            self.client.set_tag(run_id, S.TAG_STATUS_REASON, reason[:4000])
        self.client.set_terminated(run_id, status)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        if last.get("final"):
            self._mark(trial, "FINISHED", "")
        elif last.get("collapsed"):
            self._mark(trial, "KILLED", f"stopped: layer collapse at level {last.get('level')}")
        else:
            self._mark(trial, "KILLED", f"stopped early by the scheduler at epoch "
                                        f"{last.get('epochs_total', 0):.1f}")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._mark(trial, "FAILED", f"error: {getattr(trial, 'error_file', '') or 'see Ray logs'}")


class ProgressCallback(tune.Callback):
    """Calls `emit(line)` at each finished level and each finished trial (the CLI prints them)."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self.emit = emit

    def __getstate__(self) -> dict[str, Any]:  # a console is not picklable; a restored run passes its own
        return {"emit": _quiet}

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        if result.get("level_done"):
            running = sum(t.status == "RUNNING" for t in trials)
            done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
            self.emit(f"trial {trial.trial_id}  level {result['level']}  density "
                      f"{100 * result['density']:.1f}%  val acc {100 * result['val_acc']:.1f}%  "
                      f"[{done} done, {running} running]")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        how = "finished" if last.get("final") else "stopped early"
        self.emit(f"trial {trial.trial_id} {how} at {last.get('epochs_total', 0):.1f} epochs")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.emit(f"trial {trial.trial_id} failed (it restarts from its last level if retries remain)")


def _quiet(line: str) -> None:
    """The emit of a callback unpickled from an old experiment: the resuming CLI passes a live one."""
