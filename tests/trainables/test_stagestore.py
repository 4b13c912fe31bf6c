"""The stage store across processes: concurrent needs of one entry produce it once, a dead holder's lease is
taken over, and an entry is either absent or complete."""

from __future__ import annotations

import multiprocessing
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from trainables import paths
from trainables.io.stagestore import DELAY_ENV, StageStore

KEY = "ab" + "0" * 62


def _need(root: str, marker_dir: str, tag: str, lease_s: float = 120.0) -> bool:
    """One process needing KEY: its producer leaves a marker file; returns whether it loaded the entry."""
    def produce() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        Path(marker_dir, tag).touch()
        return {"by": tag}, {"w": torch.arange(4.0)}

    (doc, tensors), reused = StageStore(root, lease_s=lease_s, poll_s=0.05).obtain(KEY, produce)
    assert torch.equal(tensors["w"], torch.arange(4.0)) and doc["by"] in ("a", "b")
    return reused


def _trial(root: str, rate: float) -> tuple[bool, float]:
    from trainables.config import Ticket
    from trainables.staged import StagedLottery

    torch.set_num_threads(1)
    t = Ticket.from_flat({"model.name": "mlp", "model.widths": "16", "train.epochs": 1, "train.device": "cpu",
                          "prune.levels": 1, "prune.rate": rate})
    lot = StagedLottery(t, store=StageStore(root, poll_s=0.05))
    list(lot.run())
    return lot.state.reused_stage, lot.state.epochs_trained


@pytest.fixture
def spawn(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201 - a pool factory
    monkeypatch.setenv(DELAY_ENV, "1.0")  # the producer sits in its lease: the other process must meet it
    return multiprocessing.get_context("spawn").Pool


def test_two_processes_needing_one_entry_produce_it_once(tmp_path: Path, spawn: Any) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    with spawn(2) as pool:
        reused = pool.starmap(_need, [(str(tmp_path / "store"), str(markers), t) for t in ("a", "b")])
    assert len(list(markers.iterdir())) == 1  # one production
    assert sorted(reused) == [False, True]
    assert not list((tmp_path / "store").glob(f"*/*{paths.STAGE_LEASE_SUFFIX}"))  # the lease is gone
    assert not list((tmp_path / "store").glob(f"*/{paths.STAGE_TMP_PREFIX}*"))


@pytest.mark.slow
def test_two_trials_needing_one_dense_level_train_it_once(tmp_path: Path, spawn: Any) -> None:
    with spawn(2) as pool:
        out = pool.starmap(_trial, [(str(tmp_path), 0.2), (str(tmp_path), 0.5)])
    assert sorted(r for r, _ in out) == [False, True]
    trained = {r: e for r, e in out}
    assert trained[False] == pytest.approx(trained[True] + 1)  # the loader skipped the dense epoch


def test_a_stale_lease_is_taken_over(tmp_path: Path) -> None:
    store = StageStore(tmp_path, lease_s=0.5, poll_s=0.05)
    lease = tmp_path / KEY[:2] / f"{KEY}{paths.STAGE_LEASE_SUFFIX}"
    lease.parent.mkdir(parents=True)
    lease.write_text("a crashed holder")  # nobody beats its heartbeat
    start = time.monotonic()
    (_, tensors), reused = store.obtain(KEY, lambda: ({}, {"w": torch.ones(2)}))
    assert not reused and torch.equal(tensors["w"], torch.ones(2))
    assert time.monotonic() - start >= 0.5
    assert not lease.exists()


def _lease_of(tmp_path: Path, token: str) -> Path:
    lease = tmp_path / KEY[:2] / f"{KEY}{paths.STAGE_LEASE_SUFFIX}"
    lease.parent.mkdir(parents=True)
    lease.write_text(token)
    return lease


@pytest.mark.parametrize("holder", ["an earlier attempt of this trial", "a process of this host that is gone"])
def test_a_provably_dead_holder_is_not_waited_out(tmp_path: Path, holder: str) -> None:
    """A trial restarted after its node died finds its own earlier lease (or, on one host, a gone pid): it
    takes it over at once instead of waiting lease_s (120 s by default) for a heartbeat that never comes."""
    if holder.startswith("an earlier"):
        token = f"another-node 4242 trial_7 {'0' * 32}"
    else:
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
        token = f"{socket.gethostname()} {gone} trial_9 {'0' * 32}"
    lease = _lease_of(tmp_path, token)
    start = time.monotonic()
    (_, tensors), reused = StageStore(tmp_path, lease_s=60, poll_s=0.05, owner="trial_7").obtain(
        KEY, lambda: ({}, {"w": torch.ones(2)}))
    assert not reused and torch.equal(tensors["w"], torch.ones(2))
    assert time.monotonic() - start < 10  # not the 60 s of a silent lease
    assert not lease.exists()


def test_another_owners_lease_on_another_host_is_waited_out(tmp_path: Path) -> None:
    _lease_of(tmp_path, f"another-node 4242 trial_8 {'0' * 32}")
    start = time.monotonic()
    StageStore(tmp_path, lease_s=0.5, poll_s=0.05, owner="trial_7").obtain(KEY, lambda: ({}, {"w": torch.ones(2)}))
    assert time.monotonic() - start >= 0.5  # nothing proves that holder dead: its silence has to


def test_a_live_lease_is_waited_for(tmp_path: Path, spawn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A holder whose heartbeat goes on for longer than lease_s is not declared dead: one production."""
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv(DELAY_ENV, "1.5")  # the producer holds its lease 1.5 s, nearly 4 leases of 0.4 s
    with spawn(2) as pool:
        reused = pool.starmap(_need, [(str(tmp_path / "store"), str(markers), t, 0.4) for t in ("a", "b")])
    assert len(list(markers.iterdir())) == 1 and sorted(reused) == [False, True]


def test_a_damaged_entry_is_produced_again(tmp_path: Path) -> None:
    store = StageStore(tmp_path)
    store.save(KEY, {"v": 1}, {"w": torch.ones(1)})
    (tmp_path / KEY[:2] / KEY / paths.STAGE_TENSORS).write_bytes(b"garbage")
    assert store.load(KEY) is None
    (doc, _), reused = store.obtain(KEY, lambda: ({"v": 2}, {"w": torch.ones(1)}))
    assert not reused and doc == {"v": 2} and store.load(KEY) is not None


def test_a_key_is_never_a_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a digest"):
        StageStore(tmp_path).folder("../../etc")
