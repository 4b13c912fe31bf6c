"""A reference IMP loop written the way the well-known lottery-ticket frameworks write theirs.

This is the "theirs" of benchmark 4, written here from scratch in that style (not copied): batches come
from a `torch.utils.data.DataLoader` over a `TensorDataset` (shuffled, `num_workers=0`, the fastest
choice on two cores), the mask is re-applied to the weights on every forward pass by a forward pre-hook
(`weight.data *= mask`), and the ticket and its controls are trained one after another. It does the same
work as `trainables.lottery.Lottery` for the benchmark's ticket: IMP with global magnitude pruning
(output layer at half the rate), rewinding to initialisation, a `reinit` control from level 1 on,
validation after every epoch and the test set after each level.

Run on its own: `python -m benchmarks.reference` (one run of 5 levels on digits, prints accuracies).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainables.config import LEVELS_WITHOUT_TARGET, Ticket
from trainables.models.registry import build as build_model
from trainables.tasks.classification.data import Dataset, Split
from trainables.tasks.classification.data import load as load_data

EVAL_BATCH = 256  # examples per evaluation batch, the usual test-loader setting


@dataclass
class Level:
    level: int
    density: float
    val_acc: float
    test_acc: float
    control_test_acc: float | None


def prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{n}.weight": m.weight for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}


class MaskOnForward:
    """Zero the pruned weights before every forward pass of each masked layer (a forward pre-hook)."""

    def __init__(self, model: nn.Module, mask: dict[str, torch.Tensor]) -> None:
        self.handles = []
        for name, module in model.named_modules():
            key = f"{name}.weight"
            if key in mask:
                self.handles.append(module.register_forward_pre_hook(_masker(mask[key].to(module.weight.dtype))))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _masker(mask: torch.Tensor) -> Callable[[nn.Module, object], None]:
    def apply(module: nn.Module, args: object) -> None:  # returns None: the inputs pass through unchanged
        weight = module.weight
        assert isinstance(weight, torch.Tensor)
        weight.data.mul_(mask)
    return apply


def loader(split: Split, batch_size: int, *, shuffle: bool, seed: int = 0) -> DataLoader:
    return DataLoader(TensorDataset(split.x, split.y), batch_size=batch_size, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(seed) if shuffle else None, num_workers=0)


@torch.no_grad()
def accuracy(model: nn.Module, split: Split, device: torch.device) -> float:
    model.eval()
    correct, seen, total_loss = 0, 0, 0.0
    for x, y in loader(split, EVAL_BATCH, shuffle=False):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    model.train()
    return correct / seen


def train(model: nn.Module, mask: dict[str, torch.Tensor], data: Dataset, ticket: Ticket, seed: int,
          device: torch.device) -> tuple[float, float]:
    """Train one member for `train.epochs`; validation after each epoch; (final val acc, test acc)."""
    cfg = ticket.train
    hooks = MaskOnForward(model, mask)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    train_loader = loader(data.train, cfg.batch_size, shuffle=True, seed=seed)
    val = float("nan")
    model.train()
    for _ in range(cfg.epochs):
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        val = accuracy(model, data.val, device)
    test = accuracy(model, data.test, device)
    hooks.remove()
    with torch.no_grad():  # leave the trained weights masked, as the hook would on the next forward
        for name, p in prunable_weights(model).items():
            p.mul_(mask[name].to(p.dtype))
    return val, test


def magnitude_prune(model: nn.Module, mask: dict[str, torch.Tensor], rate: float, output: str
                    ) -> dict[str, torch.Tensor]:
    """Remove `rate` of the remaining weights by global magnitude; the output layer at half the rate."""
    weights = prunable_weights(model)
    new = {}
    pool = [n for n in mask if n != output]
    alive = torch.cat([weights[n].detach().abs()[mask[n]] for n in pool])
    k = int(rate * alive.numel())
    threshold = torch.kthvalue(alive, k).values if k > 0 else alive.min() - 1
    for n in pool:
        new[n] = mask[n] & (weights[n].detach().abs() > threshold)
    out = weights[output].detach().abs()
    k_out = int(rate / 2 * int(mask[output].sum()))
    out_threshold = torch.kthvalue(out[mask[output]], k_out).values if k_out > 0 else out.min() - 1
    new[output] = mask[output] & (out > out_threshold)
    return new


def run_imp(ticket: Ticket, device: str = "cpu") -> list[Level]:
    """IMP for `prune.levels` levels with a `reinit` control, one member at a time."""
    dev = torch.device(device)
    data = load_data(ticket.data, dev)
    p = ticket.prune

    def new_model(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return build_model(ticket.model, data.input_shape, data.num_classes).to(dev)

    model = new_model(ticket.train.seed)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    output = f"{model.output_name}.weight"
    mask = {n: torch.ones_like(w, dtype=torch.bool) for n, w in prunable_weights(model).items()}
    levels = []
    for level in range((LEVELS_WITHOUT_TARGET if p.levels is None else p.levels) + 1):  # no target here
        model.load_state_dict(init)  # rewind to initialisation
        val, test = train(model, mask, data, ticket, seed=level, device=dev)
        control = None
        if level > 0 and "reinit" in p.controls:
            _, control = train(new_model(10_000 + level), mask, data, ticket, seed=level, device=dev)
        kept = sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
        levels.append(Level(level, kept, val, test, control))
        mask = magnitude_prune(model, mask, p.rate, output)
    return levels


if __name__ == "__main__":
    t = Ticket.from_flat({"train.device": "cpu", "prune.levels": 5, "prune.controls": "reinit", "train.epochs": 3})
    start = time.perf_counter()
    for lv in run_imp(t):
        print(lv)
    print(f"{time.perf_counter() - start:.1f} s")
