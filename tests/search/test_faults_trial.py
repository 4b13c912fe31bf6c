"""Faults inside one trial, injected for real: a loss that diverges, a disk that fills up, a crash mid-write.

- Divergence: SGD at lr 100 with weight decay 1 multiplies the weights by -99 every step (|1 - lr * wd| > 1),
  so the loss is NaN within one epoch. The trial must end FAILED with the reason in MLflow and Optuna, not
  be retried (it would diverge again), and the sweep must go on.
- A full disk: trials stage checkpoints and mask files in `TICKET_SEARCH_SCRATCH`, here a 4 MiB tmpfs that
  the test fills after level 0 (where mounting is not allowed, the scratch folder is replaced by a file:
  ENOTDIR). The trial fails clearly, Ray restarts it from its level-0 checkpoint once the disk is freed.
- A crash mid-write: the kernel kills a writer at a file-size limit (RLIMIT_FSIZE, SIGXFSZ) halfway
  through a mask or checkpoint; the final name keeps the previous complete file.
"""

from __future__ import annotations

import contextlib
import errno
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from ray import tune

from search.sweep.file import sweep_from_dict
from search.tracking import schema as S
from search.tune.runner import run_sweep
from search.tune.searcher import FAIL_REASON
from search.tune.tuner import SCRATCH_ENV
from tests.helpers.sweepcheck import (
    assert_nothing_running,
    assert_tickets_exactly_once,
    runs_of,
    study_trials,
    trial_run,
)
from tests.search.test_sweep import sweep_doc
from trainables.io import checkpoint, maskio, stages
from trainables.io.stagestore import StageStore
from trainables.lottery import State

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.mark.slow
def test_diverging_trial_fails_with_its_reason_and_the_sweep_goes_on(tmp_path: Path) -> None:
    doc = sweep_doc(tmp_path, "diverge", budget={"num_samples": 4, "max_concurrent": 2},
                    scheduler={"name": "none"}, search={"sampler": "random", "seed": 3},
                    base={"train.weight_decay": 1.0}, space={"train.lr": [0.01, 100.0]})
    sweep = sweep_from_dict(doc)
    restarts = Restarts()
    outcome = run_sweep(sweep, callbacks=[restarts])
    assert outcome.errored == 0  # a diverged trial ends FAILED on its own terms, not as a Ray error
    assert restarts.count == 0  # and is not retried: it would diverge again
    lrs = {r.metrics["trial_id"]: r.config["train.lr"] for r in outcome.results}
    diverged = {t for t, lr in lrs.items() if lr == 100.0}
    assert diverged and len(diverged) < 4, lrs  # this seed draws both kinds: some diverge, some do not

    runs = {r.data.tags[S.TAG_TRIAL]: r for r in runs_of(sweep.tracking_uri, "diverge", S.TRIAL)}
    for trial, run in runs.items():
        if trial in diverged:
            assert run.info.status == "FAILED"
            assert "diverged" in run.data.tags[S.TAG_STATUS_REASON]
            assert "validation loss is" in run.data.tags[S.TAG_STATUS_REASON]  # nan or inf, and when
        else:
            assert run.info.status == "FINISHED"  # the sweep went on
    assert_nothing_running(sweep.tracking_uri, "diverge")
    for r in outcome.results:
        if r.metrics["trial_id"] in diverged:
            assert r.metrics["diverged"] == 1 and not r.metrics["final"]
    trials = study_trials(sweep.optuna_storage, "diverge")
    assert sum(t.state.name == "FAIL" for t in trials) == len(diverged)
    assert all("diverged" in t.user_attrs[FAIL_REASON] for t in trials if t.state.name == "FAIL")
    assert sum(t.state.name == "COMPLETE" for t in trials) == 4 - len(diverged)


