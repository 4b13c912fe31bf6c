"""Weight scorers for pruning (keep the highest score) and iterative pruning at initialisation.

A scorer maps (model, mask, context) to one score tensor per mask entry; `masks.prune` turns scores into
a mask. A scorer is one function here plus one line in `SCORERS` (its name registers itself as a valid
`prune.scorer`). Formulas (DESIGN.md section 6):

- magnitude: |w|.                      - random: N(0, 1) from the context's generator.
- snip: |g * w| on one batch, g the gradient of the loss of the masked network (Lee et al. 2019); this
  is |dL/dc| for a multiplicative mask c at 1.
- grasp: S = -w * (H g) with logits divided by a temperature of 200 (Wang et al. 2020). GraSP removes
  the weights with the *highest* S, so the keep-score returned here is -S = w * (H g).
- synflow: on a float64 copy in the scoring mode (eval by default) with every parameter replaced by its
  absolute value, feed an input of ones, R = sum of outputs, score |w * dR/dw| (Tanaka et al. 2020). Data-free.

SNIP, GraSP and SynFlow score a copy in `ScoreContext.mode` (`prune.score_mode`): eval by default, as the
references do (BatchNorm running statistics), whatever mode the caller's model is in.

Scorers never change the caller's model: whatever they modify is a deep copy, so weights, gradients,
buffers and train/eval mode are as before. `prune_at_init` iterates with density_k = d**(k/n).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from trainables import config
from trainables.pruning import masks, schedule
from trainables.pruning import structure as structured
from trainables.pruning.masks import Mask
from trainables.tasks.base import Batch
from trainables.typed import ConfigError, lookup

GRASP_TEMPERATURE = 200.0  # softens the logits so the gradient is not dominated by confident examples


@dataclass
class ScoreContext:
    """What the data-dependent scorers need; SNIP uses the first batch, GraSP all of them."""

    batches: list[Batch]
    loss: Callable[[nn.Module, Batch], torch.Tensor]  # model, batch -> scalar loss
    input_shape: tuple[int, ...]  # one example's shape, for SynFlow's input of ones
    generator: torch.Generator  # for `random`
    # BatchNorm while scoring: "eval" = running statistics (Synaptic-Flow's prune_loop default for every
    # scorer, and at initialisation the identity), "train" = each scoring batch's own statistics.
    mode: str = "eval"


Scorer = Callable[[nn.Module, Mask, ScoreContext], dict[str, torch.Tensor]]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _masked_copy(model: nn.Module, mask: Mask, ctx: ScoreContext) -> tuple[nn.Module, list[torch.Tensor]]:
    """A deep copy in the scoring mode with the mask applied, and its parameters in mask order, all
    requiring grad."""
    clone = copy.deepcopy(model).train(ctx.mode == "train")
    masks.apply_(clone, mask)
    params = dict(clone.named_parameters())
    chosen = [params[n].requires_grad_(True) for n in mask]
    return clone, chosen


def _on(batch: Batch, device: torch.device) -> Batch:
    return batch[0].to(device), batch[1].to(device)


def magnitude(model: nn.Module, mask: Mask, ctx: ScoreContext) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {n: params[n].detach().abs().clone() for n in mask}


def random(model: nn.Module, mask: Mask, ctx: ScoreContext) -> dict[str, torch.Tensor]:
    g = ctx.generator
    return {n: torch.randn(m.shape, generator=g, device=g.device).to(m.device) for n, m in mask.items()}


def snip(model: nn.Module, mask: Mask, ctx: ScoreContext) -> dict[str, torch.Tensor]:
    clone, params = _masked_copy(model, mask, ctx)
    loss = ctx.loss(clone, _on(ctx.batches[0], _device(model)))
    grads = torch.autograd.grad(loss, params)
    return {n: (g * p).detach().abs() for n, p, g in zip(mask, params, grads, strict=True)}


class _Tempered(nn.Module):
    """Divides the wrapped model's outputs (logits) by a temperature, leaving the loss untouched."""

    def __init__(self, inner: nn.Module, temperature: float) -> None:
        super().__init__()
        self.inner, self.temperature = inner, temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) / self.temperature


