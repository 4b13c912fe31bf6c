"""One trial's body, whoever runs it: a ticket search reported per evaluation, checkpointed per level.

A sweep runs it inside Ray Tune (trainables/trainable.py hands it a `Reporter` that is `tune.report`); the
benchmarks run the very same body without Tune (benchmarks/trial.py). Tracking comes in from outside as a
`Sink` object, so workers log with explicit run ids and `trainables/` never imports MLflow.

Each evaluation (end of an epoch) is reported with `epochs_total` (cumulative epochs the ticket represents,
the scheduler's time attribute) and `epochs_trained` (what this trial trained: less, where its dense level
came from the stage store named by the config entry `storage.stages`, trainables/staged.py); each level
boundary is reported with the level's metrics and a checkpoint, from which a failed or resumed trial
continues. A trial whose loss goes NaN/inf ends FAILED without a retry (it
would diverge again), and so does one whose sampled configuration cannot run (a `prune.rewind_iter` past
the end of training: a ConfigError, reported with `invalid`); any other error (a lost node, a full disk)
fails the trial, and Ray restarts it from its last level checkpoint (`FailureConfig`).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from trainables.config import KEYS, ConfigError, Ticket
from trainables.io import checkpoint
from trainables.io.checkpoint import State
from trainables.io.latency import measure_latency
from trainables.io.results import LevelResult, instability_metrics
from trainables.io.stagestore import StageStore
from trainables.lottery import Lottery
from trainables.staged import StagedLottery
from trainables.tasks.classification.datasets import DatasetMissing
from trainables.training.members import Diverged

QUICK_FINISH_S = 30.0  # s a failing trial waits for the tracking server: its own error comes first
# s a trial Tune stopped waits for its queued records. Tune gives a stopped trial's thread 2 s
# (TUNE_FUNCTION_THREAD_TIMEOUT_S) before it gives up reusing the actor; it then errors the NEXT trial on
# that actor without telling the search algorithm, whose concurrency slot is never freed, and the sweep
# hangs. What is still queued is logged by the driver's reconciliation from the level checkpoints.
STOPPED_FINISH_S = 1.0
# A trial config entry (not a ticket key): measure each level's exported latency (the latency_pareto objective)
MEASURE_LATENCY = "measure.latency"
# A trial config entry: the stage store's folder (trainables/staged.py); absent or "" = train every level
STAGE_STORE = "storage.stages"


class Sink(Protocol):
    """Where a trial's records go (MLflow in the service); every call carries what it needs.

    A sink queues what its server cannot take right now and keeps training going; `finish` waits for the
    queue (up to `wait_s`, its own default when None) and raises if it cannot empty it."""

    @property
    def seconds(self) -> float: ...  # wall seconds spent in tracking calls so far

    def start(self, trial_id: str, flat: dict[str, Any]) -> None: ...

    def catch_up(self, results: Sequence[LevelResult], rewind: dict[str, Any] | None) -> None: ...

    def epoch(self, row: dict[str, Any]) -> None: ...

    def level(self, result: LevelResult, rewind: dict[str, Any] | None) -> None: ...

    def finish(self, status: str, reason: str = "", *, wait_s: float | None = None) -> None: ...


class Reporter(Protocol):
    """Where a trial's results go besides its sink, and where its last level checkpoint comes from."""

    def trial_id(self) -> str: ...

    def restore(self) -> State | None: ...  # the last level checkpoint, when the trial is restarted

    def report(self, metrics: dict[str, Any], folder: str | None = None) -> None: ...  # folder: a checkpoint


class CheckpointWriteError(OSError):
    """A level checkpoint could not be written (disk full, storage gone): the trial fails and Ray restarts
    it from its last complete checkpoint."""


def level_metrics(result: LevelResult, state: State) -> dict[str, Any]:
    """The metrics reported to Ray at a level boundary; with replicates, each score's statistics and the
    paired margins over each control (`margin_<control>_val_score_mean` ...), named as in MLflow."""
    return {"level": result.level, "density": result.density, "sparsity": 1 - result.density,
            "val_acc": result.val_acc, "val_loss": result.val_loss, "val_score": result.val_score,
            "test_acc": result.test_acc, "test_score": result.test_score, "collapsed": int(result.collapsed),
            "epochs_total": state.epochs_total, "epochs_trained": state.epochs_trained,
            "reused_stage": int(result.reused_stage), "level_done": True, "final": state.done, "diverged": 0,
            **result.stats,  # <score>_mean/_std/_n/_ci95 over replicates (trainables/stats.py)
            **{f"margin_{c}_{k}": v for c, m in result.margins.items() for k, v in m.items()},
            **instability_metrics(result),
            **({"latency_ms": result.latency_ms} if math.isfinite(result.latency_ms) else {})}


def failed_metrics(flag: str, reason: str, state: State | None) -> dict[str, Any]:
    """The last result of a trial that ends failed without a retry, `flag` ("diverged": its loss went NaN/inf;
    "invalid": its configuration cannot run) set to 1, so the searcher tells Optuna FAIL with `reason`."""
    density = state.results[-1].density if state is not None and state.results else 1.0
    return {"level": state.level if state is not None else 0, "density": density, "sparsity": 1 - density,
            "val_score": math.nan, "epochs_total": state.epochs_total if state is not None else 0.0,
            "epochs_trained": state.epochs_trained if state is not None else 0.0,
            "collapsed": 0, "level_done": False, "final": False, "diverged": 0, flag: 1, "status_reason": reason}


