"""Compaction: a masked network rebuilt as a smaller dense one, pruned channels and neurons removed.

The network is traced with torch.fx (convolutions, linear layers, BatchNorm, activations, pools, flatten,
dropout, and additions of two branches: residual networks). Channels that meet in an addition share their
indices (trainables/pruning/groups.py): such a channel space keeps a channel while any layer writing it keeps
that row; a space that reaches the output, or holds the input, keeps all. Going through the graph, each
convolution or linear layer keeps the output rows of its space and only the inputs its predecessor kept. A
removed row is not simply dropped: with no weight left it outputs its bias, a constant, which BatchNorm, the
activation and an addition map to other constants. Its contribution to the next layer is folded into that
layer's bias (for a padded convolution a fixed map, since the zero padding only sees it inside the image), so
the compact network computes exactly what the masked one does, up to float rounding. A channel ticket of a
residual network keeps a group's channels together (trainables/pruning/structure.py), so whole channels of
the residual stream go.

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

from trainables.pruning import groups
from trainables.pruning.groups import ELEMENTWISE, POOLS
from trainables.pruning.masks import Mask
from trainables.typed import ConfigError

UNSUPPORTED = ("compact supports conv, linear, batchnorm, activation, pool, flatten and the addition of two "
               "branches")


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


def _masked(module: nn.Conv2d | nn.Linear, name: str, mask: Mask) -> torch.Tensor:
    w = module.weight.detach()
    return w * mask[f"{name}.weight"].to(w.dtype) if f"{name}.weight" in mask else w


def _alive(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1).ne(0).any(1)


def _layer(module: nn.Conv2d | nn.Linear, name: str, mask: Mask, k: Kept, rows: torch.Tensor,
           in_shape: torch.Size) -> tuple[nn.Module, Kept]:
    w = _masked(module, name, mask)
    bias = module.bias.detach() if module.bias is not None else torch.zeros(w.shape[0])
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


def _space_rows(gm: fx.GraphModule, mask: Mask, space: dict[fx.Node, fx.Node]) -> dict[fx.Node, torch.Tensor]:
    """The rows each channel space keeps: any row a layer writing it keeps; all where the space holds the
    input or a flatten, or reaches the output."""
    alive: dict[fx.Node, torch.Tensor] = {}
    full: set[fx.Node] = set()
    for node in gm.graph.nodes:
        root = space[node]
        if node.op == "call_module" and isinstance(mod := gm.get_submodule(str(node.target)), groups.LAYERS):
            rows = _alive(_masked(mod, str(node.target), mask))
            alive[root] = alive[root] | rows if root in alive else rows
        elif node.op == "output":
            full.update(space[n] for n in node.all_input_nodes)
        elif node.op == "placeholder" or not (groups.keeps_channels(gm, node) or groups.is_add(node)):
            full.add(root)
    return {root: torch.arange(a.numel()) if root in full else a.nonzero().squeeze(1) for root, a in alive.items()}


def _add(node: fx.Node, state: dict[fx.Node, Kept]) -> Kept:
    a, b = (state[n] for n in node.all_input_nodes) if len(node.all_input_nodes) == 2 else (None, None)
    if a is None or b is None or len(node.args) != 2 or node.kwargs or not torch.equal(a.keep, b.keep):
        raise ConfigError(f"export --format compact: {UNSUPPORTED}; '{node.name}' is not such an addition")
    return Kept(a.keep, a.const + b.const)


@torch.no_grad()
def compact(model: nn.Module, mask: Mask, input_shape: tuple[int, ...]) -> nn.Module:
    """A dense network without the removed channels and neurons, computing what `model` with `mask` applied
    computes (in eval mode). ConfigError with one line for a network of other operations."""
    try:
        gm = fx.symbolic_trace(copy.deepcopy(model).eval())
    except Exception as e:  # noqa: BLE001 - any tracing failure means: no graph to compact
        raise ConfigError(f"export --format compact: {UNSUPPORTED}; tracing failed ({type(e).__name__})") from None
    ShapeProp(gm).propagate(torch.zeros(1, *input_shape))
    space = groups.spaces(gm)
    keep = _space_rows(gm, mask, space)
    state: dict[fx.Node, Kept] = {}
    for node in gm.graph.nodes:
        if node.op == "output":
            continue
        if node.op == "placeholder":
            channels = node.meta["tensor_meta"].shape[1]
            state[node] = Kept(torch.arange(channels), torch.zeros(channels))
            continue
        if groups.is_add(node):
            state[node] = _add(node, state)
            continue
        if len(node.all_input_nodes) != 1:
            raise ConfigError(f"export --format compact: {UNSUPPORTED}; '{node.name}' has "
                              f"{len(node.all_input_nodes)} inputs")
        src = node.all_input_nodes[0]
        k, in_shape = state[src], src.meta["tensor_meta"].shape
        if node.op == "call_module":
            mod = gm.get_submodule(str(node.target))
            if isinstance(mod, nn.Conv2d) and mod.groups == 1 or isinstance(mod, nn.Linear):
                new, state[node] = _layer(mod, str(node.target), mask, k, keep[space[node]], in_shape)
                _replace(gm, str(node.target), new)
            elif isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d):
                new, state[node] = _batchnorm(mod, k)
                _replace(gm, str(node.target), new)
            elif isinstance(mod, ELEMENTWISE):
                state[node] = Kept(k.keep, mod(k.const))
            elif isinstance(mod, nn.Flatten):
                state[node] = _flatten(k, in_shape)
            elif isinstance(mod, POOLS):
                state[node] = k
            else:
                raise ConfigError(f"export --format compact: {UNSUPPORTED}; '{node.target}' is a {type(mod).__name__}")
        elif node.op == "call_method" and node.target == "flatten" or node.target is torch.flatten:
            state[node] = _flatten(k, in_shape)
        elif node.target in groups.ACTIVATIONS or node.op == "call_method" and node.target == "relu":
            state[node] = Kept(k.keep, F.relu(k.const))
        else:
            raise ConfigError(f"export --format compact: {UNSUPPORTED}; '{node.name}' is {node.op} {node.target}")
    gm.recompile()
    return gm