def grasp(model: nn.Module, mask: Mask, ctx: ScoreContext) -> dict[str, torch.Tensor]:
    clone, params = _masked_copy(model, mask, ctx)
    tempered, device = _Tempered(clone, GRASP_TEMPERATURE), _device(model)
    batches = [_on(b, device) for b in ctx.batches]
    # g: gradient of the summed loss over all batches, held fixed (stopped) for the second pass.
    g = [torch.zeros_like(p) for p in params]
    for batch in batches:
        for acc, grad in zip(g, torch.autograd.grad(ctx.loss(tempered, batch), params), strict=True):
            acc += grad
    # Hg = d/dw (g_stopped . dL/dw): a Hessian-vector product, summed over the same batches.
    hg = [torch.zeros_like(p) for p in params]
    for batch in batches:
        grads = torch.autograd.grad(ctx.loss(tempered, batch), params, create_graph=True)
        z = torch.stack([(gs * gr).sum() for gs, gr in zip(g, grads, strict=True)]).sum()
        for acc, h in zip(hg, torch.autograd.grad(z, params, allow_unused=True), strict=True):
            if h is not None:  # a weight the product does not depend on (e.g. linear output) has Hg=0
                acc += h
    return {n: (p * h).detach() for n, p, h in zip(mask, params, hg, strict=True)}


def synflow(model: nn.Module, mask: Mask, ctx: ScoreContext) -> dict[str, torch.Tensor]:
    clone = copy.deepcopy(model).double().train(ctx.mode == "train")
    with torch.no_grad():
        # Absolute values of all floating state, buffers too (BatchNorm running statistics), so that
        # every path through the network carries positive flow.
        for t in clone.state_dict().values():
            if t.is_floating_point():
                t.abs_()
        masks.apply_(clone, mask)
    params = dict(clone.named_parameters())
    chosen = [params[n].requires_grad_(True) for n in mask]
    ones = torch.ones((1, *ctx.input_shape), dtype=torch.float64, device=_device(model))
    flow = clone(ones).sum()
    grads = torch.autograd.grad(flow, chosen)
    return {n: (p * g).detach().abs() for n, p, g in zip(mask, chosen, grads, strict=True)}


SCORERS: dict[str, Scorer] = {"magnitude": magnitude, "random": random, "snip": snip, "grasp": grasp,
                              "synflow": synflow}
SCORERS["bn_scale"] = structured.bn_scale  # for channel tickets: each channel's BatchNorm scale
config.register_names("prune.scorer", SCORERS)
DATA_SCORERS = frozenset({"snip", "grasp"})  # the scorers that read ScoreContext.batches


def get(name: str) -> Scorer:
    return lookup(SCORERS, "prune.scorer", name)


def score(name: str, model: nn.Module, mask: Mask, ctx: ScoreContext) -> dict[str, torch.Tensor]:
    """Scores for exactly the entries of `mask` (values of pruned entries are irrelevant)."""
    return get(name)(model, mask, ctx)


def prune_at_init(model: nn.Module, mask: Mask, ctx: ScoreContext, *, scorer: str, density: float,
                  output: str | None, output_density: float | None, scope: str,
                  iterations: int, structure: str | structured.Structure = "unstructured") -> Mask:
    """Prune to `density` of all entries of `mask` in `iterations` rounds of scoring, density_k =
    density**(k/n), k = 1..n. A named `output` layer ranks alone and reaches `output_density` (None: the
    same as `density`) by the same schedule; the other layers keep what makes the whole `density_k`.

    Each round scores the network with the current mask applied, so that iterative SynFlow sees the
    flow of the pruned network and avoids layer collapse. The caller's model is not changed.
    """
    if iterations < 1:
        raise ConfigError(f"prune.iterations: need at least 1, got {iterations}")
    get(scorer)  # fail on a bad name before copying the model
    work = copy.deepcopy(model)
    final_output = density if output_density is None else output_density
    total = sum(m.numel() for m in mask.values())
    share = mask[output].numel() / total if output is not None and output in mask and total else 0.0
    current = {n: m.clone() for n, m in mask.items()}
    for k in range(1, iterations + 1):
        masks.apply_(work, current)
        scores = score(scorer, work, current, ctx)
        out_k = final_output ** (k / iterations)
        pool_k = schedule.pool_density(density ** (k / iterations), out_k, share)
        current = structured.prune(scores, current, pool_k, scope=scope, output=output, output_density=out_k,
                                   structure=structure)
    return current
