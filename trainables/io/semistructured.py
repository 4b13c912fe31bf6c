"""2:4 semi-structured export: a 2:4 ticket's linear layers in PyTorch's semi-structured sparse format, for GPUs.

NVIDIA GPUs from Ampere on (compute capability 8.0 or more) multiply a matrix that keeps at most 2 of every 4
consecutive entries of a row at up to twice the dense rate. PyTorch holds such a weight as a
`SparseSemiStructuredTensor` (`torch.sparse.to_sparse_semi_structured`), which `F.linear` dispatches to
cuSPARSELt or CUTLASS. Its constraints decide which layers qualify:

- CUDA only, 2-D weights: linear layers (a convolution stays dense-masked);
- half precision: float16 here (bfloat16 has the same constraints; float32 only as 1:2 on cuSPARSELt);
- shape: rows (outputs) a multiple of 32 and columns (inputs) a multiple of 64, CUTLASS's float16 minimum,
  which also meets cuSPARSELt's 16 x 16; the dense input's batch is padded by PyTorch itself;
- the mask: at most 2 kept of every 4 consecutive inputs of a row (a 2:4 or 1:4 ticket).

`write` saves the masked network in float16 with `torch.export` (any batch size) and the list of qualifying
layers; the standalone loader (trainables/io/semistructured_loader.py, copied into the folder) converts them
when it loads on the GPU. A semi-structured tensor cannot go into TorchScript, and `torch.export.load`
reads a program without running code from the file, so the loader needs nothing but torch. `why_not` says,
in one line, why a machine cannot use the format (the export then keeps CSR, as on any CPU).

Example:
    >>> why_not()
    'no CUDA GPU is visible'
    >>> plan(model, mask)
    (['fc1.weight', 'fc2.weight'], {'fc3.weight': '10x128: rows must be a multiple of 32 and inputs of 64'})
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.io import semistructured_loader as loader
from trainables.pruning.masks import Mask

DTYPE = torch.float16
MIN_ROWS, MIN_COLS = 32, 64  # float16/bfloat16: CUTLASS's minimum (and multiple); cuSPARSELt needs 16 x 16
TOLERANCE = 2e-2  # max abs difference from the float32 masked network's outputs, relative to max(1, |output|)


def why_not(device: int | None = None) -> str | None:
    """None where this machine runs 2:4 semi-structured kernels; else the reason, in one line."""
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return (f"{torch.cuda.get_device_name(device)} has compute capability {major}.{minor}; PyTorch's 2:4 "
                "kernels need 8.0 or more")
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return f"torch {torch.__version__} has no torch.sparse.to_sparse_semi_structured"
    return None


def is_24(mask: torch.Tensor) -> bool:
    """True for a 2-D mask keeping at most 2 of every 4 consecutive entries of each row."""
    return mask.dim() == 2 and mask.shape[1] % 4 == 0 and bool((mask.reshape(mask.shape[0], -1, 4).sum(-1) <= 2).all())


def plan(model: nn.Module, mask: Mask) -> tuple[list[str], dict[str, str]]:
    """(the weights stored semi-structured, {each other masked weight: why it stays dense-masked})."""
    chosen: list[str] = []
    dense: dict[str, str] = {}
    for name, m in mask.items():
        layer = model.get_submodule(name.rpartition(".")[0])
        if not isinstance(layer, nn.Linear) or not name.endswith(".weight"):
            dense[name] = f"a {type(layer).__name__}: the 2:4 kernels are matrix products of linear layers"
        elif m.shape[0] % MIN_ROWS or m.shape[1] % MIN_COLS:
            dense[name] = (f"{m.shape[0]}x{m.shape[1]}: rows must be a multiple of {MIN_ROWS} and inputs of "
                           f"{MIN_COLS}")
        elif not is_24(m):
            dense[name] = "its mask keeps more than 2 of some 4 consecutive inputs"
        else:
            chosen.append(name)
    return chosen, dense


def write(model: nn.Module, mask: Mask, folder: str | Path, input_shape: tuple[int, ...], *,
          device: str = "cuda") -> dict[str, Any]:
    """Write the semi-structured form of the masked `model` (weights already masked) into `folder`: the
    float16 program, the layer list and the loader. Returns what ticket.json records about it."""
    folder = Path(folder)
    layers, dense = plan(model, mask)
    doc: dict[str, Any] = {"used": bool(layers), "layers": layers, "dense": dense}
    if not layers:
        doc["why"] = "no linear layer qualifies"
        return doc
    net = copy.deepcopy(model).eval().to(device, DTYPE)
    example = torch.zeros(2, *input_shape, device=device, dtype=DTYPE)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    with torch.no_grad():
        program = torch.export.export(net, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, folder / loader.PROGRAM)
    (folder / loader.SPEC).write_text(json.dumps({"program": loader.PROGRAM, "dtype": "float16", "layers": layers},
                                                 indent=2))
    shutil.copyfile(loader.__file__, folder / loader.LOADER)
    doc.update({"loader": loader.LOADER, "program": loader.PROGRAM, "dtype": "float16", "tolerance": TOLERANCE})
    return doc


def export(model: nn.Module, mask: Mask, folder: str | Path, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """`write` where this machine has a GPU for it; else {"used": False, "why": one line}. Either way the
    folder's model.pt keeps its CSR layers for the CPU."""
    reason = why_not()
    if reason is not None:
        return {"used": False, "why": f"2:4 semi-structured format not used: {reason} (model.pt keeps CSR layers)"}
    doc = write(model, mask, folder, input_shape)
    if not doc["used"]:
        doc["why"] = f"2:4 semi-structured format not used: {doc['why']} (model.pt keeps CSR layers)"
    return doc
