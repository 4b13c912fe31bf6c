"""The work of one sweep trial without Ray Tune: the stand-in that benchmarks 5 and 6 compare against.

`trainables.trainable.ticket_trial` runs a `Lottery`, hands every evaluation and level to its tracking
sink, writes a checkpoint per level and reports to Tune. `plain_trial` does the same minus Tune: the same
Lottery, the same sink calls (start, epoch, level, finish) and the same level checkpoints, written to a
temporary folder. What differs from a Tune trial is then orchestration alone: actor start-up, Tune's
reporting and result handling, Optuna's suggestions and checkpoint persistence.
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch

from trainables.config import KEYS, Ticket
from trainables.io import checkpoint
from trainables.lottery import Lottery
from trainables.trainable import Sink
from trainables.training.loop import Diverged


def plain_trial(config: dict[str, Any], sink: Sink | None = None, trial_id: str = "loop") -> float:
    """One ticket search as the trainable runs it, minus Tune; returns the final level's val_score."""
    ticket = Ticket.from_flat({k: v for k, v in config.items() if k in KEYS})
    if sink is not None:
        sink.start(trial_id, ticket.flat())
    lottery = Lottery(ticket, on_epoch=sink.epoch if sink is not None else None)
    score = float("nan")
    try:
        for result in lottery.run():
            rewind = lottery.state.rewind[0] if result.level == 0 or ticket.prune.method == "init" else None
            if sink is not None:
                sink.level(result, rewind)
            with tempfile.TemporaryDirectory(prefix="ticket-ckpt-") as folder:
                checkpoint.save(lottery.state, folder)
            score = result.val_score
    except Diverged as e:  # as the trainable: a diverged trial ends FAILED, the sweep goes on
        if sink is not None:
            sink.finish("FAILED", f"diverged: {e}")
        return float("nan")
    if sink is not None:
        sink.finish("FINISHED")
    return score


def one_thread() -> None:
    """Process-pool initializer: one torch thread per worker, as Ray gives a 1-CPU trial."""
    torch.set_num_threads(1)
