"""`ticket-search stages`: the store's contents in one line, pruning by last use (dry or not), and user
mistakes as one line with exit 2, removing nothing."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
import torch

from search import cli
from trainables import paths
from trainables.io import stagegc
from trainables.io.stagestore import StageStore


def filed(root: Path, name: str, days_ago: float) -> Path:
    store = StageStore(root)
    key = hashlib.sha256(name.encode()).hexdigest()
    store.save(key, {"name": name}, {"w": torch.zeros(1000)})
    when = time.time() - days_ago * stagegc.DAY_S
    os.utime(store.folder(key) / paths.STAGE_JSON, (when, when))
    return store.folder(key)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], list[str]]:
    code = cli.main(["stages", *args])
    out, err = capsys.readouterr()
    return code, out.strip().splitlines(), err.strip().splitlines()


def test_stages_reports_and_prunes_the_sweeps_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "runs" / paths.STAGES_DIR
    old, new = filed(store, "old", 40), filed(store, "new", 1)

    code, out, _ = run(capsys, "--root", str(tmp_path / "runs"))
    assert code == 0 and out[0].startswith(f"stage store {store}: 2 entries, 8.") and "last used" in out[0]

    code, out, _ = run(capsys, "--store", str(store), "--prune-unused", "30", "--dry-run")
    assert code == 0 and old.exists()
    assert any(old.name in line for line in out) and not any(new.name in line for line in out)
    assert out[-1].startswith("would remove 1 entries unused for 30 day(s)")

    code, out, _ = run(capsys, "--store", str(store), "--prune-unused", "30")
    assert code == 0 and out[-1].startswith("removed 1 entries") and "4.1 KB" in out[-1]
    assert not old.exists() and new.exists()

    code, out, _ = run(capsys, "--root", str(tmp_path / "runs"), "--prune-unused", "0")
    assert code == 0 and not new.exists() and out[-1].startswith("removed 1 entries")
    code, out, _ = run(capsys, "--root", str(tmp_path / "runs"))
    assert out == [f"stage store {store}: 0 entries, 0 B"]


@pytest.mark.parametrize(("args", "says"), [
    (["--root", "{tmp}/nowhere"], "stages: no stage store at {tmp}/nowhere/stages"),
    (["--store", "{tmp}/runs/stages", "--prune-unused", "-1"], "stages: --prune-unused -1 is not a number"),
    (["--store", "{tmp}/runs/stages", "--prune-unused", "nan"], "stages: --prune-unused nan is not a number"),
    (["--store", "{tmp}/runs/stages", "--dry-run"], "stages: --dry-run goes with --prune-unused DAYS"),
])
def test_mistakes_are_one_line_and_remove_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  args: list[str], says: str) -> None:
    kept = filed(tmp_path / "runs" / paths.STAGES_DIR, "kept", 400)
    code, out, err = run(capsys, *[a.format(tmp=tmp_path) for a in args])
    assert code == cli.USAGE_ERROR and out == [] and len(err) == 1
    assert err[0].startswith(f"error: {says.format(tmp=tmp_path)}"), err
    assert kept.exists()
