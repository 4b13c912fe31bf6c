"""Benchmarks 5-7: the search service (Ray Tune + Optuna + MLflow) against doing without it.

5. orchestration: a sweep through `search.runner.run_sweep` vs the same trials' work (`benchmarks/trial.py`)
   in a plain process pool on the same cores with the same concurrency (2 at a time, one thread each);
6. tracking: one trial with full MLflow logging (masks and rewind weights included) vs without;
7. search efficiency: ASHA + TPE vs random search without stopping, same number of trials, on digits at a
   fixed target density: epochs spent until a ticket within 0.5 points of the best either found appears.
Everything lives in a temporary folder (MLflow sqlite store, Optuna journal, Ray results), deleted after.
Run through `python -m benchmarks.run --only 5,6,7`.
"""

from __future__ import annotations

import os

for _key, _value in (("RAY_AUTH_MODE", "disabled"), ("RAY_USAGE_STATS_ENABLED", "0"),
                     ("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")):
    os.environ.setdefault(_key, _value)  # before Ray is imported (STACK.md): no token, no telemetry

import logging  # noqa: E402
import multiprocessing  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import ray  # noqa: E402

from benchmarks.common import Row, Sizes, overhead  # noqa: E402
from benchmarks.trial import one_thread, plain_trial  # noqa: E402
from search.sweep.file import Sweep, sweep_from_dict  # noqa: E402
from search.tracking.sink import MlflowSink  # noqa: E402
from search.tracking.store import prepare  # noqa: E402
from search.tune.runner import SweepOutcome, run_sweep  # noqa: E402
from trainables.config import KEYS  # noqa: E402

WITHIN = 0.005  # "within 0.5 points" of the best ticket, as a fraction (val_score is an accuracy)
TARGET_DENSITY = 0.2
SEARCH_VAL_FRACTION = 0.3  # 431 validation digits: 0.5 points is 2 examples (at the default 0.1 it is under 1)

WHY_ORCHESTRATION = ("Ray start-up and each trial's actor, reports and checkpoint persistence are fixed costs; digits "
                     "trials of a few seconds make them visible")
WHY_TRACKING = ("the sink sends a level's records (the ticket run: create it, log params and metrics, store the mask "
                "artifacts, terminate it) from a background thread while the next level trains, but on 2 cores that "
                "thread competes with training for the GIL and a core, and the trial's end waits for its last level's "
                "records: {per_level:.0f} ms of extra wall time per level here, against {train:.0f} ms of training "
                "per level; where a level takes minutes it is under 1%")
TRACKED_LEVELS = 6  # rate 0.3 from density 1 to 0.2: levels 0..5
WHY_SEARCH = ("ASHA stops a trial whose dense level trails (grace period: one level), saving most of a poor "
              "trial's epochs, but on digits most learning rates in the range reach similar accuracy, so random "
              "search also meets a ticket within 0.5 points after a few trials, and ASHA sometimes stops a slow "
              "starter that would have ended best; TPE's first 10 trials are random, like the baseline's")


def sweep_doc(root: Path, name: str, s: Sizes, *, sampler: str, scheduler: str, seed: int = 0,
              val_fraction: float = 0.1, stages: str = "off") -> dict[str, Any]:
    """A digits sweep sized like sweeps/digits.toml: lenet300, IMP to density 0.2, rate and lr searched; the
    stage store off unless `stages` names a folder (benchmarks/reuse.py measures what it saves)."""
    return {
        "name": name,
        "base": {"data.name": "digits", "data.val_fraction": val_fraction, "model.name": "lenet300",
                 "train.epochs": s.trial_epochs, "train.batch_size": 64, "train.momentum": 0.9,
                 "train.device": "cpu"},
        # a wide lr range: poor trials exist, which is what early stopping is for
        "space": {"prune.rate": {"type": "float", "low": 0.2, "high": 0.6},
                  "train.lr": {"type": "float", "low": 1e-3, "high": 0.5, "log": True}},
        "objective": {"name": "accuracy_at_density", "target_density": TARGET_DENSITY},
        "search": {"sampler": sampler, "seed": seed},
        "scheduler": {"name": scheduler, "grace_period": s.trial_epochs, "reduction_factor": 3},
        "budget": {"num_samples": s.sweep_trials, "max_concurrent": 2},
        "resources": {"cpu": 1},
        "storage": {"root": str(root / "runs"), "stages": stages},
    }


def timed_sweep(doc: dict[str, Any]) -> tuple[float, SweepOutcome]:
    """Wall seconds of a whole sweep, Ray start-up included (as `ticket-search sweep` pays it)."""
    sweep = sweep_from_dict(doc)
    start = time.perf_counter()
    outcome = run_sweep(sweep)
    took = time.perf_counter() - start
    ray.shutdown()
    return took, outcome


def timed_loop(configs: list[dict[str, Any]], sweep: Sweep) -> float:
    """Wall seconds of the same trials in a process pool of `max_concurrent` one-thread workers."""
    start = time.perf_counter()
    tracking = prepare(sweep.tracking_uri, f"{sweep.name}-loop", sweep.artifact_root, {})
    sink = MlflowSink(tracking)
    with ProcessPoolExecutor(max_workers=sweep.max_concurrent, initializer=one_thread,
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(plain_trial, configs, [sink] * len(configs), [f"loop{i}" for i in range(len(configs))]))
    return time.perf_counter() - start


