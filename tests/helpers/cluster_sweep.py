"""A sweep on a two-node Ray cluster on this machine, whose worker node is killed mid-sweep.

    python tests/helpers/cluster_sweep.py SWEEP.json OUT.json

tests/search/test_faults.py runs it in its own process, since it needs its own Ray (the test session's Ray is
already up). The head offers 1 CPU and the worker node 2, so with trials of 1 CPU two of three run on the
worker. Once a trial there has finished a level (and so has a level checkpoint), the worker node is
removed: its raylet and trial processes are killed. A fresh worker node joins so the lost trials have
somewhere to restart. OUT.json records what happened, for the test to check against MLflow and Optuna.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.cluster_utils import Cluster

sys.path.insert(0, str(Path(__file__).resolve().parent))
import procs  # noqa: E402 - tests/ helper, beside this script

from search.sweep.file import sweep_from_dict
from search.tune.runner import run_sweep

# Notice a dead node within ~1.5 s instead of Ray's default ~15 s (3 missed checks of 0.5 s each).
FAST_HEALTH = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
               "health_check_initial_delay_ms": 0}
OBJECT_STORE = 80 * 2**20  # bytes per node; Ray's default (30% of RAM) times three nodes would not fit /dev/shm
WAIT_S = 240


class Recorder(tune.Callback):
    """Every result as (time, trial, pid, level, level_done), and each trial's failures (recoveries)."""

    def __init__(self) -> None:
        self.results: list[tuple[float, str, int, int, bool]] = []
        self.recovered: list[tuple[float, str]] = []
        self.checkpointed: set[str] = set()  # trials whose level checkpoint Ray has registered

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        self.results.append((time.time(), trial.trial_id, int(result.get("pid", 0)), int(result["level"]),
                             bool(result.get("level_done"))))

    def on_checkpoint(self, iteration: int, trials: list[Any], trial: Any, checkpoint: Any, **info: Any) -> None:
        # Ray calls on_trial_result before it registers the result's checkpoint: a trial is only safe to
        # kill (and expected to resume past level 0) once this has been called.
        self.checkpointed.add(trial.trial_id)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.recovered.append((time.time(), trial.trial_id))


def raylet_pid(node: Any) -> int:
    return node.all_processes["raylet"][0].process.pid


def on_node(pid: int, raylet: int) -> bool:
    """A trial process belongs to the node whose raylet started it."""
    return procs.ppid(pid) == raylet


def wait_for_victim(rec: Recorder, raylet: int, done: threading.Event) -> str:
    """A trial on the worker node that has a level checkpoint and is still running: the one to kill."""
    deadline = time.time() + WAIT_S
    while time.time() < deadline and not done.is_set():
        finished_levels = {(t, pid) for _, t, pid, _, level_done in list(rec.results) if level_done}
        for trial, pid in finished_levels:
            if trial in rec.checkpointed and on_node(pid, raylet):
                return trial
        time.sleep(0.2)
    raise SystemExit("no trial on the worker node finished a level in time")


def main(sweep_json: str, out_json: str) -> None:
    sweep = sweep_from_dict(json.loads(Path(sweep_json).read_text()))
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": OBJECT_STORE, "_system_config": FAST_HEALTH})
    worker = cluster.add_node(num_cpus=2, object_store_memory=OBJECT_STORE)
    ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.WARNING)
    rec, done, outcome = Recorder(), threading.Event(), {}

    def sweep_thread() -> None:
        result = run_sweep(sweep, callbacks=[rec])
        outcome.update(trials=result.trials, errored=result.errored)
        done.set()

    thread = threading.Thread(target=sweep_thread, daemon=True)
    thread.start()
    try:
        victim = wait_for_victim(rec, raylet_pid(worker), done)
        killed_at = time.time()
        cluster.remove_node(worker)  # SIGKILL to the raylet and every trial process on it
        cluster.add_node(num_cpus=2, object_store_memory=OBJECT_STORE)
        thread.join(timeout=WAIT_S)
        Path(out_json).write_text(json.dumps({
            **outcome, "victim": victim, "killed_at": killed_at, "finished": done.is_set(),
            "results": rec.results, "recovered": rec.recovered}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
