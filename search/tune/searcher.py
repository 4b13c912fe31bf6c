"""The sweep's Optuna searcher: Ray's `OptunaSearch`, telling Optuna what really happened to each trial.

- stopped by the scheduler -> PRUNED (Ray would say COMPLETE with a truncated value, and TPE would learn
  from it as if it were final);
- diverged (NaN or inf loss) or an invalid sampled configuration -> FAIL, with the reason in the user
  attr `fail_reason`;
- only a level's last evaluation, and a stopped trial's last one, are reported to Optuna as intermediate
  values (a storage write per level, not per evaluation: the driver's cost per result, docs/CLUSTER.md
  "Capacity"; TPE ranks a PRUNED trial by its last value and step, which it still gets);
- every Optuna trial carries the user attrs `ray_trial_id` and `ray_experiment` (a token of this sweep's
  Ray experiment), so a resumed sweep can tell its own trials from anything else in the study.

Resume after a driver died. Ray restores this searcher from its last experiment snapshot, which can be
seconds older than the study (Optuna's storage is written at once). On `restore`:
- a trial Optuna holds as finished but the snapshot as running is not told, nor sent results, again;
- a trial of this experiment the snapshot never saw and still RUNNING in the study is set FAIL with
  `fail_reason` (no Ray trial will report it); one that ended before the driver died is adopted: it
  counts toward `num_samples`, so the resumed sweep runs exactly the trials still missing.
(`recovery.settle_finished` has already set COMPLETE any trial whose MLflow run finished.)
"""

from __future__ import annotations

import uuid
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

FAIL_REASON = "fail_reason"  # user attr of FAIL trials: why
TRIAL_ATTR = "ray_trial_id"  # user attr: the Ray trial (and MLflow trial run) this Optuna trial is
RUN_ATTR = "ray_experiment"  # user attr: the token of the Ray experiment that asked for it
LEVEL_DONE = "level_done"  # Ray result flag of a level's last evaluation (trainables/trial.py level_metrics)
INSTABILITY = "instability_val"  # Ray result of a level of a prune.instability trial
CONSTRAINT = "instability"  # Optuna constraint (feasible <= 0): last instability minus [objective] max_instability
ORPHAN_REASON = ("its driver died after Optuna suggested it and before Ray recorded the trial; "
                 "the resumed sweep never ran it")


class TicketOptunaSearch(OptunaSearch):
    """OptunaSearch with honest trial states and a study that survives its driver (see the module doc)."""

    _num_samples = 0  # class defaults: a searcher pickled before these existed still restores
    _token = ""
    _adopted = 0
    _max_instability: float | None = None
    # Ray runs Optuna's pruner as a no-op and TPE reads only a PRUNED trial's last intermediate value (and its
    # step), so each `trial.report` inside a level is only a row in the study's storage, written on the driver's
    # one thread: 3.3 ms of wall time per result on PostgreSQL (docs/CLUSTER.md "Capacity"). Level ends are
    # reported, and a stopped trial's last evaluation when it ends; True reports every evaluation, as Ray does.
    every_result = False

    def __init__(self, *args: Any, num_samples: int = 0, max_instability: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._num_samples = num_samples
        self._max_instability = max_instability
        self._token = uuid.uuid4().hex
        self._adopted = 0  # trials of this experiment that ended without Ray knowing (see restore)

    @property
    def _study(self) -> optuna.Study:
        return self._ot_study  # type: ignore[return-value]

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self._num_samples and len(self._ot_trials) + self._adopted >= self._num_samples:
            return Searcher.FINISHED  # type: ignore[return-value]
        new = trial_id not in self._ot_trials
        config = super().suggest(trial_id)
        if new and trial_id in self._ot_trials:
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_user_attr(TRIAL_ATTR, trial_id)
            ot_trial.set_user_attr(RUN_ATTR, self._token)
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self._completed_trials:
            return  # told before its driver died, run again from its last checkpoint on resume
        if not (self.every_result or result.get(LEVEL_DONE)):
            return  # an evaluation inside a level (see `every_result`)
        if self._max_instability is not None and INSTABILITY in result and trial_id in self._ot_trials:
            # Optuna's samplers read trial constraints (Trial.set_constraint): the latest level's counts
            self._ot_trials[trial_id].set_constraint(CONSTRAINT, float(result[INSTABILITY]) - self._max_instability)
        self._report(trial_id, result)

    def _report(self, trial_id: str, result: dict[str, Any]) -> None:
        # A trial restarted from its last level checkpoint reports that level's epochs again, at the same
        # steps and (training being deterministic) with the same values: Optuna keeps the first; no warning.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The reported value is ignored", category=UserWarning)
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials or self._told(trial_id):
            self._completed_trials.add(trial_id)
            return
        if result is not None and (result.get("diverged") or result.get("invalid")):
            self._fail(trial_id, str(result.get("status_reason") or "diverged"))
            return
        ot_trial = self._ot_trials[trial_id]
        if self._max_instability is not None and CONSTRAINT not in ot_trial.constraints:
            ot_trial.set_constraint(CONSTRAINT, 1.0)  # never measured (stopped before a level ended): infeasible
        stopped_early = result is not None and not error and not result.get("final") and not result.get("collapsed")
        if not stopped_early:
            super().on_trial_complete(trial_id, result, error)
            return
        if result is not None and not result.get(LEVEL_DONE) and isinstance(self.metric, str) \
                and self.metric in result and "training_iteration" in result:
            self._report(trial_id, result)  # TPE ranks a PRUNED trial by its last step and intermediate value
        self._study.tell(self._ot_trials[trial_id], None, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)

    def _told(self, trial_id: str) -> bool:
        ot_trial = self._ot_trials[trial_id]
        return self._study._storage.get_trial(ot_trial._trial_id).state.is_finished()  # noqa: SLF001

    def _fail(self, trial_id: str, reason: str) -> None:
        ot_trial = self._ot_trials[trial_id]
        ot_trial.set_user_attr(FAIL_REASON, reason[:1000])
        self._study.tell(ot_trial, None, state=TrialState.FAIL)
        self._completed_trials.add(trial_id)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._completed_trials.update(t for t in self._ot_trials if self._told(t))
        known = {t._trial_id for t in self._ot_trials.values()}  # noqa: SLF001
        self._adopted = settle_orphans(self._study, known, self._token)


def settle_orphans(study: optuna.Study, known: set[int], token: str) -> int:
    """This experiment's trials unknown to the restored searcher: RUNNING ones FAIL (nothing will report
    them); the number of those that had ended on their own (they count toward the budget) is returned."""
    storage = study._storage  # noqa: SLF001 - the Study API cannot touch a trial this process did not ask
    adopted = 0
    for trial in study.get_trials(deepcopy=False):
        if not token or trial.user_attrs.get(RUN_ATTR) != token or trial._trial_id in known:  # noqa: SLF001
            continue
        if trial.state == TrialState.RUNNING:
            storage.set_trial_user_attr(trial._trial_id, FAIL_REASON, ORPHAN_REASON)  # noqa: SLF001
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # noqa: SLF001
        elif trial.user_attrs.get(FAIL_REASON) != ORPHAN_REASON:
            adopted += 1
    return adopted
