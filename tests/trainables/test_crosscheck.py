"""Cross-check: each scorer's published formula, stated plainly here, gives the masks `trainables` draws.

The statements below are written from the papers, not from trainables/pruning/scorers.py: magnitude |w|;
random N(0, 1); SNIP |dL/dc| for a multiplicative mask c at 1 (Lee et al. 2019); GraSP S = -(H g) * w with
logits over a temperature of 200, the highest S removed (Wang et al. 2020); SynFlow |w * dR/dw| with every
parameter and buffer made absolute, R the summed output for an input of ones, in float64 and eval mode
(Tanaka et al. 2020). Both a small conv+BN network (BN running statistics made non-trivial, negative biases
and means, so eval mode and the absolute values matter) and an MLP; the masks must be equal.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from trainables.pruning import masks, scorers
from trainables.pruning.scorers import ScoreContext

DENSITY = 0.3


def conv_bn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 3))
    with torch.no_grad():  # running statistics and biases away from their 0/1 start, some negative
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1.0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.2)
    return model


def mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))


def data(shape: tuple[int, ...], seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(6, *shape, generator=g), torch.randint(3, (6,), generator=g)) for _ in range(2)]


def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1}


# ---- the published formulas, stated independently ------------------------------------------------------

def plain_snip(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    """|dL/dc| at c = 1 where each weight is w * c (connection sensitivity)."""
    model = copy.deepcopy(model).eval()
    w = weights(model)
    c = {n: torch.ones_like(t, requires_grad=True) for n, t in w.items()}
    params = {**dict(model.named_parameters()), **{n: w[n] * c[n] for n in w}}
    out = functional_call(model, params, (batch[0],))
    grads = torch.autograd.grad(F.cross_entropy(out, batch[1]), list(c.values()))
    return {n: g.abs() for n, g in zip(c, grads, strict=True)}


def plain_grasp_keep(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """-S where S = -(H g) * w: GraSP removes the highest S, i.e. keeps the highest -S."""
    model = copy.deepcopy(model).eval()
    w = weights(model)
    others = {n: p.detach() for n, p in model.named_parameters() if n not in w}

    def loss(*ws: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(())
        for x, y in batches:
            out = functional_call(model, {**others, **dict(zip(w, ws, strict=True))}, (x,))
            total = total + F.cross_entropy(out / 200.0, y)
        return total

    ws = tuple(t.clone().requires_grad_(True) for t in w.values())
    g = torch.autograd.grad(loss(*ws), ws, create_graph=True)
    # H g = d/dw (g . stop(g)): the Hessian of the whole summed loss times its gradient
    hg = torch.autograd.grad(sum((gi * gi.detach()).sum() for gi in g), ws)
    s = {n: -(h * t) for n, h, t in zip(w, hg, w.values(), strict=True)}
    return {n: -v for n, v in s.items()}


def plain_synflow(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """|w * dR/dw|, R = sum of the outputs of the absolute-valued float64 network for an input of ones."""
    model = copy.deepcopy(model).double().eval()
    state = {k: v.abs() for k, v in model.state_dict().items()}  # weights, biases, BN buffers alike
    model.load_state_dict(state)
    w = {n: p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1}
    r = model(torch.ones(1, *input_shape, dtype=torch.float64)).sum()
    grads = torch.autograd.grad(r, list(w.values()))
    return {n: (g * p).abs().detach() for (n, p), g in zip(w.items(), grads, strict=True)}


def plain_random(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(t.shape, generator=g) for n, t in weights(model).items()}


def top(scores: dict[str, torch.Tensor], density: float) -> dict[str, torch.Tensor]:
    """Keep the `density` fraction of all weights with the highest scores (global), ties to lower index."""
    flat = torch.cat([s.flatten().double() for s in scores.values()])
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.sort(flat, descending=True, stable=True).indices[:round(density * flat.numel())]] = True
    parts = keep.split([s.numel() for s in scores.values()])
    return {n: p.reshape(s.shape) for (n, s), p in zip(scores.items(), parts, strict=True)}


CASES = {"conv_bn": (conv_bn, (1, 5, 5)), "mlp": (mlp, (12,))}


@pytest.mark.parametrize("case", CASES)
def test_every_scorer_draws_the_mask_of_its_published_formula(case: str) -> None:
    build, shape = CASES[case]
    model = build()
    model.train()  # the caller's mode: the scorers must score in eval mode (prune.score_mode default)
    batches = data(shape)
    ctx = ScoreContext(batches=batches, loss=loss_fn, input_shape=shape, generator=torch.Generator().manual_seed(5))
    plain = {"magnitude": {n: t.abs() for n, t in weights(model).items()}, "random": plain_random(model, 5),
             "snip": plain_snip(model, batches[0]), "grasp": plain_grasp_keep(model, batches),
             "synflow": plain_synflow(model, shape)}
    dense = masks.ones(model)
    assert set(dense) == set(weights(model))
    for name, expected_scores in plain.items():
        ctx.generator = torch.Generator().manual_seed(5)
        ours = scorers.score(name, model, dense, ctx)
        got = masks.prune(ours, dense, DENSITY, scope="global")
        want = top(expected_scores, DENSITY)
        assert all(torch.equal(got[n], want[n]) for n in dense), (case, name)
        assert model.training  # the caller's model is left as it was


def test_synflow_scores_in_eval_mode_with_absolute_buffers_and_biases() -> None:
    """Train-mode BN (batch statistics of one input of ones) or signed running means and biases give other
    scores: each would fail this test."""
    model, shape = conv_bn(), (1, 5, 5)
    ctx = ScoreContext(batches=[], loss=loss_fn, input_shape=shape, generator=torch.Generator())
    ours = scorers.score("synflow", model, masks.ones(model), ctx)
    want = plain_synflow(model, shape)
    assert all(torch.allclose(ours[n], want[n], rtol=1e-9, atol=0) for n in want)

    def variant(mode_train: bool, absolute_buffers: bool) -> dict[str, torch.Tensor]:
        clone = copy.deepcopy(model).double().train(mode_train)
        with torch.no_grad():
            for n, t in clone.state_dict().items():
                if t.is_floating_point() and (absolute_buffers or n.endswith("weight")):
                    t.abs_()
        w = {n: p for n, p in clone.named_parameters() if n in want}
        grads = torch.autograd.grad(clone(torch.ones(1, *shape, dtype=torch.float64)).sum(), list(w.values()))
        return {n: (g * p).abs() for (n, p), g in zip(w.items(), grads, strict=True)}

    for wrong in (variant(True, True), variant(False, False)):
        assert not all(torch.allclose(ours[n], wrong[n], rtol=1e-6) for n in want)
    train_mode = scorers.score("synflow", model, masks.ones(model),
                               ScoreContext(batches=[], loss=loss_fn, input_shape=shape, generator=torch.Generator(),
                                            mode="train"))
    assert all(torch.allclose(train_mode[n], variant(True, True)[n].detach(), rtol=1e-9) for n in want)
