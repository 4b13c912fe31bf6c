"""Capacity (a): how many results per second one sweep driver processes, on a multi-node Ray cluster simulated
on this machine (`ray.cluster_utils.Cluster`: a head with no CPU for trials, as in cluster.yaml, and worker
nodes with logical CPUs).

Trials are lightweight function trainables that do no training: each reports a result shaped like one of our
evaluations (`val_score`, `epochs_total`, `density` ...) as fast as the driver takes it (a function trainable's
`tune.report` waits until the driver has fetched the result, so this measures the driver's round trip), a level
checkpoint (a small folder) every LEVEL_EVERY results. The window is the steady state only: every trial
reports once, then waits for a "go" file the driver writes once all N trials are running; `WINDOW_S` seconds
later a "stop" file ends them. In the window we count the results the driver processed and the CPU seconds of
the driver process (all its threads): CPU per result is what sets the driver's ceiling on a cluster, where
trials do not share the driver's cores (here they do: 2 cores for driver, raylets and N trial processes).

Paths compared, same trials, same cluster:
- "bare Tune": FIFO, Ray's default searcher, no callbacks (Tune's own CSV/JSON result loggers stay on);
- "ours": the sweep's own Tuner (search/tune/tuner.py `build_tuner`): Optuna searcher (TPE) behind Ray's
  ConcurrencyLimiter, ASHA, the collapse stopper, the MLflow status callback and the progress callback,
  the Optuna study in a journal file (the default) or in PostgreSQL (the cluster's storage).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LEVEL_EVERY = 10  # results per level checkpoint (a level of 10 evaluations)
WINDOW_S = 15.0  # seconds of steady state measured per cell
GO, STOP = "go", "stop"  # flag files in the cell's folder


@dataclass(frozen=True)
class DriverCell:
    path: str  # "bare Tune", "ours (journal)", ...
    trials: int  # concurrent trials
    results: int  # results processed in the window
    window_s: float  # wall seconds of the window
    driver_cpu_s: float  # CPU seconds of the driver process in the window

    @property
    def per_s(self) -> float:
        return self.results / self.window_s if self.window_s else 0.0

    @property
    def cpu_ms(self) -> float:
        """Driver CPU milliseconds per result."""
        return 1e3 * self.driver_cpu_s / self.results if self.results else float("nan")

    @property
    def ceiling(self) -> float:
        """Results per second one driver core could process at this CPU cost per result."""
        return 1e3 / self.cpu_ms if self.results else 0.0


def light_trial(config: dict[str, Any], flags: str = "", interval_s: float = 0.0) -> None:
    """A trial that only reports (every `interval_s`, or as fast as the driver takes its results) between the
    go and stop files in the folder `flags`."""
    from ray import tune

    folder_of_flags = Path(flags)
    i = 0

    def report(final: bool = False) -> None:
        nonlocal i
        i += 1
        row = {"val_acc": 0.5, "val_loss": 1.0, "val_score": 0.5, "density": 1.0, "sparsity": 0.0,
               "epochs_total": i * 1e-4, "level": i // LEVEL_EVERY, "iteration": i, "iterations_total": i,
               "collapsed": 0, "level_done": i % LEVEL_EVERY == 0, "final": final, "diverged": 0}
        if i % LEVEL_EVERY:
            tune.report(row)
            return
        with tempfile.TemporaryDirectory(prefix="cap-ckpt-") as folder:
            Path(folder, "state.json").write_text(f'{{"level": {i // LEVEL_EVERY}}}')
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(folder))

    report()
    while not (folder_of_flags / GO).exists():
        time.sleep(0.01)
    while not (folder_of_flags / STOP).exists():
        if interval_s:
            time.sleep(interval_s)
        report()
    report(final=True)


def _window_callback(expected: int, flags: Path, window_s: float) -> Any:
    from ray import tune

    class Window(tune.Callback):
        """Opens the window once every trial has reported, closes it `window_s` later."""

        def __init__(self) -> None:
            self.seen: set[str] = set()
            self.count = 0
            self.opened: tuple[float, float, int] | None = None  # (wall, cpu, count)
            self.closed: tuple[float, float, int] | None = None

        def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                            **info: Any) -> None:
            self.count += 1
            self.seen.add(trial.trial_id)
            now = time.perf_counter()
            if self.opened is None and len(self.seen) >= expected:
                self.opened = (now, time.process_time(), self.count)
                (flags / GO).touch()
            elif self.opened and self.closed is None and now - self.opened[0] >= window_s:
                self.closed = (now, time.process_time(), self.count)
                (flags / STOP).touch()

    return Window()


@contextlib.contextmanager
def as_before() -> Iterator[None]:
    """Our path as it was before the capacity fixes: every evaluation reported to Optuna's storage, and Tune's
    automatic result loggers on (TensorBoard's included)."""
    from search.tune.searcher import TicketOptunaSearch
    from search.tune.tuner import AUTO_LOGGERS_ENV

    saved = os.environ.get(AUTO_LOGGERS_ENV)
    os.environ[AUTO_LOGGERS_ENV] = "0"
    TicketOptunaSearch.every_result = True
    try:
        yield
    finally:
        TicketOptunaSearch.every_result = False
        if saved is None:
            os.environ.pop(AUTO_LOGGERS_ENV, None)
        else:
            os.environ[AUTO_LOGGERS_ENV] = saved


def measure(path: str, trials: int, root: Path, *, optuna_storage: str = "", window_s: float = WINDOW_S,
            interval_s: float = 0.0, before: bool = False) -> DriverCell:
    """One cell: `trials` concurrent light trials through `path` ("bare" or "ours"; `before`: ours as it was
    before the capacity fixes) on the connected Ray. Not with TUNE_RESULT_BUFFER_LENGTH set: a buffering
    driver waits for several results of a trial that waits for the go file (docs/CLUSTER.md "Capacity")."""
    from ray import tune

    flags = root / f"{path}-{trials}-{time.monotonic_ns()}"
    flags.mkdir(parents=True)
    window = _window_callback(trials, flags, window_s)
    cpu = min(1.0, _cluster_cpus() / trials)
    fn = tune.with_resources(tune.with_parameters(light_trial, flags=str(flags), interval_s=interval_s),
                             {"cpu": cpu})
    if path == "bare":
        tuner = tune.Tuner(
            fn,
            tune_config=tune.TuneConfig(num_samples=trials, reuse_actors=True),
            run_config=tune.RunConfig(name=flags.name, storage_path=str(root / "ray"), callbacks=[window],
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=None), verbose=0))
    else:
        tuner = _our_tuner(trials, root, flags.name, cpu, optuna_storage, [window], fn)
    with as_before() if before else contextlib.nullcontext():
        tuner.fit()
    if window.opened is None or window.closed is None:
        raise RuntimeError(f"capacity: the {path} window with {trials} trials never opened or closed")
    (w0, c0, n0), (w1, c1, n1) = window.opened, window.closed
    label = "bare Tune" if path == "bare" else \
        f"ours{' before' if before else ''}, {'PostgreSQL' if optuna_storage else 'journal'} study"
    return DriverCell(label, trials, n1 - n0, w1 - w0, c1 - c0)


