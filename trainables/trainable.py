"""The Ray Tune trainable: one trial = one ticket search (trainables/trial.py), reporting to Tune.

This is the only module of `trainables/` that imports Ray, and it imports only `ray.tune` (Ray 2.60's
Train V2 makes `ray.train.*` raise inside Tune trainables). Tune gets every evaluation and, at each level
boundary, the level's metrics with its checkpoint, from which a failed or resumed trial continues.
"""

from __future__ import annotations

from typing import Any

from ray import tune

from trainables.io import checkpoint
from trainables.io.checkpoint import State
from trainables.trial import Sink, run_trial


class TuneReporter:
    """Tune's side of a trial: its id, its last checkpoint, and `tune.report`."""

    def trial_id(self) -> str:
        return str(tune.get_context().get_trial_id())

    def restore(self) -> State | None:
        ckpt = tune.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as folder:
            return checkpoint.load(folder)

    def report(self, metrics: dict[str, Any], folder: str | None = None) -> None:
        if folder is None:
            tune.report(metrics)
        else:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def ticket_trial(config: dict[str, Any], sink: Sink | None = None, scratch: str = "") -> None:
    """Run one ticket search inside Ray Tune. `config` holds flat ticket keys (others are ignored);
    `scratch` is where checkpoints are staged before Ray takes them ("" = the system temp folder)."""
    run_trial(config, TuneReporter(), sink, scratch)
