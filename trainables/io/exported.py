"""A trained ticket as a network that runs on its own: masked, compact or sparse, saved as TorchScript.

`ticket-search export RUN_ID --format F` writes the exported ticket folder (trainables/io/ticketio.py) plus
`trained.safetensors` (the trained weights, kept positions only: io/packing.py) and `model.pt`, which plain
PyTorch loads without this project: `torch.jit.load("model.pt")(x)`.

- `masked`: the trained network as trained, pruned weights exactly zero (same size and speed as dense).
- `compact`: pruned channels and neurons removed, a smaller dense network (trainables/io/compact.py; residual
  networks too: a channel ticket keeps a residual group's channels together, and compaction removes them).
- `sparse`: each pruned convolution and linear layer holds its weight as a torch sparse CSR matrix (a
  convolution as a matrix over unfolded patches), for CPU inference. PyTorch's 2:4 semi-structured kernels
  need a CUDA GPU of compute capability 8.0 or more and half precision: a CPU export stores 2:4 layers as
  CSR like any other.

Every format computes the masked network's outputs: within 1e-4 (float32 summation order differs).

Example:
    >>> ticket, model, mask = load_trained("exported/")
    >>> save_torchscript(convert(model, mask, "compact", (1, 8, 8)), (1, 8, 8), "exported/model.pt")
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trainables.config import Ticket
from trainables.io import maskio
from trainables.io.compact import compact
from trainables.io.packing import unpack
from trainables.io.ticketio import check_mask, load_rewind, read_doc, shape_of
from trainables.paths import MASK_FILE, TRAINED_FILE
from trainables.pruning.masks import Mask
from trainables.tasks.registry import build_model
from trainables.typed import ConfigError, lookup

FORMATS = ("masked", "compact", "sparse")
TOLERANCE = 1e-4  # max abs difference from the masked network's outputs


class CSRLinear(nn.Module):
    """y = W x + b with W a sparse CSR matrix."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, layer: nn.Linear, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", (layer.weight.detach() * mask).to_sparse_csr())
        self.register_buffer("bias", layer.bias.detach().clone() if layer.bias is not None
                             else torch.zeros(layer.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.weight @ x.t()).t() + self.bias


class CSRConv2d(nn.Module):
    """A convolution as a CSR matrix (out, in * kh * kw) times the unfolded input patches."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, layer: nn.Conv2d, mask: torch.Tensor) -> None:
        super().__init__()
        if layer.groups != 1:
            raise ConfigError("export --format sparse: grouped convolutions are not supported")
        w = layer.weight.detach() * mask
        self.register_buffer("weight", w.reshape(w.shape[0], -1).to_sparse_csr())
        self.register_buffer("bias", layer.bias.detach().clone() if layer.bias is not None else torch.zeros(w.shape[0]))
        if isinstance(layer.padding, str):
            raise ConfigError("export --format sparse: string padding is not supported")
        self.kernel: tuple[int, int] = (int(layer.kernel_size[0]), int(layer.kernel_size[1]))
        self.stride: tuple[int, int] = (int(layer.stride[0]), int(layer.stride[1]))
        self.padding: tuple[int, int] = (int(layer.padding[0]), int(layer.padding[1]))
        self.dilation: tuple[int, int] = (int(layer.dilation[0]), int(layer.dilation[1]))
        self.out_channels = w.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w = x.shape[0], x.shape[2], x.shape[3]
        oh = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel[0] - 1) - 1) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel[1] - 1) - 1) // self.stride[1] + 1
        cols = F.unfold(x, self.kernel, self.dilation, self.padding, self.stride)  # (B, in*kh*kw, L)
        out = self.weight @ cols.transpose(0, 1).reshape(cols.shape[1], -1)  # (out, B*L)
        out = out.reshape(self.out_channels, b, -1).transpose(0, 1) + self.bias[None, :, None]
        return out.reshape(b, self.out_channels, oh, ow)


def _sparse(model: nn.Module, mask: Mask) -> nn.Module:
    for name, m in mask.items():
        layer_name = name.removesuffix(".weight")
        layer = model.get_submodule(layer_name)
        if isinstance(layer, nn.Linear):
            new: nn.Module = CSRLinear(layer, m)
        elif isinstance(layer, nn.Conv2d):
            new = CSRConv2d(layer, m)
        else:
            raise ConfigError(f"export --format sparse: layer '{layer_name}' is a {type(layer).__name__}; "
                              "sparse supports Linear and Conv2d")
        parent, _, leaf = layer_name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)
    return model


def convert(model: nn.Module, mask: Mask, fmt: str, input_shape: tuple[int, ...]) -> nn.Module:
    """The trained masked `model` (eval mode) in format `fmt`: masked, compact or sparse."""
    lookup({f: f for f in FORMATS}, "--format", fmt)
    model = model.eval()
    if fmt == "compact":
        return compact(model, mask, input_shape)
    if fmt == "sparse":
        return _sparse(copy.deepcopy(model), mask).eval()
    return model


def load_trained(folder: str | Path) -> tuple[Ticket, nn.Module, Mask, tuple[int, ...]]:
    """(config, the trained network with its mask applied, in eval mode, mask, input shape) of an exported
    folder holding trained.safetensors."""
    folder = Path(folder)
    doc = read_doc(folder)
    ticket = Ticket.from_flat(doc["config"])
    input_shape, outputs = shape_of(ticket, doc)
    model = build_model(ticket, input_shape, outputs)
    mask = maskio.load(folder / MASK_FILE)
    check_mask(mask, model, folder / MASK_FILE)
    state = unpack(load_rewind(folder / TRAINED_FILE), mask)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"{folder / TRAINED_FILE}: does not fit model {ticket.model.name} ({first})") from None
    return ticket, model.eval(), mask, input_shape


def save_torchscript(module: nn.Module, input_shape: tuple[int, ...], path: str | Path) -> Path:
    """Trace `module` on one example and save it: `torch.jit.load(path)` needs nothing but torch."""
    with warnings.catch_warnings():  # TorchScript is deprecated in favour of torch.export, but loads anywhere
        warnings.simplefilter("ignore")
        try:
            traced = torch.jit.trace(module.eval(), torch.zeros(1, *input_shape), check_trace=False)
        except Exception as e:  # noqa: BLE001 - e.g. a language model, whose input is token ids
            why = " ".join(str(e).split())[:120]
            raise ConfigError(f"export --format: cannot trace this network on a float input of shape "
                              f"{list(input_shape)} ({type(e).__name__}: {why})") from None
        torch.jit.save(traced, str(path))
    return Path(path)
