"""Channel groups: the layers whose output channels must be kept or removed together (a residual group).

The network is traced with torch.fx. Each node's output has a channel space (the indices along dimension 1):
a convolution, a linear layer, the input and a flatten start a new one; BatchNorm, activations, pooling and
dropout keep their input's; an addition of two tensors merges its inputs' spaces (union-find): channel i of
one branch is added to channel i of the other. In ResNet-20 the stem and the second convolution of each block
of stage 1 write one space (16 channels), a stage's 1x1 projection shortcut and its blocks' second convolutions
another; the first convolution of a block feeds no addition and stays alone. A channel ticket keeps or
removes a group's channel in all its layers at once (trainables/pruning/structure.py), so that compaction
(trainables/io/compact.py) can remove it from the residual stream.

torch-pruning's DependencyGraph finds the same groups on ResNet-20, but it needs an example input, runs the
network through autograd to find them, and its removal drops what a removed channel still carries (its
BatchNorm shift, through ReLU and the addition), so the result would not compute the masked network's outputs.

Example:
    >>> channel_groups(resnet20)[0]
    ('stem.0.weight', 'stages.0.body.3.weight', 'stages.1.body.3.weight', 'stages.2.body.3.weight')
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.ELU, nn.Identity,
               nn.Dropout)
POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
LAYERS = (nn.Conv2d, nn.Linear)
ACTIVATIONS = (F.relu, torch.relu)
ADDS = (operator.add, operator.iadd, torch.add)


def trace(model: nn.Module) -> fx.GraphModule | None:
    """The model as an fx graph, or None where fx cannot trace it (data-dependent control flow)."""
    try:
        return fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure means: no graph to analyse
        return None


def is_add(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in ADDS or node.op == "call_method" and node.target == "add"


def keeps_channels(gm: fx.GraphModule, node: fx.Node) -> bool:
    """True for an operation that maps channel i to channel i alone (norm, activation, pool, dropout)."""
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), (*NORMS, *ELEMENTWISE, *POOLS))
    if node.op == "call_method":
        return node.target == "relu"
    return node.op == "call_function" and node.target in ACTIVATIONS


def spaces(gm: fx.GraphModule) -> dict[fx.Node, fx.Node]:
    """Each node's channel space, named by one node of it: nodes that share channel indices share it."""
    parent: dict[fx.Node, fx.Node] = {}

    def find(n: fx.Node) -> fx.Node:
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for node in gm.graph.nodes:
        parent[node] = node
        inputs = node.all_input_nodes
        if keeps_channels(gm, node) and len(inputs) == 1:
            parent[node] = find(inputs[0])
        elif is_add(node) and inputs:
            root = find(inputs[0])
            for other in inputs[1:]:
                parent[find(other)] = root
            parent[node] = root
    return {n: find(n) for n in parent}


def channel_groups(model: nn.Module) -> tuple[tuple[str, ...], ...]:
    """Weight names of the layers writing one channel space, for every space two or more layers write
    (empty for a network without additions, or one fx cannot trace)."""
    gm = trace(model)
    if gm is None:
        return ()
    space = spaces(gm)
    members: dict[fx.Node, list[str]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), LAYERS):
            members.setdefault(space[node], []).append(f"{node.target}.weight")
    return tuple(tuple(names) for names in members.values() if len(names) > 1)