def trial_ticket(config: Mapping[str, Any]) -> Ticket:
    """The ticket a trial searches: its config's flat ticket keys (Ray's param_space constants overridden by
    the searcher's suggestions; other entries are ignored)."""
    return Ticket.from_flat({k: v for k, v in config.items() if k in KEYS})


def run_trial(config: Mapping[str, Any], reporter: Reporter, sink: Sink | None = None, scratch: str = "") -> None:
    """Run one ticket search. `config` holds flat ticket keys (others are ignored); `scratch` is where
    checkpoints are staged before the reporter takes them ("" = the system temp folder)."""
    ticket = trial_ticket(config)
    state = reporter.restore()
    if sink is not None:
        sink.start(reporter.trial_id(), ticket.flat())
        if state is not None:  # records still queued when the last process died are logged now
            sink.catch_up(state.results, state.rewind[0] if state.rewind else None)
    lottery: Lottery | None = None
    last_row: dict[str, Any] = {}

    def on_epoch(row: dict[str, Any]) -> None:
        if sink is not None:
            sink.epoch(row)
        assert lottery is not None
        last_row.clear()
        last_row.update(row)
        if row["iteration"] < lottery.total:  # the level's last evaluation is reported with its checkpoint
            reporter.report({**row, "sparsity": 1 - row["density"], "collapsed": 0, "level_done": False,
                             "final": False, "diverged": 0})

    try:
        root = config.get(STAGE_STORE)
        store = StageStore(root, owner=reporter.trial_id()) if root else None
        lottery = (StagedLottery(ticket, store=store, state=state, on_epoch=on_epoch) if store is not None
                   else Lottery(ticket, state=state, on_epoch=on_epoch))
        for result in lottery.run():
            if config.get(MEASURE_LATENCY):  # before anything records the level: the sink and checkpoint carry it
                result.latency_ms = measure_latency(ticket, lottery.task.input_shape, lottery.task.num_outputs,
                                                    result.weights, result.mask)
            rewind = lottery.state.rewind[0] if result.level == 0 or ticket.prune.method == "init" else None
            if sink is not None:
                sink.level(result, rewind)
            metrics = {**level_metrics(result, lottery.state), "tracking_s": sink.seconds if sink else 0.0}
            if "iterations_total" in last_row:  # the step of the level's last evaluation, as the sink logged it
                metrics["iterations_total"] = last_row["iterations_total"]
            _report_with_checkpoint(reporter, metrics, lottery.state, scratch, ticket.flat())
    except Diverged as e:  # deterministic: a retry would diverge again, so the trial ends here, failed
        assert lottery is not None
        reporter.report(failed_metrics("diverged", f"diverged: {e}", lottery.state))
        if sink is not None:
            sink.finish("FAILED", f"diverged: {e}")
        return
    except ConfigError as e:
        if isinstance(e, DatasetMissing):  # a node without the data: another node may have it
            if sink is not None:
                _quietly(sink, "FAILED", f"{type(e).__name__}: {e}")
            raise
        metrics = failed_metrics("invalid", f"invalid configuration: {e}",
                                 lottery.state if lottery is not None else state)
        reporter.report(metrics)  # deterministic, like divergence: the trial ends failed, without a retry
        if sink is not None:
            sink.finish("FAILED", metrics["status_reason"])
        return
    except Exception as e:
        if sink is not None:
            _quietly(sink, "FAILED", f"{type(e).__name__}: {e}")
        raise
    except BaseException:  # Tune stops a trial (scheduler, stopper, max_t) by raising SystemExit in its thread
        if sink is not None:  # stopped at its last level (max_t) it ran every level: FINISHED, not KILLED
            done = lottery is not None and lottery.state.done
            _quietly(sink, "FINISHED" if done else "KILLED", wait_s=STOPPED_FINISH_S)  # the driver records why
        raise
    if sink is not None:
        sink.finish("FINISHED")


def _report_with_checkpoint(reporter: Reporter, metrics: dict[str, Any], state: State, scratch: str,
                            config: dict[str, Any]) -> None:
    """Write the level checkpoint under `scratch` (atomically, see checkpoint.save) and hand it over."""
    try:
        with tempfile.TemporaryDirectory(prefix="ticket-ckpt-", dir=scratch or None) as folder:
            checkpoint.save(state, folder, config)
            reporter.report(metrics, folder)
    except OSError as e:
        raise CheckpointWriteError(f"level {metrics['level']} checkpoint not written under "
                                   f"{scratch or tempfile.gettempdir()}: {e}") from e


def _quietly(sink: Sink, status: str, reason: str = "", wait_s: float = QUICK_FINISH_S) -> None:
    """Record a failing or stopped trial's status without masking why it ends (and without waiting long)."""
    with contextlib.suppress(Exception):  # the trial's own error or stop is what Ray must see
        sink.finish(status, reason, wait_s=wait_s)