@pytest.mark.slow
def test_a_sampled_configuration_that_cannot_run_fails_once_with_its_reason(tmp_path: Path) -> None:
    # A rewind point past the end of training (2 epochs of digits are ~50 iterations) is only known to be
    # wrong once the trial has its data: like divergence, it fails the trial once, without a retry.
    doc = sweep_doc(tmp_path, "invalid", budget={"num_samples": 2, "max_concurrent": 2},
                    scheduler={"name": "none"}, space={"prune.rewind_iter": [5000, 6000]})
    sweep = sweep_from_dict(doc)
    restarts = Restarts()
    outcome = run_sweep(sweep, callbacks=[restarts])
    assert outcome.errored == 0 and restarts.count == 0
    assert all(r.metrics["invalid"] == 1 for r in outcome.results)
    for run in runs_of(sweep.tracking_uri, "invalid", S.TRIAL):
        assert run.info.status == "FAILED"
        assert "invalid configuration: prune.rewind_iter" in run.data.tags[S.TAG_STATUS_REASON]
    trials = study_trials(sweep.optuna_storage, "invalid")
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    assert all("prune.rewind_iter" in t.user_attrs[FAIL_REASON] for t in trials)


class Restarts(tune.Callback):
    def __init__(self) -> None:
        self.count = 0

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.count += 1


class Disk:
    """A small scratch file system the test can fill, or (without mount rights) a folder it can break."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir()
        self.tmpfs = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)],
                                    capture_output=True).returncode == 0
        self.errno = errno.ENOSPC if self.tmpfs else errno.ENOTDIR
        self.broken = 0

    def fill(self) -> None:
        """No space left (tmpfs), or the folder replaced by a file (anything else)."""
        self.broken += 1
        if not self.tmpfs:
            self.path.rename(self.path.with_name("scratch.away"))
            self.path.write_text("not a folder")
            return
        full = threading.Event()
        self.stop = threading.Event()
        self.filler = threading.Thread(target=self._keep_full, args=(full,), daemon=True)
        self.filler.start()
        full.wait()

    def _keep_full(self, full: threading.Event) -> None:
        """Fill the disk and keep it full: files staged before the fill and deleted after it (level 0's
        checkpoint and mask folders) must not leave room for the next level's checkpoint."""
        with open(self.path / "filler", "wb", buffering=0) as f:
            while not self.stop.is_set():
                try:
                    f.write(b"\0" * 4096)
                except OSError:
                    full.set()
                    self.stop.wait(0.001)

    def free(self) -> None:
        if not self.tmpfs:
            self.path.unlink()
            self.path.with_name("scratch.away").rename(self.path)
            return
        self.stop.set()
        self.filler.join()
        (self.path / "filler").unlink()

    def remove(self) -> None:
        if self.tmpfs:
            subprocess.run(["umount", str(self.path)], check=True)


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Disk]:
    d = Disk(tmp_path / "scratch")
    monkeypatch.setenv(SCRATCH_ENV, str(d.path))  # read by the driver, handed to every trial
    yield d
    d.remove()


class FillAfterLevel0(tune.Callback):
    """Fills the disk when level 0 is in; frees it when Ray restarts the failed trial; records the error.
    Until the disk is full the trial waits at level 1: `gate` holds level 1's lease in the stage store, as a
    trial training it would, and is let go once the disk is full (a trial runs ahead of the driver's
    callbacks: unheld, a fast machine writes every level before the disk fills)."""

    def __init__(self, disk: Disk, gate: contextlib.ExitStack) -> None:
        self.disk = disk
        self.gate = gate
        self.errors: list[str] = []
        self.after_restart: list[int] = []  # levels reported after the restart

    def __getstate__(self) -> dict[str, Any]:  # Ray saves callbacks with the experiment: the disk's filler
        return {k: v for k, v in self.__dict__.items() if k not in ("disk", "gate")}  # and the lease stay here

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        if result.get("level_done") and result["level"] == 0 and not self.disk.broken:
            self.disk.fill()
            self.gate.close()
        elif self.errors:
            self.after_restart.append(int(result["level"]))

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.errors.append(Path(trial.error_file).read_text() if trial.error_file else "")
        self.disk.free()


