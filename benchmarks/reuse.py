"""Benchmark 9: stage reuse (trainables/staged.py), epochs trained with the stage store and without, side by side.

9a. a 16-trial sweep varying only `prune.rate`, `prune.rewind_iter` and `prune.scorer`, one-shot (one pruning
    level after the dense one): every trial trains the same dense lenet300 on digits; with the store, one does;
9b. the same 16 trials as IMP to density 0.2 (2 to 8 pruning levels after the dense one);
9c. 9b's trials again, taken down to density 0.1, on the store 9b filled: level L is keyed by its prefix, so each
    trial loads the levels 9b trained and trains only the new ones (a sweep refined or extended later);
7r. benchmark 7 (ASHA + TPE against random search without stopping, epochs until a ticket within 0.5 points of
    the best) with the stage store on for ASHA + TPE. Benchmark 7 samples `train.lr` and `prune.rate` from
    continuous ranges, so no two trials share a level there; here they come from grids over the same ranges (6
    lrs, 5 rates: a common way to search them), so trials that drew one lr share their dense level and those
    that drew the same pair share every level. The same space runs without the store too (7s), so the row
    shows what reuse adds.

Each sweep is a real one (`search.tune.runner.run_sweep`: local Ray, Optuna, MLflow sqlite) under a temporary
folder, each with a stage store of its own (no sweep profits from another's). Epochs trained are the trials'
reported `epochs_trained` (`epochs_total` without the store: the two are then equal).

    python -m benchmarks.reuse            # 9a, 9b and 7r/7s at full sizes (about 15-25 minutes on 2 cores)
    python -m benchmarks.reuse --quick    # small sizes (a few minutes)
    python -m benchmarks.reuse --only 7r --seeds 2   # one part, fewer seeds
    python -m benchmarks.run --only 9     # the same rows through the benchmark command
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import FULL, QUICK, Row, Sizes, command_line, machine, markdown, table
from benchmarks.service import SEARCH_VAL_FRACTION, WITHIN, sweep_doc, timed_sweep, trial_outcomes
from search.tune.runner import SweepOutcome

TRIALS = 16  # 9a/9b: the sweep
DEEPER = 0.1  # 9c: the target 9b's trials are taken down to
LR_GRID = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3]  # 7r: benchmark 7's range [1e-3, 0.5], on a log grid
RATE_GRID = [0.2, 0.3, 0.4, 0.5, 0.6]  # 7r: benchmark 7's range of prune.rate, on a grid
REUSE_SEEDS = {True: 1, False: 3}  # 7r: seeds (quick, full); each is 3 whole sweeps

WHY_ONE_SHOT = ("a one-shot trial trains the dense level and one pruned level, so the dense level is at most half of "
                "what a trial trains and reuse saves under 2x unless the rewind point shortens level 1; the prefix "
                "to each new rewind point is trained once more")
WHY_IMP = ("IMP to density 0.2 trains 2 to 8 pruned levels after the dense one: the dense level is a ninth to a third "
           "of a trial, which bounds what reusing it can save")
WHY_SEARCH = ("ASHA's first rung falls right after the dense level, so trials that share an lr arrive there at no "
              "cost and a repeated (lr, rate) pair costs nothing, but ASHA's decisions follow the arrival order of "
              "results, which reuse changes, and random search on digits often meets the mark within a few trials: "
              "a few seeds of 32 trials swing by several times")


def pruning_sweep(root: Path, name: str, s: Sizes, *, stages: str, levels: int | None) -> dict[str, Any]:
    """16 trials of lenet300 on digits that differ in pruning keys only (random sampler, no early stopping)."""
    doc = sweep_doc(root, name, s, sampler="random", scheduler="none", stages=stages)
    doc["base"]["train.lr"] = 0.05
    if levels is not None:  # one-shot: `levels` pruning levels; the objective reads the last one's density
        doc["base"]["prune.levels"] = levels
    doc["space"] = {"prune.rate": {"type": "float", "low": 0.25 if levels else 0.2, "high": 0.8 if levels else 0.6},
                    # about 20 iterations per epoch: rewind into the first epoch (0 = the initialisation)
                    "prune.rewind_iter": {"type": "int", "low": 0, "high": 20, "step": 5},
                    "prune.scorer": {"type": "categorical", "choices": ["magnitude", "random", "snip", "synflow"]}}
    if levels:
        doc["objective"] = {"name": "accuracy_at_density", "target_density": 0.8}  # any level at or below counts
    doc["budget"]["num_samples"] = TRIALS
    return doc


def spent(outcome: SweepOutcome, dense_epochs: int) -> tuple[float, int, float]:
    """(epochs trained by all trials, trials that trained their dense level themselves, epochs trained outside
    the pruned levels: dense levels and rewind prefixes)."""
    total, trained_dense, outside = 0.0, 0, 0.0
    for r in outcome.results:
        df = r.metrics_dataframe
        if df is None or df.empty:
            continue
        trained, represented = float(df["epochs_trained"].max()), float(df["epochs_total"].max())
        total += trained
        trained_dense += not df[df["level"] == 0]["reused_stage"].max()
        outside += trained - (represented - dense_epochs)  # the pruned levels train what they represent
    return total, trained_dense, outside


def pruning_rows(s: Sizes, quick: bool) -> list[Row]:
    rows = []
    variants = (("9a", "one-shot", 1, WHY_ONE_SHOT), ("9b", "IMP to density 0.2", None, WHY_IMP))
    for number, label, levels, why in variants:
        with tempfile.TemporaryDirectory(prefix="bench-reuse-") as tmp:
            got = {}
            for reuse in (True, False):
                stages = str(Path(tmp) / "stages") if reuse else "off"
                doc = pruning_sweep(Path(tmp), f"{number}{'r' if reuse else 'n'}", s, stages=stages, levels=levels)
                got[reuse] = spent(timed_sweep(doc)[1], s.trial_epochs)
            (with_r, dense_r, outside_r), (without, dense_n, outside_n) = got[True], got[False]
            rows.append(Row(number, f"stage reuse: {TRIALS}-trial {label} sweep varying prune.rate, rewind_iter, "
                            "scorer (epochs trained)", "stage store", "without", with_r, without, without / with_r,
                            "speedup", 2.0, unit="epochs", why=why,
                            note=f"{s.trial_epochs} epochs per level; the dense level trained by {dense_r} trial(s) "
                                 f"with the store, by {dense_n} without; dense levels and rewind prefixes: "
                                 f"{outside_r:.1f} epochs with the store, {outside_n:.1f} without; the pruned levels "
                                 f"{with_r - outside_r:.1f} and {without - outside_n:.1f} (reuse's bound: "
                                 f"{without / (without - outside_n + s.trial_epochs):.2f}x)"))
            if levels is None:  # 9c: the same trials taken deeper, on the store 9b filled
                rows.append(deeper_row(Path(tmp), s))
    return rows


def deeper_row(tmp: Path, s: Sizes) -> Row:
    """9c: 9b's 16 trials again with the target lowered to DEEPER, on the stage store 9b left (and without): each
    trial loads every level 9b trained (level L is keyed by its prefix) and trains only the levels below 0.2."""
    got = {}
    for reuse in (True, False):
        doc = pruning_sweep(tmp, f"9c{'r' if reuse else 'n'}", s, stages=str(tmp / "stages") if reuse else "off",
                            levels=None)
        doc["objective"]["target_density"] = DEEPER
        got[reuse] = spent(timed_sweep(doc)[1], s.trial_epochs)[0]
    return Row("9c", f"stage reuse: 9b's trials taken deeper (density {DEEPER}) on the store 9b filled (epochs "
               "trained)", "stage store", "without", got[True], got[False], got[False] / got[True], "speedup", 2.0,
               unit="epochs", note=f"{s.trial_epochs} epochs per level; with the store only the levels below "
                                   "density 0.2 train: the ones above are loaded by their prefix's key")


def search_doc(root: Path, name: str, s: Sizes, *, sampler: str, scheduler: str, seed: int, stages: str
               ) -> dict[str, Any]:
    doc = sweep_doc(root, name, s, sampler=sampler, scheduler=scheduler, seed=seed,
                    val_fraction=SEARCH_VAL_FRACTION, stages=stages)
    doc["space"]["train.lr"] = {"type": "categorical", "choices": LR_GRID}
    doc["space"]["prune.rate"] = {"type": "categorical", "choices": RATE_GRID}
    doc["budget"]["num_samples"] = s.search_trials
    return doc


def epochs_until(outcome: SweepOutcome, mark: float) -> tuple[float, bool]:
    """(epochs all trials had trained when the first ticket at or above `mark` was reported, whether one was):
    by the clock, not by trial creation order, so a trial that loaded levels another one trained is not
    counted before that one (with the store, a later trial can pay for an earlier one's levels)."""
    frames = [r.metrics_dataframe for r in outcome.results
              if r.metrics_dataframe is not None and not r.metrics_dataframe.empty]
    hits = [float(df[(df["final"] == True) & (df["val_score"] >= mark)]["timestamp"].min())  # noqa: E712
            for df in frames]
    hits = [h for h in hits if math.isfinite(h)]
    until = min(hits) if hits else math.inf
    spent = [df[df["timestamp"] <= until]["epochs_trained"].max() for df in frames]
    return float(sum(x for x in spent if math.isfinite(x))), bool(hits)


def search_rows(s: Sizes, quick: bool, seeds: int = 0) -> list[Row]:
    """7r/7s: epochs until a ticket within 0.5 points of the best any of the three sweeps found."""
    logging.getLogger("ray").setLevel(logging.WARNING)
    arms = {"asha+reuse": ("tpe", "asha", True), "asha": ("tpe", "asha", False), "random": ("random", "none", False)}
    spent_by: dict[str, list[float]] = {a: [] for a in arms}
    missed = 0
    seeds = seeds or REUSE_SEEDS[quick]
    with tempfile.TemporaryDirectory(prefix="bench-reuse-search-") as tmp:
        for seed in range(seeds):
            outcomes = {}
            for arm, (sampler, scheduler, reuse) in arms.items():
                stages = str(Path(tmp) / f"stages-{seed}") if reuse else "off"
                doc = search_doc(Path(tmp), f"{arm.replace('+', '-')}{seed}", s, sampler=sampler, scheduler=scheduler,
                                 seed=seed, stages=stages)
                outcomes[arm] = timed_sweep(doc)[1]
            best = max(score for o in outcomes.values() for _, score in trial_outcomes(o, "epochs_trained"))
            for arm, o in outcomes.items():
                epochs, reached = epochs_until(o, best - WITHIN)
                spent_by[arm].append(epochs)
                missed += not reached
            print(f"7r seed {seed}: " + ", ".join(f"{a} {v[-1]:.0f}" for a, v in spent_by.items()), flush=True)
    random = statistics.median(spent_by["random"])
    ratios = {a: statistics.median(r / max(o, 1e-9) for r, o in zip(spent_by["random"], spent_by[a], strict=True))
              for a in ("asha+reuse", "asha")}
    note = (f"{s.search_trials} trials per sweep, {seeds} seed(s), train.lr from {LR_GRID}, prune.rate from "
            f"{RATE_GRID}, val_fraction {SEARCH_VAL_FRACTION}; epochs trained by all trials until the first ticket "
            "at the mark was reported (by the clock); per seed (ASHA+TPE with reuse / without / random): " +
            ", ".join(f"{a:.0f}/{b:.0f}/{c:.0f}" for a, b, c in zip(*(spent_by[k] for k in arms), strict=True)) +
            (f"; {missed} sweep(s) never reached it (counted at their total)" if missed else ""))
    name = "search efficiency: epochs to a ticket within 0.5 points of the best, lr and rate on grids"
    ours = statistics.median(spent_by["asha+reuse"])
    return [Row("7r", name, "ASHA+TPE with stage reuse", "random, no stopping", ours, random,
                ratios["asha+reuse"], "speedup", 3.0, unit="epochs", note=note, why=WHY_SEARCH),
            Row("7s", name, "ASHA+TPE without reuse", "random, no stopping", statistics.median(spent_by["asha"]),
                random, ratios["asha"], "ratio", 0.0, unit="epochs", note="7r's space and seeds, the store off")]


def reuse_rows(s: Sizes, quick: bool = False) -> list[Row]:
    return pruning_rows(s, quick) + search_rows(s, quick)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reuse", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=0, help="7r: seeds (default 1 quick, 3 full)")
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    parser.add_argument("--only", default="", help="9 (the 16-trial sweeps) or 7r (benchmark 7 with reuse)")
    parser.add_argument("--out", default="", help="markdown file to write the rows to ('' = print only)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    parts = {"9": pruning_rows, "7r": lambda s, quick: search_rows(s, quick, args.seeds)}
    wanted = [w.strip() for w in args.only.split(",") if w.strip()] or list(parts)
    unknown = [w for w in wanted if w not in parts]
    if unknown:
        parser.error(f"--only: unknown part {', '.join(unknown)}; valid: {', '.join(parts)}")
    torch.set_num_threads(1)  # as benchmarks.run: the driver's share of the 2 cores; trials get 1 thread each
    rows = []
    for w in wanted:  # each part's rows as it ends: a later part failing loses none of them
        done = parts[w](sizes, args.quick)
        rows += done
        for r in done:
            print(f"{r.number}: {r.ours} {r.ours_value:.1f} epochs, {r.theirs} {r.theirs_value:.1f} epochs, "
                  f"ratio {r.ratio:.2f}x; {r.note}", file=sys.stdout, flush=True)
    from rich.console import Console

    Console(width=150).print(table(rows))
    if args.out:
        command = command_line("benchmarks.reuse", argv)
        Path(args.out).write_text(markdown(rows, machine(), command, args.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
