"""Setting a sweep's MLflow records straight after its driver died, before `resume` continues it.

A driver killed outright (SIGKILL, a lost head node) takes its local Ray, and so every trial, with it;
nothing gets the chance to set a final status. When `ticket-search resume` starts, nothing else logs to
the sweep, so every run still RUNNING under it is left over:

- a **trial run** is set KILLED with a `status_reason`; a trial Ray resumes reopens its run (RUNNING,
  reason removed) and finishes it, and one Ray never recorded keeps KILLED and the reason;
- a **ticket run** is half-logged (its process died between `create_run` and the FINISHED that ends
  every complete ticket run): it is deleted, and its level is logged again when its trial resumes.

The Optuna study is written at once while Ray's experiment snapshot lags by seconds, so a trial can end
in MLflow (its worker logged everything and set FINISHED) and die with the driver before Optuna was told:
`settle_finished` tells Optuna COMPLETE with the values of its last ticket run, the ones Ray would have
reported. What is left to settle (trials Ray never recorded) search/tune/searcher.py does when Ray restores it.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import optuna
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from search.tracking import schema as S
from search.tracking import store
from search.tracking.callbacks import Outcome
from search.tracking.outbox import call_with_retry, retry_budget_s
from search.tracking.store import Tracking, find_trial_run
from search.tune.searcher import FAIL_REASON, TRIAL_ATTR

DRIVER_LOST = ("its driver stopped while it ran (killed or interrupted); `ticket-search resume` continues it "
               "if Ray recorded it")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Closed:
    """What `close_orphans` did: trial runs marked KILLED, half-logged ticket runs deleted."""

    trial_runs: int
    ticket_runs: int


def _running(client: MlflowClient, experiment_id: str) -> list[Run]:
    return store.search_all(client, experiment_id, "attributes.status = 'RUNNING'")


def _kill(client: MlflowClient, run_id: str) -> None:
    client.set_tag(run_id, S.TAG_STATUS_REASON, DRIVER_LOST)
    client.set_terminated(run_id, "KILLED")


def close_orphans(tracking: Tracking) -> Closed:
    """Mark the trial runs a dead driver left RUNNING, delete its half-logged ticket runs (see above)."""
    client = MlflowClient(tracking.tracking_uri)
    budget = retry_budget_s()
    trials = tickets = 0
    for run in call_with_retry(lambda: _running(client, tracking.experiment_id), "find running runs", budget):
        tags, run_id = run.data.tags, run.info.run_id
        if tags.get(S.KIND) == S.TRIAL and tags.get(S.PARENT_TAG) == tracking.parent_run_id:
            call_with_retry(functools.partial(_kill, client, run_id), "mark trial run KILLED", budget)
            trials += 1
        elif tags.get(S.KIND) == S.TICKET and tags.get(S.TAG_KEY, "").startswith(f"{tracking.parent_run_id}/"):
            call_with_retry(functools.partial(client.delete_run, run_id), "delete ticket run", budget)
            tickets += 1
    if trials or tickets:
        log.warning("resume: %d trial run(s) left RUNNING marked KILLED, %d half-logged ticket run(s) deleted",
                    trials, tickets)
    return Closed(trials, tickets)


def settle_finished(tracking: Tracking, study: optuna.Study, metrics: list[str]) -> int:
    """Tell COMPLETE every RUNNING Optuna trial whose MLflow trial run FINISHED; how many there were."""
    client = MlflowClient(tracking.tracking_uri)
    settled = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        ray_id = trial.user_attrs.get(TRIAL_ATTR)
        run_id = find_trial_run(client, tracking, ray_id) if ray_id else None
        if run_id is None or client.get_run(run_id).info.status != "FINISHED":
            continue
        last = _last_ticket(client, tracking, run_id)
        if last is None or any(m not in last.data.metrics for m in metrics):
            continue
        values = [last.data.metrics[m] for m in metrics]
        study.tell(trial.number, values if len(values) > 1 else values[0])
        settled += 1
    if settled:
        log.warning("resume: %d Optuna trial(s) finished in MLflow before the driver died, told COMPLETE", settled)
    return settled


def settle_stopped(study: optuna.Study, outcomes: dict[str, Outcome]) -> int:
    """At a sweep's end, tell Optuna about trials Tune ended without telling the searcher (the sweep's time
    budget stops them all at once): PRUNED if stopped, FAIL with the reason if failed. Interrupted trials
    stay RUNNING for `resume`; finished ones are `settle_finished`'s (their values are in MLflow)."""
    settled = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        outcome = outcomes.get(trial.user_attrs.get(TRIAL_ATTR, ""))
        if outcome is None or outcome.resumable or outcome.status == "FINISHED":
            continue
        if outcome.status == "FAILED":
            trial_id = trial._trial_id  # noqa: SLF001 - the Study API cannot set attrs of a trial it did not ask
            study._storage.set_trial_user_attr(trial_id, FAIL_REASON, outcome.reason[:1000])  # noqa: SLF001
        study.tell(trial.number, state=TrialState.PRUNED if outcome.status == "KILLED" else TrialState.FAIL)
        settled += 1
    return settled


def _last_ticket(client: MlflowClient, tracking: Tracking, trial_run: str) -> Run | None:
    """The ticket run of a trial's final level: the values Ray reported last (val_score, sparsity)."""
    runs = store.search_all(client, tracking.experiment_id,
                            f"tags.{S.KIND} = '{S.TICKET}' and tags.{S.TAG_MEMBER} = '{S.MEMBER_TICKET}' and "
                            f"tags.`{S.PARENT_TAG}` = '{trial_run}'")
    return max(runs, key=lambda r: int(r.data.tags.get(S.TAG_LEVEL, -1)), default=None)