def _our_tuner(trials: int, root: Path, name: str, cpu: float, optuna_storage: str, extra: list[Any],
               fn: Any) -> Any:
    """The sweep's own Tuner (searcher, scheduler, stopper, callbacks) over the light trainable."""
    from search.sweep.file import load_sweep
    from search.tracking.callbacks import ProgressCallback, TrackingCallback
    from search.tracking.store import prepare
    from search.tune.runner import sweep_params
    from search.tune.tuner import build_tuner

    sets = [f"name=cap-{name}", f"budget.num_samples={trials}",
            f"budget.max_concurrent={trials}", f"resources.cpu={cpu:g}", f"storage.root={root / 'runs'}",
            "train.epochs=1000"]  # ASHA's max_t far above the window's epochs_total: no trial ends early
    if optuna_storage:
        sets.append(f"storage.optuna_storage={optuna_storage}")
    sweep = load_sweep(Path(__file__).parents[1] / "sweeps" / "digits.toml", sets)
    tracking = prepare(sweep.tracking_uri, sweep.name, sweep.artifact_root, sweep_params(sweep))
    callbacks = [TrackingCallback(tracking), ProgressCallback(lambda line: None), *extra]
    return build_tuner(sweep, tracking, callbacks, fn=fn)


def _cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


def start_cluster(nodes: int, cpus: int) -> Any:
    """A head without trial CPUs and `nodes` worker nodes of `cpus` logical CPUs, each its own raylet."""
    for key, value in (("RAY_AUTH_MODE", "disabled"), ("RAY_USAGE_STATS_ENABLED", "0"),
                       ("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")):
        os.environ.setdefault(key, value)
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(nodes):
        cluster.add_node(num_cpus=cpus)
    ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.WARNING)
    cluster.wait_for_nodes()
    return cluster
