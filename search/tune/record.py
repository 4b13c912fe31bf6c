"""The durable record of a sweep: what Ray persisted for each trial, read back from `storage.ray_storage`.

Ray writes, per trial, a folder `<ray_storage>/<sweep>/trial_<id>/` holding `params.json` (the trial's
config), `result.json` (one JSON line per result Ray received) and one `checkpoint_NNNNNN/` per level
boundary (`trainables.checkpoint`: every finished level's result and masks, and the rewind weights).
A level is finished once its checkpoint is there; MLflow is made complete from this record
(reconcile.py), and tests audit MLflow against it the way a user would.

The storage may be a local folder or a bucket (`s3://...`): it is read through pyarrow's file systems, as
Ray itself writes it; a remote checkpoint is copied to a temporary folder before it is loaded.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from trainables.config import KEYS
from trainables.io import checkpoint
from trainables.io.checkpoint import State
from trainables.io.results import LevelResult
from trainables.paths import STATE_JSON

TRIAL_PREFIX = "trial_"  # our trial folders: trial_<Ray trial id> (Ray's default spells out every key)
TRIAL_DIR = re.compile(rf"{TRIAL_PREFIX}([A-Za-z0-9_-]+)")
CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)")  # Ray's names, below:
RESULTS_FILE = "result.json"
PARAMS_FILE = "params.json"


def trial_dirname(trial: Any) -> str:
    """Short trial folder names (Ray's default spells out every config key and overflows paths)."""
    return f"{TRIAL_PREFIX}{trial.trial_id}"


@dataclass
class TrialRecord:
    """One trial as Ray persisted it."""

    trial_id: str
    config: dict[str, Any]  # flat ticket keys, as the trial got them
    rows: list[dict[str, Any]] = field(default_factory=list)  # every result Ray received, in order
    state: State | None = None  # the newest level checkpoint: every finished level, with its masks

    @property
    def results(self) -> list[LevelResult]:
        return list(self.state.results) if self.state is not None else []

    @property
    def levels(self) -> list[int]:
        return [r.level for r in self.results]

    @property
    def done(self) -> bool:
        """Every level of the search ran (whatever then stopped the trial)."""
        return self.state is not None and self.state.done

    @property
    def last_row(self) -> dict[str, Any]:
        return self.rows[-1] if self.rows else {}


def experiment_path(ray_storage: str, sweep: str) -> str:
    return f"{ray_storage.rstrip('/')}/{sweep}"


def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    fs, path = pafs.FileSystem.from_uri(uri if "://" in uri else str(Path(uri).resolve()))
    return fs, path


def read_experiment(ray_storage: str, sweep: str) -> list[TrialRecord]:
    """Every trial folder of the sweep's Ray experiment (none if the experiment never started)."""
    fs, root = _fs(experiment_path(ray_storage, sweep))
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return []
    records = []
    for info in fs.get_file_info(pafs.FileSelector(root)):
        match = TRIAL_DIR.fullmatch(info.base_name)
        if info.type == pafs.FileType.Directory and match:
            records.append(_read_trial(fs, info.path, match.group(1)))
    return sorted(records, key=lambda r: r.trial_id)


def _read_trial(fs: pafs.FileSystem, folder: str, trial_id: str) -> TrialRecord:
    """params.json and result.json are the driver's (a driver killed outright leaves neither for the trials
    its last snapshot missed); the checkpoints are the trial's own, and carry its config too."""
    rows = [json.loads(line) for line in (_read_text(fs, f"{folder}/{RESULTS_FILE}") or "").splitlines()
            if line.strip()]
    params = _read_text(fs, f"{folder}/{PARAMS_FILE}")
    state, config = _newest_state(fs, folder)
    config = json.loads(params) if params else config
    return TrialRecord(trial_id, {k: v for k, v in config.items() if k in KEYS}, rows, state)


def _read_text(fs: pafs.FileSystem, path: str) -> str | None:
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return bytes(f.read()).decode()


def _newest_state(fs: pafs.FileSystem, folder: str) -> tuple[State | None, dict[str, Any]]:
    """The level checkpoint holding the most finished levels (the newest of those), fully loaded, and the
    config it was saved with.

    A trial restarted from an older checkpoint writes new ones for the levels it trains again, so the
    checkpoint with the highest number is not always the one with the most levels."""
    candidates = []
    for info in fs.get_file_info(pafs.FileSelector(folder)):
        match = CHECKPOINT_DIR.fullmatch(info.base_name)
        if info.type == pafs.FileType.Directory and match:
            doc = _read_text(fs, f"{info.path}/{STATE_JSON}")
            if doc is not None:
                candidates.append((len(json.loads(doc).get("results", [])), int(match.group(1)), info.path))
    for _, _, path in sorted(candidates, reverse=True):
        try:
            with _local_copy(fs, path) as local:
                return checkpoint.load(local), checkpoint.read_config(local)
        except checkpoint.CheckpointError:
            continue  # unreadable: the next one back still holds every level before it
    return None, {}


@contextmanager
def _local_copy(fs: pafs.FileSystem, path: str) -> Iterator[str]:
    if isinstance(fs, pafs.LocalFileSystem):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="ticket-record-") as tmp:
        pafs.copy_files(path, tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield tmp
