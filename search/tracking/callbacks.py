"""Driver-side Tune callbacks: trial runs' final MLflow status (and each trial's `Outcome`), console progress."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from ray import tune

from search.tracking import schema as S
from search.tracking.outbox import Outbox, retry_budget_s
from search.tracking.store import Tracking, find_trial_run

RETRY_EVERY_S = 5.0  # how often queued trial statuses are tried again while the server is away
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """How Tune ended a trial, as the driver saw it: a final MLflow status and why."""

    status: str  # FINISHED | KILLED | FAILED
    reason: str = ""
    resumable: bool = False  # interrupted: `resume` continues it, so nothing is final about it yet


class TrackingCallback(tune.Callback):
    """Marks each trial's MLflow run once Tune is done with it (stopped trials never say so themselves).

    Stopped by the scheduler -> KILLED with the reason; diverged -> FAILED with the loss that did it;
    errored -> FAILED with the error. A finished trial's worker sets FINISHED itself (its `finish` fails
    the trial when it cannot), so that one needs no call from here. A mark the tracking server cannot take
    now waits in an `Outbox`: tried again every few seconds, and waited for (up to `retry_budget_s()`)
    when the experiment ends.

    It also keeps each trial's `Outcome` (`outcomes`), including those Tune stops without telling callbacks
    (the sweep's time budget, an interrupted sweep): the driver's reconciliation (search/tune/reconcile.py)
    sets the final statuses from them, so no trial run is left RUNNING whatever a worker managed to send.
    """

    def __init__(self, tracking: Tracking, time_limit_s: float = 0.0) -> None:
        self.tracking = tracking
        self.time_limit_s = time_limit_s
        self.outcomes: dict[str, Outcome] = {}
        self._client: MlflowClient | None = None
        self._outbox = Outbox()
        self._last_try = 0.0
        self._began = time.monotonic()

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles callbacks with the experiment
        return {"tracking": self.tracking, "time_limit_s": self.time_limit_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["tracking"], state.get("time_limit_s", 0.0))  # type: ignore[misc]

    def setup(self, stop: Any = None, num_samples: int | None = None, total_num_samples: int | None = None,
              **info: Any) -> None:
        self._began = time.monotonic()  # the time budget counts from here

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking.tracking_uri)
        return self._client

    def _mark(self, trial: Any, status: str, reason: str) -> None:
        self.outcomes[trial.trial_id] = Outcome(status, reason)
        self._outbox.put(functools.partial(self._set_status, trial.trial_id, status, reason),
                         f"trial {trial.trial_id} {status}")
        self._drain()

    def _set_status(self, trial_id: str, status: str, reason: str) -> None:
        run_id = find_trial_run(self.client, self.tracking, trial_id)
        if run_id is None:
            return
        if reason:
            self.client.set_tag(run_id, S.TAG_STATUS_REASON, reason[:4000])
        self.client.set_terminated(run_id, status)

    def _drain(self) -> None:
        self._last_try = time.monotonic()
        self._outbox.drain(0)

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if self._outbox.pending and time.monotonic() - self._last_try >= RETRY_EVERY_S:
            self._drain()

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        for trial in trials:  # the ones Tune stopped without a callback: time budget, interruption
            if trial.trial_id not in self.outcomes:
                self.outcomes[trial.trial_id] = self._ended_silently(trial)
        if not self._outbox.drain(retry_budget_s()):
            log.error("tracking: trial statuses not recorded: %s", self._outbox.describe())

    def _ended_silently(self, trial: Any) -> Outcome:
        """A trial Tune ended without `on_trial_complete`: the time budget stops every trial at once, and an
        interrupted sweep (Ctrl-C) stops the running ones, which `resume` continues from its snapshot."""
        last = trial.last_result or {}
        epochs = f"{last.get('epochs_total', 0):.1f}"
        if trial.status == "ERROR":
            return Outcome("FAILED", error_text(trial))
        if last.get("final"):
            return Outcome("FINISHED")
        if self.time_limit_s and time.monotonic() - self._began >= self.time_limit_s - 1.0:
            return Outcome("KILLED", f"stopped: the sweep's time budget of {self.time_limit_s:g} s ran out "
                                     f"at epoch {epochs}")
        return Outcome("KILLED", f"interrupted at epoch {epochs} when the sweep stopped; "
                                 f"`ticket-search resume {self.tracking.sweep}` continues it", resumable=True)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        if last.get("diverged") or last.get("invalid"):
            self._mark(trial, "FAILED", str(last.get("status_reason") or "diverged"))
        elif last.get("final"):
            self.outcomes[trial.trial_id] = Outcome("FINISHED")  # the worker set FINISHED itself
        elif last.get("collapsed"):
            self._mark(trial, "KILLED", f"stopped: layer collapse at level {last.get('level')}")
        else:
            self._mark(trial, "KILLED", f"stopped early by the scheduler at epoch "
                                        f"{last.get('epochs_total', 0):.1f}")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._mark(trial, "FAILED", error_text(trial))


def error_text(trial: Any) -> str:
    """The last line of a failed trial's error (the exception and its message), and where the rest is."""
    path = getattr(trial, "error_file", None) or ""
    try:
        lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return f"error: see the Ray logs of trial {trial.trial_id}"
    return f"error: {lines[-1].strip()[:1000] if lines else '?'} (traceback: {path})"


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
        how = ("diverged" if last.get("diverged") else "failed: invalid configuration" if last.get("invalid")
               else "finished" if last.get("final") else "stopped early")
        self.emit(f"trial {trial.trial_id} {how} at {last.get('epochs_total', 0):.1f} epochs")

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.emit(f"trial {trial.trial_id} failed; it restarts from its last level checkpoint")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.emit(f"trial {trial.trial_id} failed for good (no retries left): {trial.error_file or ''}")


def _quiet(line: str) -> None:
    """The emit of a callback unpickled from an old experiment: the resuming CLI passes a live one."""
