"""An exported ticket on disk, and loading it back into a pruned network (no MLflow needed).

`ticket-search export RUN_ID --out DIR` writes the folder this module reads (names: trainables/paths.py):

    DIR/ticket.json         {"config": <flat keys>, "run_id", "trial_run_id", "sweep", "level",
                             "metrics": {...}, "input_shape": [..] | null, "num_classes": int | null}
    DIR/mask.safetensors    the ticket's mask (bit-packed, see maskio)
    DIR/rewind.safetensors  the weights the ticket restarts from (init or rewind point)
    DIR/density.json        overall and per-layer density

Example:
    >>> ticket, model, mask = load_ticket("exported/")
    >>> all(bool((p[~mask[n]] == 0).all()) for n, p in model.named_parameters() if n in mask)
    True
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from trainables.config import Ticket
from trainables.io import maskio
from trainables.paths import MASK_FILE, REWIND_FILE, TICKET_JSON
from trainables.pruning import masks as mk
from trainables.tasks.registry import build_model, shapes
from trainables.typed import ConfigError


def read_doc(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / TICKET_JSON
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; export a ticket there first") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise ConfigError(f"{path}: has no 'config' object of flat ticket keys")
    return doc


def shape_of(ticket: Ticket, doc: dict[str, Any]) -> tuple[tuple[int, ...], int]:
    """(input_shape, num_classes): stored at export, else read from the task's data (or environment).

    For a language model these are (context, vocabulary) and the vocabulary; for a policy the
    observation shape and the number of actions."""
    shape, classes = doc.get("input_shape"), doc.get("num_classes")
    if shape and classes:
        return tuple(int(d) for d in shape), int(classes)
    return shapes(ticket)


def load_rewind(path: Path) -> dict[str, torch.Tensor]:
    """The rewind weights, through safetensors (never a pickle)."""
    try:
        return load_file(str(path), device="cpu")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such rewind file") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a valid safetensors file ({' '.join(str(e).split())})") from None


def check_mask(mask: mk.Mask, model: nn.Module, path: Path) -> None:
    params = dict(model.named_parameters())
    for name, m in mask.items():
        if name not in params:
            raise ConfigError(f"{path}: names layer '{name}', which the model does not have")
        if tuple(m.shape) != tuple(params[name].shape):
            raise ConfigError(f"{path}: layer '{name}' has shape {list(m.shape)}, the model's is "
                              f"{list(params[name].shape)}")


def load_ticket(folder: str | Path, device: str | torch.device = "cpu") -> tuple[Ticket, nn.Module, mk.Mask]:
    """Rebuild an exported ticket: (config, model at the rewind weights with pruned weights exactly
    zero, mask). The mask's tensors sit on `device` like the model."""
    folder = Path(folder)
    doc = read_doc(folder)
    ticket = Ticket.from_flat(doc["config"])
    input_shape, num_classes = shape_of(ticket, doc)
    model = build_model(ticket, input_shape, num_classes)
    state = load_rewind(folder / REWIND_FILE)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"{folder / REWIND_FILE}: does not fit model {ticket.model.name} ({first})") from None
    mask = maskio.load(folder / MASK_FILE)
    check_mask(mask, model, folder / MASK_FILE)
    model.to(device)
    mask = {n: m.to(device) for n, m in mask.items()}
    mk.apply_(model, mask)
    return ticket, model, mask
