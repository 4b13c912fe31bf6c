"""A 2:4 ticket on a CUDA GPU, loaded with nothing but PyTorch (this file imports torch alone).

`ticket-search export RUN_ID --format sparse` of a 2:4 ticket, on a machine with a GPU of compute capability
8.0 or more, copies this file into the exported folder as `semistructured.py`, beside `semistructured.json`
(the layers to convert) and `model_semistructured.pt2`: the masked network in float16, written by
`torch.export` with any batch size. `torch.export.load` reads the program without running code from the file
(no pickle); `load` then replaces the listed linear layers' weights by PyTorch's semi-structured sparse
tensors (`torch.sparse.to_sparse_semi_structured`), whose `F.linear` runs the 2:4 sparse kernels. The program
is saved on the GPU it was exported on; `load` needs a CUDA device for the 2:4 layers (`sparse=False` keeps
them dense, e.g. to compare).

Example (from the exported folder):
    >>> import semistructured
    >>> net = semistructured.load()            # cuda:0, 2:4 layers semi-structured
    >>> y = net(x.to("cuda", torch.float16))   # float16 in, float16 out
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

SPEC = "semistructured.json"  # {"program": PROGRAM, "dtype": "float16", "layers": ["fc1.weight", ...]}
PROGRAM = "model_semistructured.pt2"
LOADER = "semistructured.py"  # this file's name in an exported folder
HERE = Path(__file__).resolve().parent


def to_24(weight: torch.Tensor) -> torch.Tensor:
    """A 2:4 weight (at most 2 of every 4 consecutive inputs nonzero) as a semi-structured sparse tensor:
    cuSPARSELt where this build of torch has it, else the CUTLASS kernels."""
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    SparseSemiStructuredTensor._FORCE_CUTLASS = not torch.backends.cusparselt.is_available()
    return to_sparse_semi_structured(weight.detach().contiguous())


def load(folder: str | Path = HERE, device: str = "cuda", *, sparse: bool = True) -> nn.Module:
    """The exported network on `device`, its listed linear weights semi-structured (`sparse`), in eval mode."""
    folder = Path(folder)
    spec = json.loads((folder / SPEC).read_text())
    module = torch.export.load(folder / spec["program"]).module().to(device)
    for p in module.parameters():
        p.requires_grad_(False)
    for name in spec["layers"] if sparse else []:
        owner, _, leaf = name.rpartition(".")
        parent = module.get_submodule(owner)
        setattr(parent, leaf, nn.Parameter(to_24(getattr(parent, leaf)), requires_grad=False))
    return module
