"""Level-boundary checkpoints of a ticket search: `save(state, dir)` and `load(dir)`.

A checkpoint holds a `State`: everything needed to continue a ticket search at a level boundary.
Layout (trainables/paths.py): `state.json` (numbers, results, and the name of the tensor file) and one
`state-<level>-<results>.safetensors` with every tensor (rewind weights, masks, Early-Bird masks). Nothing
is pickled. The tensor file is written first under a new name and `state.json` last, each atomically
(maskio.write_atomically),
so a crash mid-save leaves the previous checkpoint intact and never a half-written one. `load` reads
nothing but `state.json` and the tensor file it names (a plain name, never a path), and checks that
every mask is boolean and fits its weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes

from trainables import paths
from trainables.io.maskio import write_atomically
from trainables.io.results import LevelResult
from trainables.pruning.masks import Mask
from trainables.typed import ConfigError

_TENSOR = "__tensor__"
StateDict = dict[str, torch.Tensor]


@dataclass
class State:
    """Everything needed to continue a ticket search at a level boundary."""

    level: int = 0  # the next level to train
    done: bool = False
    results: list[LevelResult] = field(default_factory=list)
    masks: list[Mask] = field(default_factory=list)  # per replicate: the mask the next level uses
    rewind: list[StateDict] = field(default_factory=list)  # per replicate: weights at the rewind point
    start_iter: int = 0  # iteration the next level starts training at (the rewind point)
    epochs_total: float = 0.0  # epochs the ticket represents so far, all levels and members' shared passes
    # epochs this trial trained itself: epochs_total less what it loaded from the stage store (trainables/staged.py),
    # plus the prefix it trained to reach a rewind point the store lacked
    epochs_trained: float = 0.0
    reused_stage: bool = False  # a level came from the stage store
    early_bird_epoch: int | None = None
    early_bird: dict[str, Any] | None = None  # EarlyBird.state_dict()
    invert: list[Mask] = field(default_factory=list)  # per replicate: the `invert` control's next mask


class CheckpointError(ConfigError):
    """A checkpoint folder that cannot be read back."""


def split_tensors(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor inside dicts/lists by a reference, collecting the tensors (JSON-ready; the stage
    store files its entries the same way)."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous().clone()
        return {_TENSOR: prefix}
    if isinstance(obj, dict):
        return {k: split_tensors(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [split_tensors(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    return obj


def join_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """`split_tensors` undone: references replaced by the tensors."""
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            return tensors[obj[_TENSOR]]
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


def save(state: State, folder: str | Path, config: dict[str, Any] | None = None) -> None:
    """Write `state` into `folder`; `config` (the ticket's flat keys) makes the checkpoint say what it is a
    checkpoint of, so the sweep's record stays complete where nothing else of a trial was kept."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    doc = {
        "level": state.level, "done": state.done, "start_iter": state.start_iter,
        "epochs_total": state.epochs_total, "early_bird_epoch": state.early_bird_epoch,
        "epochs_trained": state.epochs_trained, "reused_stage": state.reused_stage,
        "results": [r.to_json() for r in state.results],
        **({"config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}} if config else {}),
        "tensors": split_tensors({"masks": state.masks, "rewind": state.rewind, "early_bird": state.early_bird,
                           "result_masks": [r.masks for r in state.results], "invert": state.invert,
                           "result_weights": [r.weights for r in state.results]}, "t", tensors),
    }
    name = paths.state_tensors(state.level, len(state.results))
    write_atomically(folder / name, save_bytes(tensors), "checkpoint")  # OSError naming the file, errno kept
    doc["tensor_file"] = name
    write_atomically(folder / paths.STATE_JSON, json.dumps(doc).encode(), "checkpoint")
    for old in folder.glob(paths.STATE_TENSORS_GLOB):  # older checkpoints are superseded now
        if old.name != name:
            old.unlink(missing_ok=True)


def read_config(folder: str | Path) -> dict[str, Any]:
    """The flat ticket keys a checkpoint was saved with ({} when it was saved without them)."""
    try:
        config = json.loads((Path(folder) / paths.STATE_JSON).read_text()).get("config") or {}
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {folder}: cannot read its config ({type(e).__name__}: {e})") from None
    return config if isinstance(config, dict) else {}


def load(folder: str | Path) -> State:
    """Read a checkpoint back; anything malformed or inconsistent is a one-line CheckpointError."""
    folder = Path(folder)
    try:
        doc = json.loads((folder / paths.STATE_JSON).read_text())
        name = doc["tensor_file"]
        if not isinstance(name, str) or not paths.STATE_TENSORS.fullmatch(name):  # a name, never a path elsewhere
            raise ValueError(f"tensor_file {str(name)[:80]!r} is not state-NNN-NNN.safetensors")
        tensors = load_file(str(folder / name))
        parts = join_tensors(doc["tensors"], tensors)
        results = [LevelResult.from_json(r) for r in doc["results"]]
        for r, m in zip(results, parts["result_masks"], strict=True):
            r.masks = m
        for r, w in zip(results, parts.get("result_weights") or [{} for _ in results], strict=True):
            r.weights = w  # checkpoints from before trained weights were kept have none
        state = State(level=int(doc["level"]), done=bool(doc["done"]), results=results, masks=parts["masks"],
                      rewind=parts["rewind"], start_iter=int(doc["start_iter"]),
                      epochs_total=float(doc["epochs_total"]), early_bird_epoch=doc["early_bird_epoch"],
                      epochs_trained=float(doc.get("epochs_trained", doc["epochs_total"])),
                      reused_stage=bool(doc.get("reused_stage", False)),
                      early_bird=parts["early_bird"], invert=parts.get("invert") or [])
        _check(state)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, SafetensorError) as e:
        why = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        raise CheckpointError(f"checkpoint {folder}: cannot read it back ({why})") from None
    return state


def _check(state: State) -> None:
    """Masks must be boolean and fit the weights they mask: a file with wrong shapes or names stops here,
    not as a shape error deep inside training."""
    if len(state.masks) != len(state.rewind):
        raise ValueError(f"{len(state.masks)} masks for {len(state.rewind)} replicates")
    masks = [*state.masks, *state.invert, *(m for r in state.results for m in r.masks)]
    for mask in masks:
        for name, m in mask.items():
            weights = state.rewind[0].get(name) if state.rewind else None
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
                raise ValueError(f"mask of {name!r} is not a boolean tensor")
            if weights is None or tuple(weights.shape) != tuple(m.shape):
                shape = None if weights is None else list(weights.shape)
                raise ValueError(f"mask of {name!r} has shape {list(m.shape)}, the weights {shape}")


def copy_weights(sd: StateDict) -> StateDict:
    """A detached copy of a state dict (a rewind point that later training cannot change)."""
    return {k: v.detach().clone() for k, v in sd.items()}
