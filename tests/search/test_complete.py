"""Every finished level reaches MLflow exactly once, whatever ends its trial, on every machine.

A trial logs from a background thread while it trains, and Ray can stop it at any moment: ASHA, the
collapse stopper, `max_t`, the sweep's time budget, the end of the sweep (its process is torn down). On a
fast machine the thread usually wins that race; on a slow one it lost finished tickets. These tests make
the thread lose on every machine: `TICKET_SEARCH_TEST_TRACKING_DELAY_S` sleeps before each tracking call
in the trials, so records are still queued when Ray stops them. Then they audit MLflow against Ray's own
files (`sweepcheck.audit`), as a user would. With the driver's reconciliation switched off
(`TICKET_SEARCH_TEST_SKIP_RECONCILE=1`) they fail: the first test shows it in the suite itself.

The lost node and the killed driver, with the same delay, are in test_faults.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from search import cli
from search.sweep.file import sweep_from_dict
from search.tracking import schema as S
from search.tracking.outbox import DELAY_ENV
from search.tune import reconcile
from search.tune.runner import SweepOutcome, run_sweep
from search.tune.searcher import TRIAL_ATTR
from tests.helpers.sweepcheck import audit, ray_trials, runs_of, study_trials
from tests.search.test_sweep import sweep_doc
from tests.search.test_sweep_services import write_sweep

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]
DELAY_S = 1.0  # per tracking call: a level's records take seconds to send, its training a fraction of that


def endings(doc: dict[str, Any], monkeypatch: pytest.MonkeyPatch, *, reconciled: bool = True,
            ) -> tuple[SweepOutcome, dict[str, Any]]:
    """Run the sweep with slow tracking calls; its outcome and Ray's record of each trial."""
    monkeypatch.setenv(DELAY_ENV, str(DELAY_S))
    if not reconciled:
        monkeypatch.setenv(reconcile.SKIP_ENV, "1")
    sweep = sweep_from_dict(doc)
    outcome = run_sweep(sweep)
    return outcome, ray_trials(sweep.ray_storage, sweep.name)


def scheduler_sweep(root: Path, name: str) -> dict[str, Any]:
    """One trial at a time (so ASHA's decisions do not depend on timing), seeded random sampling over a
    good and a hopeless learning rate and a gentle and a drastic pruning rate. Seed 6 draws, in order:
    (0.3, 0.2) runs to ASHA's max_t (Ray stops it at its last result); (0.99, 0.2) ties it at the first
    rung (level 0 does not depend on the rate) and collapses at level 1: a 64-8-512-10 MLP pruned globally
    by magnitude keeps 9% of the 64-8 layer and nothing of the 8-512 one, so the collapse stopper ends it;
    (0.99, 0.0001) twice: hopeless, stopped by ASHA at the first rung; (0.3, 0.2) again, to max_t."""
    doc = sweep_doc(
        root, name,
        base={"model.widths": "8,512", "train.epochs": 1, "prune.levels": 2, "prune.scope": "global",
              "prune.controls": "shuffle"},
        space={"prune.rate": [0.3, 0.99], "train.lr": [0.2, 0.0001]},
        search={"sampler": "random", "seed": 6},
        scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2},
        budget={"num_samples": 5, "max_concurrent": 1})
    doc["objective"] = {"name": "pareto"}  # no target density: every trial has exactly its 2 levels
    return doc


def how_they_ended(trials: dict[str, Any]) -> dict[str, set[str]]:
    """Trial ids by ending, from Ray's result rows."""
    ends: dict[str, set[str]] = {"final": set(), "collapsed": set(), "stopped": set()}
    for trial, seen in trials.items():
        last = seen["rows"][-1] if seen["rows"] else {}
        ends["final" if last.get("final") else "collapsed" if last.get("collapsed") else "stopped"].add(trial)
    return ends


