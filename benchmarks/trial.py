"""The work of one sweep trial without Ray Tune: the stand-in that benchmarks 5 and 6 compare against.

A sweep's trial is `trainables.trial.run_trial` reporting to Tune (trainables/trainable.py). `plain_trial`
runs that very body with a reporter that keeps the metrics and drops the checkpoints: the same Lottery,
the same sink calls (start, epoch, level, finish) and the same level checkpoints, written to a temporary
folder. What differs from a Tune trial is then orchestration alone: actor start-up, Tune's reporting and
result handling, Optuna's suggestions and checkpoint persistence.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from trainables.io.checkpoint import State
from trainables.trial import Sink, run_trial


class PlainReporter:
    """A trial's reports kept in memory; no checkpoint is kept (the trial writes each one, then drops it)."""

    def __init__(self, trial_id: str) -> None:
        self.id = trial_id
        self.levels: list[dict[str, Any]] = []  # the metrics of each level boundary and of a failed end

    def trial_id(self) -> str:
        return self.id

    def restore(self) -> State | None:
        return None

    def report(self, metrics: dict[str, Any], folder: str | None = None) -> None:
        if folder is not None or metrics.get("diverged") or metrics.get("invalid"):  # not an epoch's row
            self.levels.append(metrics)


def plain_trial(config: dict[str, Any], sink: Sink | None = None, trial_id: str = "loop") -> float:
    """One ticket search as the trainable runs it, minus Tune; returns the final level's val_score (NaN when
    it diverged)."""
    reporter = PlainReporter(trial_id)
    run_trial(config, reporter, sink)
    return float(reporter.levels[-1]["val_score"]) if reporter.levels else math.nan


def one_thread() -> None:
    """Process-pool initializer: one torch thread per worker, as Ray gives a 1-CPU trial."""
    torch.set_num_threads(1)
