"""Pruning the stage store: entries are removed by their last use (filed or loaded), temporary folders only
once a live writer could not own them, leases never; a pruned entry is trained again, and a reader racing a
prune sees an entry whole or not at all."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from trainables import paths
from trainables.io import stagegc, stagestore
from trainables.io.stagestore import StageStore

NOW = time.time()


def key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def file(store: StageStore, name: str, days_ago: float, n: int = 256) -> Path:
    """File an entry of `n` floats and date its last use `days_ago` days back."""
    store.save(key(name), {"name": name}, {"w": torch.full((n,), float(len(name)))})
    folder = store.folder(key(name))
    when = NOW - days_ago * stagegc.DAY_S
    os.utime(folder / paths.STAGE_JSON, (when, when))
    return folder


def aged(path: Path, seconds: float) -> Path:
    os.utime(path, (NOW - seconds, NOW - seconds))
    return path


@pytest.fixture
def store(tmp_path: Path) -> StageStore:
    return StageStore(tmp_path / "stages")


def test_survey_counts_entries_their_sizes_temporaries_and_leases(store: StageStore) -> None:
    a, b = file(store, "a", 10), file(store, "b", 1, n=1024)
    tmp = store.folder(key("c")).parent / f"{paths.STAGE_TMP_PREFIX}x"
    tmp.mkdir(parents=True)
    (tmp / paths.STAGE_TENSORS).write_bytes(b"\0" * 100)
    store.folder(key("d")).parent.mkdir(parents=True, exist_ok=True)
    (store.folder(key("d")).parent / f"{key('d')}{paths.STAGE_LEASE_SUFFIX}").write_text("host 1 t x")

    s = stagegc.survey(store.root, NOW)
    assert sorted(e.folder for e in s.entries) == sorted([a, b])
    sizes = {e.folder: e.size for e in s.entries}
    assert sizes[b] == sizes[a] + 768 * 4  # 768 more float32s, the rest alike
    assert sizes[a] == sum(f.stat().st_size for f in a.iterdir())
    assert [p for p, _, _ in s.temporary] == [tmp] and s.temporary[0][1] == 100
    assert s.leases == 1
    assert s.size == sizes[a] + sizes[b] + 100
    assert stagegc.survey(store.root / "nowhere").entries == []


def test_prune_removes_what_was_not_used_for_that_long_and_loading_counts_as_use(store: StageStore) -> None:
    old, recent = file(store, "old", 30), file(store, "recent", 2)
    loaded = file(store, "loaded", 30)
    assert store.load(key("loaded")) is not None  # a trial loads it today: it stays
    young_tmp = store.root / "aa" / f"{paths.STAGE_TMP_PREFIX}young"
    young_tmp.mkdir(parents=True)
    stale_tmp = young_tmp.with_name(f"{paths.STAGE_TMP_PREFIX}stale")
    stale_tmp.mkdir()
    aged(stale_tmp, stagegc.TEMP_AGE_S + 1)  # a crashed writer's
    lease = store.root / "aa" / f"{key('x')}{paths.STAGE_LEASE_SUFFIX}"
    lease.write_text("host 1 t x")
    aged(lease, 10 * stagegc.DAY_S)

    dry = stagegc.prune(store.root, 7 * stagegc.DAY_S, dry_run=True)
    assert [e.folder for e in dry.entries] == [old] and dry.temporary == [stale_tmp]
    assert old.exists() and stale_tmp.exists()  # a dry run removes nothing

    done = stagegc.prune(store.root, 7 * stagegc.DAY_S)
    assert [e.folder for e in done.entries] == [old] and done.freed == dry.freed > 0
    assert not old.exists() and not stale_tmp.exists()
    assert recent.exists() and loaded.exists() and young_tmp.exists() and lease.exists()
    assert store.load(key("old")) is None
    assert not [p for p in old.parent.iterdir() if p.name.startswith(paths.STAGE_TMP_PREFIX)]  # aside is gone

    everything = stagegc.prune(store.root, 0)
    assert {e.folder for e in everything.entries} == {recent, loaded}
    assert stagegc.survey(store.root).entries == []


def test_a_pruned_entry_is_trained_again(store: StageStore) -> None:
    produced: list[str] = []

    def produce() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        produced.append("x")
        return {"v": 1}, {"w": torch.ones(3)}

    assert store.obtain(key("e"), produce)[1] is False
    assert store.obtain(key("e"), produce)[1] is True  # stored: loaded
    stagegc.prune(store.root, 0)
    (doc, tensors), reused = store.obtain(key("e"), produce)
    assert reused is False and produced == ["x", "x"] and torch.equal(tensors["w"], torch.ones(3))


def test_a_reader_racing_a_prune_sees_the_entry_whole_or_not_at_all(store: StageStore,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The prune lands between the reader's two files: its document read, its tensors not yet.
    file(store, "r", 30)
    real_load = stagestore.load_file

    def prune_then_load(path: str, *args: Any, **kwargs: Any) -> Any:
        stagegc.prune(store.root, 7 * stagegc.DAY_S)
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(stagestore, "load_file", prune_then_load)
    assert store.load(key("r")) is None  # gone, not a document without its tensors
    assert stagegc.survey(store.root).entries == []