def orchestration(s: Sizes) -> list[Row]:
    """5: the sweep first (it decides the trials), then the loop runs exactly those configurations."""
    sweeps, loops = [], []
    with tempfile.TemporaryDirectory(prefix="bench-orch-") as tmp:
        for rep in range(s.long_reps):
            doc = sweep_doc(Path(tmp), f"orch{rep}", s, sampler="tpe", scheduler="none")
            took, outcome = timed_sweep(doc)
            configs = [{k: v for k, v in r.config.items() if k in KEYS} for r in outcome.results]
            sweeps.append(took)
            loops.append(timed_loop(configs, outcome.sweep))
    ratios = [a / b for a, b in zip(sweeps, loops, strict=True)]
    return [_row("5", f"orchestration: sweep of {s.sweep_trials} trials, 2 at a time", "Tune+Optuna+MLflow",
                 statistics.median(sweeps), "process pool + MLflow", statistics.median(loops),
                 statistics.median(ratios), 1.15, why=WHY_ORCHESTRATION,
                 note=f"trials of {s.trial_epochs} epochs per level on digits; Ray start-up included; the "
                      "loop runs the sweep's own configurations with the same MLflow sink")]


def tracking(s: Sizes) -> list[Row]:
    """6: one trial (lenet300, rate 0.3 to density 0.2: 6 levels) with the MLflow sink vs without."""
    config = {"data.name": "digits", "model.name": "lenet300", "train.epochs": s.trial_epochs,
              "train.device": "cpu", "prune.rate": 0.3, "prune.target_density": TARGET_DENSITY,
              "prune.levels": 1000}
    with tempfile.TemporaryDirectory(prefix="bench-track-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        tr = prepare(uri, "tracking-bench", str(Path(tmp) / "artifacts"), {})
        count = [0]

        def tracked() -> None:
            count[0] += 1
            plain_trial(config, MlflowSink(tr), trial_id=f"t{count[0]}")

        row = overhead("6", "tracking: one trial, full MLflow logging vs none", ("MLflow", tracked),
                       ("no tracking", lambda: plain_trial(config, None)), 1.03, max(3, s.long_reps * 2),
                       warmup=False, note=f"wall time; {s.trial_epochs} epochs per level, {TRACKED_LEVELS} levels; "
                                          "sqlite store on local disk")
    row.why = WHY_TRACKING.format(per_level=(row.ours_value - row.theirs_value) / TRACKED_LEVELS * 1e3,
                                  train=row.theirs_value / TRACKED_LEVELS * 1e3)
    return [row]


def search_efficiency(s: Sizes) -> list[Row]:
    """7: epochs until a ticket within 0.5 points of the best one either search found (median over seeds)."""
    logging.getLogger("ray").setLevel(logging.WARNING)
    spent: dict[str, list[float]] = {"asha": [], "random": []}
    ratios, missed = [], 0
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        for seed in range(s.search_seeds):
            trials = {}
            for label, sampler, scheduler in (("asha", "tpe", "asha"), ("random", "random", "none")):
                doc = sweep_doc(Path(tmp), f"{label}{seed}", s, sampler=sampler, scheduler=scheduler, seed=seed,
                                val_fraction=SEARCH_VAL_FRACTION)
                doc["budget"]["num_samples"] = s.search_trials
                trials[label] = trial_outcomes(timed_sweep(doc)[1])
            best = max(score for ts in trials.values() for _, score in ts)
            for label, ts in trials.items():
                epochs, reached = epochs_to_reach(ts, best - WITHIN)
                spent[label].append(epochs)
                missed += not reached
            ratios.append(spent["random"][-1] / spent["asha"][-1])
    note = (f"{s.search_trials} trials per sweep, {s.search_seeds} seed(s), val_fraction {SEARCH_VAL_FRACTION}; "
            "epochs summed over trials in "
            "creation order up to the first one that reached the mark" +
            (f"; {missed} sweep(s) never reached it (counted at their total)" if missed else ""))
    return [_row("7", "search efficiency: epochs to a ticket within 0.5 points of the best", "ASHA+TPE",
                 statistics.median(spent["asha"]), "random, no stopping", statistics.median(spent["random"]),
                 statistics.median(ratios), 3.0, kind="speedup", unit="epochs", note=note, why=WHY_SEARCH)]


def trial_outcomes(outcome: SweepOutcome, spent: str = "epochs_total") -> list[tuple[float, float]]:
    """(epochs spent, final val_score or -inf if stopped early) per trial, in creation order; `spent` names the
    reported count: `epochs_total` (what the ticket represents) or `epochs_trained` (less, where the trial
    loaded its dense level from the stage store)."""
    out = []
    for r in sorted(outcome.results, key=lambda r: str(r.metrics.get("trial_id", ""))):
        df = r.metrics_dataframe
        if df is None or df.empty:
            continue
        epochs = float(df[spent].max())
        finals = df[df["final"] == True]  # noqa: E712 - a pandas column comparison, not an identity test
        score = float(finals["val_score"].iloc[-1]) if len(finals) else float("-inf")
        out.append((epochs, score))
    return out


def epochs_to_reach(trials: list[tuple[float, float]], mark: float) -> tuple[float, bool]:
    total = 0.0
    for epochs, score in trials:
        total += epochs
        if score >= mark:
            return total, True
    return total, False


def _row(number: str, name: str, ours: str, ours_value: float, theirs: str, theirs_value: float, ratio: float,
         target: float, *, kind: str = "overhead", unit: str = "s", note: str = "", why: str = "") -> Row:
    return Row(number, name, ours, theirs, ours_value, theirs_value, ratio, kind, target, unit=unit, note=note,
               why=why)
