"""A sweep whose trials no node can hold fails at once (exit 2, one line, no trial), per node and not per
cluster total; `--smoke` fits trials to the cluster; a cluster that may grow only gets a warning."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from search import cli
from search.sweep.file import load_sweep, sweep_from_dict
from search.sweep.storage import dump_toml
from search.tune import capacity
from tests.search.test_sweep import sweep_doc
from trainables.config import ConfigError

pytestmark = pytest.mark.usefixtures("ray_local")  # one node: 2 CPUs and 1 logical GPU
CIFAR = Path(__file__).parents[2] / "sweeps" / "cifar10_resnet20.toml"


def test_a_sweep_no_node_can_hold_exits_2_before_any_trial(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "big.toml"
    path.write_text(dump_toml(sweep_doc(tmp_path, "big", resources={"cpu": 4, "gpu": 0})))
    start = time.perf_counter()
    assert cli.main(["sweep", str(path)]) == 2
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err.strip()  # MLflow may log its store's creation first
    assert err.splitlines()[-1] == ("error: resources: each trial asks for 4 CPU and 0 GPU, but the largest node of "
                                    "this Ray cluster has 2 CPU and 1 GPU; lower resources.cpu/resources.gpu (or add "
                                    "nodes)")
    assert err.count("error:") == 1 and "Traceback" not in err
    assert elapsed < 60
    sweep = sweep_from_dict(sweep_doc(tmp_path, "big"))
    assert not (Path(sweep.ray_storage) / "big").exists()  # Tune never started: no trial folder
    assert MlflowClient(sweep.tracking_uri).get_experiment_by_name("big") is None  # no parent, no trial run


def test_trials_must_fit_one_node_not_the_cluster_total() -> None:
    sweep = sweep_from_dict(sweep_doc(Path("/tmp"), "n", resources={"cpu": 4, "gpu": 0.25}))
    assert capacity.shortfall(sweep, [(2.0, 1.0), (2.0, 1.0)]) == (  # 4 CPUs and 2 GPUs in all, but no node
        "each trial asks for 4 CPU and 0.25 GPU, but the largest node of this Ray cluster has 2 CPU and 1 GPU")
    assert capacity.shortfall(sweep, [(8.0, 0.0), (2.0, 1.0)]) is not None  # CPUs here, the GPU there
    assert capacity.shortfall(sweep, [(2.0, 1.0), (4.0, 1.0)]) is None


def test_smoke_fits_the_cifar10_sweep_to_this_cluster(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # the file's laptop check: 4 CPUs a trial, on a Ray whose one node has 2
    sweep = load_sweep(CIFAR, ["resources.gpu=0", "storage.ray_address="], smoke=True, cwd=tmp_path)
    assert (sweep.cpu, sweep.gpu) == (4, 0)
    with caplog.at_level(logging.WARNING, logger="search.capacity"):
        fitted = capacity.fit(sweep)
    assert (fitted.cpu, fitted.gpu) == (2, 0)
    assert caplog.messages == ["--smoke: resources.cpu 4 -> 2 to fit this Ray cluster (its largest node has 2 CPU)"]
    # as shipped (0.25 GPU): this Ray has a GPU, so only the CPUs change; on a machine without one it goes
    shipped = load_sweep(CIFAR, ["storage.ray_address="], smoke=True, cwd=tmp_path)
    assert (capacity.fit(shipped).cpu, capacity.fit(shipped).gpu) == (2, 0.25)
    no_gpu = capacity.fit_smoke(shipped, [(2.0, 0.0)])
    assert (no_gpu.cpu, no_gpu.gpu) == (2, 0)
    assert capacity.fit_smoke(load_sweep(CIFAR, ["resources.gpu=2"], smoke=True), [(16.0, 1.0)]).gpu == 1
    with pytest.raises(ConfigError, match=r"^resources: each trial asks for 4 CPU"):  # only --smoke fits
        capacity.fit(load_sweep(CIFAR, ["resources.gpu=0", "storage.ray_address="], cwd=tmp_path))


def test_this_local_ray_says_it_cannot_grow() -> None:
    deadline = time.time() + 30  # Ray's monitor reports every few seconds after the cluster starts
    while capacity.autoscaler_grows() is None and time.time() < deadline:
        time.sleep(0.5)
    assert capacity.autoscaler_grows() is False  # the read-only provider: nodes mirrored, none added
    assert capacity.may_grow("") is False and capacity.may_grow("auto") is False


def test_the_monitor_status_tells_a_read_only_provider_from_an_autoscaler() -> None:
    mirrored = {"autoscaler_report": {"node_type_mapping": {"ab12": "node_ab12", "cd34": "node_cd34"}}}
    launched = {"autoscaler_report": {"node_type_mapping": {"ab12": "head", "cd34": "gpu_worker"}}}
    assert capacity.grows_from_status(mirrored) is False
    assert capacity.grows_from_status(launched) is True
    assert capacity.grows_from_status({"time": 1.0}) is None  # the monitor has not reported yet


def test_a_cluster_that_may_grow_gets_a_warning_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    sweep = sweep_from_dict(sweep_doc(tmp_path, "grows", resources={"cpu": 4}, storage={"ray_address": "auto"}))
    for says in (True, None):  # an autoscaler, or a cluster that does not say
        monkeypatch.setattr(capacity, "autoscaler_grows", lambda says=says: says)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="search.capacity"):
            assert capacity.fit(sweep) == sweep
        assert caplog.messages == ["resources: each trial asks for 4 CPU and 0 GPU, but the largest node of this Ray "
                                   "cluster has 2 CPU and 1 GPU; trials wait until the autoscaler adds a node that "
                                   "has them"]
    monkeypatch.setattr(capacity, "autoscaler_grows", lambda: None)
    local = sweep_from_dict(sweep_doc(tmp_path, "local", resources={"cpu": 4}))
    with pytest.raises(ConfigError, match=r"^resources: each trial asks for 4 CPU"):
        capacity.fit(local)  # a local Ray has no autoscaler, whatever Ray says
