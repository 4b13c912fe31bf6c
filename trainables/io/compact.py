"""Compaction: a masked network rebuilt as a smaller dense one, pruned channels and neurons removed.

The network is traced with torch.fx into a chain of modules and calls (convolutions, linear layers, BatchNorm,
activations, pools, flatten, dropout). Going down the chain, each convolution or linear layer keeps the output
rows its mask keeps (the last layer keeps all: they are the outputs) and only the inputs its predecessor
kept. A removed row is not simply dropped: with no weight left it outputs its bias, a constant, which BatchNorm
and the activation map to another constant. Its contribution to the next layer is folded into that layer's bias
(for a padded convolution a fixed map, since the zero padding only sees it inside the image), so the compact
network computes exactly what the masked one does, up to float rounding. A residual network (an addition of
two branches) is refused with one line: its channels must be removed in groups, which this does not do.

Example:
    >>> small = compact(masked_model.eval(), mask, (1, 8, 8))
    >>> torch.allclose(small(x), masked_model(x), atol=1e-5)
    True
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from trainables.pruning.masks import Mask
from trainables.typed import ConfigError

ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.ELU, nn.Identity,
               nn.Dropout)
POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
UNSUPPORTED = "compact supports non-residual models (chains of conv, linear, batchnorm, activation, pool, flatten)"


@dataclass
class Kept:
    """What flows along dimension 1 after a node: the kept entries, and the constant every removed one holds."""

    keep: torch.Tensor  # long indices along dim 1
    const: torch.Tensor  # one value per entry of dim 1 (only the removed entries' values are used)


class BiasMap(nn.Module):
    """A layer plus a fixed additive map: a removed input channel's constant seen through zero padding."""

    def __init__(self, layer: nn.Module, extra: torch.Tensor) -> None:
        super().__init__()
        self.layer = layer
        self.register_buffer("extra", extra)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x) + self.extra


def _removed(k: Kept) -> torch.Tensor:
    out = torch.ones(k.const.numel(), dtype=torch.bool)
    out[k.keep] = False
    return out


def _layer(module: nn.Conv2d | nn.Linear, name: str, mask: Mask, k: Kept, last: bool,
           in_shape: torch.Size) -> tuple[nn.Module, Kept]:
    w = module.weight.detach()
    if f"{name}.weight" in mask:
        w = w * mask[f"{name}.weight"].to(w.dtype)
    bias = module.bias.detach() if module.bias is not None else torch.zeros(w.shape[0])
    rows = torch.arange(w.shape[0]) if last else w.reshape(w.shape[0], -1).ne(0).any(1).nonzero().squeeze(1)
    removed_in = _removed(k).nonzero().squeeze(1)
    w_kept = w[rows][:, k.keep]
    extra: torch.Tensor | None = None
    if removed_in.numel():
        w_removed = w[rows][:, removed_in]
        v = k.const[removed_in].to(w.dtype)
        if isinstance(module, nn.Linear):
            extra = w_removed @ v
        else:
            x = v.reshape(1, -1, 1, 1).expand(1, -1, *in_shape[2:])
            extra = F.conv2d(x, w_removed, None, module.stride, module.padding, module.dilation)[0]
    new: nn.Module
    b_new = bias[rows].clone()
    if isinstance(module, nn.Linear):
        new = nn.Linear(int(k.keep.numel()), int(rows.numel()))
        if extra is not None:
            b_new += extra
    else:
        conv: Any = module  # Conv2d's tuple fields are typed loosely
        new = nn.Conv2d(int(k.keep.numel()), int(rows.numel()), conv.kernel_size, conv.stride, conv.padding,
                        conv.dilation, bias=True)
        if extra is not None:
            flat = extra.reshape(extra.shape[0], -1)
            if bool((flat == flat[:, :1]).all()):  # no padding reached it: a plain bias
                b_new += flat[:, 0]
                extra = None
    new.weight.data = w_kept.clone()
    new.bias = nn.Parameter(b_new)
    if extra is not None and isinstance(module, nn.Conv2d):
        new = BiasMap(new, extra)
    return new, Kept(rows, bias.clone())  # a row with no weight outputs its bias


def _batchnorm(bn: nn.BatchNorm1d | nn.BatchNorm2d, k: Kept) -> tuple[nn.Module, Kept]:
    new = copy.deepcopy(bn)
    idx = k.keep
    new.num_features = int(idx.numel())
    for attr in ("weight", "bias"):
        if getattr(bn, attr) is not None:
            setattr(new, attr, nn.Parameter(getattr(bn, attr).detach()[idx].clone()))
    for attr in ("running_mean", "running_var"):
        if getattr(bn, attr) is not None:
            setattr(new, attr, getattr(bn, attr)[idx].clone())
    const = bn.eval()(k.const.reshape(1, -1, *([1] * (2 if isinstance(bn, nn.BatchNorm2d) else 0)))).reshape(-1)
    return new, Kept(k.keep, const.detach())


def _flatten(k: Kept, shape: torch.Size) -> Kept:
    if len(shape) <= 2:
        return k
    per = int(torch.tensor(shape[2:]).prod())
    keep = (k.keep[:, None] * per + torch.arange(per)).reshape(-1)
    return Kept(keep, k.const.repeat_interleave(per))


def _replace(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, leaf = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, module)


@torch.no_grad()
def compact(model: nn.Module, mask: Mask, input_shape: tuple[int, ...]) -> nn.Module:
    """A dense network without the removed channels and neurons, computing what `model` with `mask` applied
    computes (in eval mode). ConfigError with one line for a network that is not a chain."""
    try:
        gm = fx.symbolic_trace(copy.deepcopy(model).eval())
    except Exception as e:  # noqa: BLE001 - any tracing failure means: not a plain chain
        raise ConfigError(f"export --format compact: {UNSUPPORTED}; tracing failed ({type(e).__name__})") from None
    ShapeProp(gm).propagate(torch.zeros(1, *input_shape))
    nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    layers = [n for n in nodes
              if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.Conv2d | nn.Linear)]
    state: Kept | None = None
    for node in nodes:
        if len(node.all_input_nodes) != 1 or len(node.users) > 1:
            raise ConfigError(f"export --format compact: {UNSUPPORTED}; '{node.name}' is not on a single chain")
        src = node.all_input_nodes[0]
        in_shape = src.meta["tensor_meta"].shape
        if state is None:
            state = Kept(torch.arange(in_shape[1]), torch.zeros(in_shape[1]))
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            if isinstance(mod, nn.Conv2d) and mod.groups == 1 or isinstance(mod, nn.Linear):
                new, state = _layer(mod, node.target, mask, state, node is layers[-1], in_shape)
                _replace(gm, node.target, new)
            elif isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d):
                new, state = _batchnorm(mod, state)
                _replace(gm, node.target, new)
            elif isinstance(mod, ELEMENTWISE):
                state = Kept(state.keep, mod(state.const))
            elif isinstance(mod, nn.Flatten):
                state = _flatten(state, in_shape)
            elif not isinstance(mod, POOLS):
                raise ConfigError(f"export --format compact: {UNSUPPORTED}; '{node.target}' is a {type(mod).__name__}")
        elif node.op == "call_method" and node.target == "flatten" or node.target is torch.flatten:
            state = _flatten(state, in_shape)
        elif node.target in (F.relu, torch.relu):
            state = Kept(state.keep, F.relu(state.const))
        else:
            raise ConfigError(f"export --format compact: {UNSUPPORTED}; '{node.name}' is {node.op} {node.target}")
    gm.recompile()
    return gm