@pytest.mark.slow
def test_full_disk_fails_the_trial_clearly_and_it_restarts_from_its_level(tmp_path: Path, disk: Disk) -> None:
    doc = sweep_doc(tmp_path, "diskfull", budget={"num_samples": 1, "max_concurrent": 1},
                    scheduler={"name": "none"}, base={"train.epochs": 30})
    sweep = sweep_from_dict(doc, ["prune.rate=0.5", "train.lr=0.05"])  # no space: the trial's ticket is the base
    level1 = stages.level_key(stages.dense_key(sweep.base, torch.device("cpu")), sweep.base, 1)
    with contextlib.ExitStack() as gate:
        assert gate.enter_context(StageStore(sweep.stages, owner="test").lease(level1))
        watch = FillAfterLevel0(disk, gate)
        outcome = run_sweep(sweep, callbacks=[watch])
    assert outcome.errored == 0 and len(watch.errors) == 1, watch.errors  # failed once, then finished
    assert f"[Errno {disk.errno}]" in watch.errors[0], watch.errors[0]  # the OS error, named
    assert str(disk.path) in watch.errors[0]  # and where
    assert watch.after_restart and min(watch.after_restart) >= 1  # went on from level 0's checkpoint

    levels = assert_tickets_exactly_once(sweep.tracking_uri, "diskfull")
    (trial,) = levels
    assert sorted(levels[trial]) == [0, 1, 2]  # density 0.5^2 <= 0.3: levels 0-2, each once
    assert trial_run(sweep.tracking_uri, "diskfull", trial).info.status == "FINISHED"
    ckpts = list((Path(sweep.ray_storage) / "diskfull").glob("trial_*/checkpoint_*"))
    assert ckpts and all(checkpoint.load(c).results for c in ckpts)  # every persisted checkpoint is whole
    assert not [p for p in disk.path.rglob("*") if p.is_file()]  # nothing staged is left behind


def _crash_writing(code: str, limit: int) -> subprocess.CompletedProcess[str]:
    """Run `code` in a child the kernel kills (SIGXFSZ) once it writes past `limit` bytes in one file.
    (Python ignores SIGXFSZ, turning the kill into an EFBIG error; the child restores the default first.)"""
    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    code = f"import signal; signal.signal(signal.SIGXFSZ, signal.SIG_DFL); {code}"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, preexec_fn=limit_file_size,  # noqa: PLW1509
                          capture_output=True, text=True, timeout=60)


def test_crash_mid_write_never_leaves_a_partial_mask_under_its_name(tmp_path: Path) -> None:
    path = tmp_path / "mask.safetensors"
    maskio.save({"w": torch.zeros(8, 8, dtype=torch.bool)}, path)  # the previous, complete version
    code = ("import sys, torch; from trainables.io import maskio; "
            f"maskio.save({{'w': torch.ones(3000, 3000, dtype=torch.bool)}}, {str(path)!r})")  # ~1.1 MB packed
    crashed = _crash_writing(code, limit=256 * 1024)
    assert crashed.returncode == -signal.SIGXFSZ, crashed.stderr[-2000:]  # killed mid-write, for real
    assert maskio.load(path)["w"].shape == (8, 8)  # the final name still holds the complete old mask
    partial = [p for p in tmp_path.iterdir() if p != path]
    assert partial and all(p.name.startswith(".mask.safetensors.") and p.name.endswith(".tmp") for p in partial)
    assert all(p.stat().st_size == 256 * 1024 for p in partial)  # cut at the limit, under a temporary name
    with pytest.raises(maskio.MaskFileError, match="not a valid mask file"):
        maskio.load(partial[0])  # and even read by name, it is never taken for a mask


def test_crash_mid_checkpoint_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    small = State(level=1, masks=[{"w": torch.ones(4, 4, dtype=torch.bool)}], rewind=[{"w": torch.zeros(4, 4)}])
    checkpoint.save(small, tmp_path)
    code = ("import torch; from trainables.io import checkpoint; from trainables.io.checkpoint import State; "
            "checkpoint.save(State(level=2, masks=[{'w': torch.ones(600, 600, dtype=torch.bool)}], "
            f"rewind=[{{'w': torch.zeros(600, 600)}}]), {str(tmp_path)!r})")  # ~1.8 MB of tensors
    crashed = _crash_writing(code, limit=512 * 1024)
    assert crashed.returncode == -signal.SIGXFSZ, crashed.stderr[-2000:]
    back = checkpoint.load(tmp_path)
    assert back.level == 1 and back.masks[0]["w"].shape == (4, 4)
    cut = {p.name for p in tmp_path.iterdir()} - {"state.json", "state-001-000.safetensors"}
    assert cut and all(name.startswith(".") for name in cut), cut  # the cut file, under a temporary name only
