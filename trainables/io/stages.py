"""What identifies a trained stage of a ticket search, and how a stage is filed in the stage store.

IMP's level 0 (the dense level) and its rewind snapshot do not depend on most pruning keys, so the
trials of a sweep that varies only those train the same dense network. `dense_key` is the sha256 of
everything that determines level 0's trained weights, its result and its epoch rows:

- the `data` section (less where it lives: `data.root`, `data.download`), `model`, `train` (less
  `train.device`, replaced by the device type it resolved to, and a GPU's name) and `rl`;
- `prune.replicates` (each replicate is a member, and the number of members picks the stepper) and
  `prune.bias` (the dense mask covers the biases);
- with `prune.instability` at `prune.rewind_iter` 0, the twins that train beside level 0 and
  `prune.instability_alphas`;
- `prune.rewind_iter` only where it changes the trajectory: `rewind_order = "restart"` (a fresh optimizer
  at k). With "through" level 0 passes k on its way; the snapshot at k is an entry of its own,
  `snapshot_key(key, k)`;
- with `prune.early_bird`, every key of the Early-Bird search (it ends level 0): the rate, the output
  rate and pool, scope, structure and the `eb_*` keys;
- the format of the entry, the torch version and the batching mode (TICKET_SEARCH_POPULATION).

Level L >= 1 is keyed by its prefix, `level_key(dense_key, ticket, L)`: the dense key, L and every pruning key
but `prune.levels` and `prune.target_density`, which decide only where IMP stops (level L's mask, rewind point,
controls and twins follow from the levels before it and the other pruning keys). Two trials with the same keys
up to different targets, or a later sweep going deeper, load the levels they share.

Not reused (`dense_key` is None): `prune.method = "init"` (its prefix to k is short, and scored at once) and
`prune.init_mask` (a transferred mask's file content, and the controls that then train at level 0).

IMP watches level 0 with the Early-Bird detector even without `prune.early_bird` (`ticket-search run`
reports the epoch it saw): that observation depends on the pruning keys, so it is filed with the
`eb_key` it was made under, and a trial loading the stage under another has `early_bird_epoch` None.
Sweeps do not report it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import torch

from trainables.config import Ticket
from trainables.io.checkpoint import StateDict, join_tensors, split_tensors
from trainables.io.results import LevelResult
from trainables.io.stagestore import Entry
from trainables.training import population

FORMAT = 1  # bump when an entry's layout or the meaning of a stored state changes
NOT_IN_KEY = frozenset({"data.root", "data.download", "train.device"})
EB_KEYS = ("rate", "output_rate", "output_pool", "scope", "structure", "eb_epsilon", "eb_window",
           "eb_structure", "eb_l1", "bias", "replicates")


def _digest(doc: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=list).encode()).hexdigest()


def why_not(ticket: Ticket) -> str:
    """Why this ticket's dense level is never reused ("" when it may be)."""
    if ticket.prune.method != "imp":
        return "prune.method init"
    if ticket.prune.init_mask:
        return "prune.init_mask"
    return ""


def dense_key(ticket: Ticket, device: torch.device) -> str | None:
    """The stage key of IMP's level 0 (see the module docstring), or None when it is not reused."""
    if why_not(ticket):
        return None
    p = ticket.prune
    flat = ticket.flat()
    doc: dict[str, Any] = {k: v for k, v in flat.items()
                           if k.split(".")[0] in ("data", "model", "train", "rl") and k not in NOT_IN_KEY}
    doc.update({"format": FORMAT, "torch": torch.__version__, "device": device.type,
                "population": population.mode(), "prune.replicates": p.replicates, "prune.bias": p.bias})
    if device.type == "cuda":
        doc["gpu"] = torch.cuda.get_device_name(device)
    if p.instability and p.rewind_iter == 0:
        doc["twins"] = p.instability_alphas
    if p.rewind_iter and p.rewind_order == "restart":
        doc["restart_at"] = p.rewind_iter
    if p.early_bird:
        doc["early_bird"] = {k: getattr(p, k) for k in EB_KEYS}
    return _digest(doc)


def rewind_in_stage(ticket: Ticket) -> bool:
    """Whether the dense entry holds the rewind point itself (it ends where k is keyed: restart or
    Early-Bird); else k = 0 is the initialisation and k > 0 a snapshot entry of its own."""
    p = ticket.prune
    return bool(p.early_bird or (p.rewind_iter and p.rewind_order == "restart"))


def snapshot_key(key: str, k: int) -> str:
    """The key of the weights at iteration k of the dense trajectory `key` ("through" order)."""
    return _digest({"stage": key, "rewind_iter": k})


STOP_KEYS = frozenset({"prune.levels", "prune.target_density"})  # where IMP stops, not what a level computes


def level_key(dense: str, ticket: Ticket, level: int) -> str:
    """The key of IMP level `level` >= 1 of a ticket whose dense level is `dense` (see the module docstring)."""
    prune = {k: v for k, v in ticket.flat().items() if k.startswith("prune.") and k not in STOP_KEYS}
    return _digest({"stage": dense, "level": level, "prune": prune})


def eb_key(ticket: Ticket) -> str:
    """What the Early-Bird observation of level 0 depends on besides the stage."""
    return _digest({k: getattr(ticket.prune, k) for k in EB_KEYS})


@dataclasses.dataclass
class Level:
    """An IMP level as a trial needs it to go on: its result, its epoch rows (replayed to the reporter), each
    replicate's trained weights (scored for the next level) and, for level 0 where the stage holds it, the rewind
    point and the Early-Bird observation."""

    result: LevelResult
    rows: list[dict[str, Any]]
    trained: list[StateDict]
    training: list[bool]  # each trained model's train/eval mode
    rewind: list[StateDict] | None
    start_iter: int
    early_bird: dict[str, Any]  # {"key": eb_key, "epoch": int | None, "state": the detector's state}

    def entry(self) -> Entry:
        tensors: dict[str, torch.Tensor] = {}
        doc = {"format": FORMAT, "result": self.result.to_json(), "rows": self.rows, "training": self.training,
               "start_iter": self.start_iter,
               "tensors": split_tensors({"trained": self.trained, "rewind": self.rewind, "masks": self.result.masks,
                                         "weights": self.result.weights, "early_bird": self.early_bird}, "t",
                                        tensors)}
        return doc, tensors

    @classmethod
    def from_entry(cls, entry: Entry) -> Level:
        doc, tensors = entry
        parts = join_tensors(doc["tensors"], tensors)
        result = LevelResult.from_json(doc["result"])
        result.masks, result.weights = parts["masks"], parts["weights"]
        return cls(result, doc["rows"], parts["trained"], doc["training"], parts["rewind"], int(doc["start_iter"]),
                   parts["early_bird"])


def snapshot_entry(rewind: list[StateDict]) -> Entry:
    tensors: dict[str, torch.Tensor] = {}
    return {"format": FORMAT, "tensors": split_tensors({"rewind": rewind}, "t", tensors)}, tensors


def snapshot_from_entry(entry: Entry) -> list[StateDict]:
    rewind: list[StateDict] = join_tensors(entry[0]["tensors"], entry[1])["rewind"]
    return rewind