def test_without_the_reconciliation_the_delay_loses_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The forced race is real: with the reconciliation off, finished levels are missing from MLflow."""
    outcome, trials = endings(scheduler_sweep(tmp_path, "raced"), monkeypatch, reconciled=False)
    problems = audit(outcome.sweep.tracking_uri, outcome.sweep.ray_storage, "raced")
    assert any("FINISHED of" in p for p in problems), problems  # lost ticket runs
    print(f"\nwithout reconciliation: {len(problems)} problem(s), e.g. {problems[:3]}")


def test_asha_max_t_collapse_and_the_sweep_end_lose_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outcome, trials = endings(scheduler_sweep(tmp_path, "endings"), monkeypatch)
    ends = how_they_ended(trials)
    assert all(ends.values()), ends  # each ending happened: max_t, collapse, stopped by ASHA
    problems = audit(outcome.sweep.tracking_uri, outcome.sweep.ray_storage, "endings")
    assert not problems, problems
    by_trial = {r.data.tags[S.TAG_TRIAL]: r for r in runs_of(outcome.sweep.tracking_uri, "endings", S.TRIAL)}
    reasons = {t: by_trial[t].data.tags.get(S.TAG_STATUS_REASON, "") for t in ends["collapsed"] | ends["stopped"]}
    assert all("layer collapse" in reasons[t] for t in ends["collapsed"]), reasons
    assert all("scheduler" in reasons[t] for t in ends["stopped"]), reasons
    assert all(by_trial[t].info.status == "FINISHED" for t in ends["final"])
    levels = sum(len(seen["levels"]) for seen in trials.values())
    assert outcome.record.levels_finished == outcome.record.levels_recorded == levels
    assert outcome.record.written > 0  # the delay left work for the reconciliation: the test has teeth
    print(f"\nendings {ends}: {levels} finished levels, {outcome.record.written} ticket runs written by the driver")


def test_the_time_budget_and_completed_trials_lose_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Two trials at once (seed 0 draws 1000 levels, then 1): the short one completes; the long one (levels of
    a fraction of a second; 200 of them took 15 s on a loaded 2-core machine, and it would need 919 to reach
    the target) is cut by the sweep's 40 s time budget after some levels, however fast the machine and
    however slow its start (trial actors took 3-10 s to start there).
    Run through the CLI: its closing summary must say what ran and what MLflow holds."""
    doc = sweep_doc(tmp_path, "budget", base={"train.epochs": 3, "prune.rate": 0.005},
                    search={"sampler": "random", "seed": 0}, scheduler={"name": "none"},
                    budget={"num_samples": 2, "max_concurrent": 2, "time_limit_s": 40})
    doc["space"] = {"prune.levels": [1, 1000]}
    doc["objective"]["target_density"] = 0.01
    monkeypatch.setenv(DELAY_ENV, str(DELAY_S))
    assert cli.main(["sweep", str(write_sweep(tmp_path / "budget.toml", doc))]) == 0
    out = " ".join(capsys.readouterr().out.split())
    sweep = sweep_from_dict(doc)
    trials = ray_trials(sweep.ray_storage, "budget")
    ends = how_they_ended(trials)
    assert len(ends["final"]) == 1 and len(ends["stopped"]) == 1, ends
    cut = next(iter(ends["stopped"]))
    assert len(trials[cut]["levels"]) >= 2, trials[cut]["levels"]  # it had finished levels to lose
    problems = audit(sweep.tracking_uri, sweep.ray_storage, "budget")
    assert not problems, problems
    run = next(r for r in runs_of(sweep.tracking_uri, "budget", S.TRIAL) if r.data.tags[S.TAG_TRIAL] == cut)
    assert run.info.status == "KILLED" and "time budget" in run.data.tags[S.TAG_STATUS_REASON]
    levels = sum(len(seen["levels"]) for seen in trials.values())
    assert "2 trials: 1 ran every level, 1 stopped early, 0 failed" in out, out
    assert f"levels finished (Ray's level checkpoints): {levels}; recorded in MLflow: {levels}" in out, out
    assert "No ticket reached the target density 1.0%; the best at any density:" in out, out  # not "no tickets"
    states = {t.user_attrs[TRIAL_ATTR]: t.state.name for t in study_trials(sweep.optuna_storage, "budget")}
    assert states[cut] == "PRUNED" and "RUNNING" not in states.values(), states  # Ray never told Optuna
    print(f"\ntime budget: the cut trial finished {len(trials[cut]['levels'])} levels; summary: {out[:300]}")
