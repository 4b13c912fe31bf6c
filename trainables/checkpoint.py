"""Level-boundary checkpoints of a ticket search: `save(state, dir)` and `load(dir)`.

Layout: `state.json` (numbers, results, and the name of the tensor file) and one
`state-<level>.safetensors` with every tensor (rewind weights, masks, Early-Bird masks). Nothing is
pickled. The tensor file is written first under a new name and `state.json` last, each by rename,
so a crash mid-save leaves the previous checkpoint intact and never a half-written one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from trainables.config import ConfigError
from trainables.lottery import State
from trainables.results import LevelResult

_TENSOR = "__tensor__"


class CheckpointError(ConfigError):
    """A checkpoint folder that cannot be read back."""


def _split(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor inside dicts/lists by a reference, collecting the tensors."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous().clone()
        return {_TENSOR: prefix}
    if isinstance(obj, dict):
        return {k: _split(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_split(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    return obj


def _join(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            return tensors[obj[_TENSOR]]
        return {k: _join(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    return obj


def save(state: State, folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    doc = {
        "level": state.level, "done": state.done, "start_iter": state.start_iter,
        "epochs_total": state.epochs_total, "early_bird_epoch": state.early_bird_epoch,
        "results": [r.to_json() for r in state.results],
        "tensors": _split({"masks": state.masks, "rewind": state.rewind, "early_bird": state.early_bird,
                           "result_masks": [r.masks for r in state.results]}, "t", tensors),
    }
    name = f"state-{state.level:03d}-{len(state.results):03d}.safetensors"
    tmp = folder / f".{name}.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, folder / name)
    doc["tensor_file"] = name
    tmp_json = folder / ".state.json.tmp"
    tmp_json.write_text(json.dumps(doc))
    os.replace(tmp_json, folder / "state.json")
    for old in folder.glob("state-*.safetensors"):  # older checkpoints are superseded now
        if old.name != name:
            old.unlink(missing_ok=True)


def load(folder: str | Path) -> State:
    folder = Path(folder)
    try:
        doc = json.loads((folder / "state.json").read_text())
        tensors = load_file(str(folder / doc["tensor_file"]))
        parts = _join(doc["tensors"], tensors)
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise CheckpointError(f"checkpoint {folder}: cannot read it back ({type(e).__name__}: {e})") from e
    results = [LevelResult.from_json(r) for r in doc["results"]]
    for r, m in zip(results, parts["result_masks"], strict=True):
        r.masks = m
    return State(level=doc["level"], done=doc["done"], results=results, masks=parts["masks"],
                 rewind=parts["rewind"], start_iter=doc["start_iter"], epochs_total=doc["epochs_total"],
                 early_bird_epoch=doc["early_bird_epoch"], early_bird=parts["early_bird"])
