"""The Ray Tune trainable: one trial = one ticket search, reported per evaluation, checkpointed per level.

This is the only module of `trainables/` that imports Ray, and it imports only `ray.tune` (Ray 2.60's
Train V2 makes `ray.train.*` raise inside Tune trainables). Tracking comes in from outside as a `Sink`
object, so workers log with explicit run ids and `trainables/` never imports MLflow.

Each evaluation (end of an epoch) is reported with `epochs_total` (cumulative epochs, the scheduler's
time attribute); each level boundary is reported with the level's metrics and a checkpoint, from which
a failed or resumed trial continues.
"""

from __future__ import annotations

import tempfile
from typing import Any, Protocol

from ray import tune

from trainables import checkpoint
from trainables.config import KEYS, Ticket
from trainables.lottery import Lottery, State
from trainables.results import LevelResult


class Sink(Protocol):
    """Where a trial's records go (MLflow in the service); every call carries what it needs."""

    def start(self, trial_id: str, flat: dict[str, Any]) -> None: ...

    def epoch(self, row: dict[str, Any]) -> None: ...

    def level(self, result: LevelResult, rewind: dict[str, Any] | None) -> None: ...

    def finish(self, status: str, reason: str = "") -> None: ...


def level_metrics(result: LevelResult, state: State) -> dict[str, Any]:
    """The metrics reported to Ray at a level boundary."""
    return {"level": result.level, "density": result.density, "sparsity": 1 - result.density,
            "val_acc": result.val_acc, "val_loss": result.val_loss, "val_score": result.val_score,
            "test_acc": result.test_acc, "test_score": result.test_score, "collapsed": int(result.collapsed),
            "epochs_total": state.epochs_total, "level_done": True, "final": state.done}


def ticket_trial(config: dict[str, Any], sink: Sink | None = None) -> None:
    """Run one ticket search inside Ray Tune. `config` holds flat ticket keys (others are ignored)."""
    ticket = Ticket.from_flat({k: v for k, v in config.items() if k in KEYS})
    state = _restore()
    if sink is not None:
        sink.start(tune.get_context().get_trial_id(), ticket.flat())
    lottery: Lottery | None = None

    def on_epoch(row: dict[str, Any]) -> None:
        if sink is not None:
            sink.epoch(row)
        assert lottery is not None
        if row["iteration"] < lottery.total:  # the level's last evaluation is reported with its checkpoint
            tune.report({**row, "sparsity": 1 - row["density"], "collapsed": 0, "level_done": False,
                         "final": False})

    try:
        lottery = Lottery(ticket, state=state, on_epoch=on_epoch)
        for result in lottery.run():
            rewind = lottery.state.rewind[0] if result.level == 0 or ticket.prune.method == "init" else None
            if sink is not None:
                sink.level(result, rewind)
            with tempfile.TemporaryDirectory(prefix="ticket-ckpt-") as folder:
                checkpoint.save(lottery.state, folder)
                tune.report(level_metrics(result, lottery.state),
                            checkpoint=tune.Checkpoint.from_directory(folder))
    except Exception as e:
        if sink is not None:
            sink.finish("FAILED", f"{type(e).__name__}: {e}")
        raise
    except BaseException:  # Tune stops a trial (scheduler, stopper) by raising SystemExit in its thread
        if sink is not None:
            sink.finish("KILLED")  # the driver's callback records why
        raise
    if sink is not None:
        sink.finish("FINISHED")


def _restore() -> State | None:
    ckpt = tune.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as folder:
        return checkpoint.load(folder)
