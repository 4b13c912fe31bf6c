"""Early-Bird ticket detection (You et al. 2020): stop dense training once the drawn mask settles.

At the start of each epoch the training loop draws the mask the next pruning step would draw and passes
it to `EarlyBird.update` (one detector per replicate; the lottery stops when every replicate's has settled).
`prune.eb_structure` says which mask: `unstructured` (weights by magnitude) or `channel`, the published
variant: BatchNorm channels by |scaling factor| (`channel_mask`), ranked across all BN layers, while the
search adds an L1 penalty `prune.eb_l1` on those factors (`bn_scales`; the steppers apply it).
The detector keeps the last `window` masks and fires when the newest one is within `epsilon` normalised
Hamming distance of each of the others. Its state (the recent masks) is plain tensors and numbers, so it
goes into a checkpoint and a resumed run continues identically.

Example:
    >>> eb = EarlyBird(epsilon=0.1, window=2)
    >>> mask = {"fc.weight": torch.tensor([True, False, True, True])}
    >>> eb.update(mask), eb.update(mask), eb.distances
    (False, True, [0.0])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from trainables.config import PruneConfig
from trainables.pruning import masks, schedule, structure
from trainables.pruning.masks import Mask
from trainables.typed import ConfigError, in_range


def bn_scales(model: nn.Module) -> dict[str, nn.Parameter]:
    """The scaling factors (weights) of every affine BatchNorm layer, by full parameter name."""
    return {f"{prefix}.weight" if prefix else "weight": m.weight for prefix, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None}


def channel_mask(model: nn.Module, density: float) -> Mask:
    """Early-Bird's channel mask: the `density` fraction of BatchNorm channels with the largest |scaling
    factor|, ranked across all BN layers (exact top-k by index), keyed by the BN weights' names."""
    scales = bn_scales(model)
    if not scales:
        raise ConfigError("prune.eb_structure: channel needs a model with BatchNorm layers; use unstructured")
    scores = {n: p.detach().abs() for n, p in scales.items()}
    return masks.prune(scores, {n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()}, density,
                       scope="global")


class EarlyBird:
    """Fires when the newest of the last `window` masks is within `epsilon` of each of the others."""

    def __init__(self, epsilon: float, window: int) -> None:
        in_range("prune.eb_epsilon", epsilon, 0.0, 1.0)
        if window < 2:
            raise ConfigError(f"prune.eb_window: need at least 2 masks to compare, got {window}")
        self.epsilon, self.window = epsilon, window
        self._masks: list[Mask] = []
        self._distances: list[float] = []

    def update(self, mask: Mask) -> bool:
        """Add the newest mask; True when the window is full and every distance is at most epsilon."""
        # Copies on the CPU: the caller's tensors may change or live on an accelerator.
        self._masks.append({n: m.detach().to("cpu", torch.bool).clone() for n, m in mask.items()})
        del self._masks[:-self.window]
        self._refresh()
        return self.ready

    @property
    def ready(self) -> bool:
        """Whether the last update found the masks settled (`<=` so that epsilon 0 means identical)."""
        return len(self._masks) == self.window and all(d <= self.epsilon for d in self._distances)

    @property
    def distances(self) -> list[float]:
        """Normalised Hamming distance of the newest mask to each older one, oldest first, for logging."""
        return list(self._distances)

    def _refresh(self) -> None:
        newest = self._masks[-1] if self._masks else {}
        self._distances = [masks.hamming(newest, old) for old in self._masks[:-1]]

    def state_dict(self) -> dict[str, Any]:
        """Tensors, numbers and lists only: safe for `torch.save` and `torch.load(weights_only=True)`."""
        return {"epsilon": self.epsilon, "window": self.window,
                "masks": [dict(m) for m in self._masks]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the recent masks; the window and epsilon given to the constructor stay in force."""
        saved = state.get("masks")
        if not isinstance(saved, list) or not all(isinstance(m, dict) for m in saved):
            raise ValueError("Early-Bird state needs 'masks': a list of masks")
        self._masks = [{n: t.to("cpu", torch.bool).clone() for n, t in m.items()} for m in saved]
        del self._masks[:-self.window]
        self._refresh()


class EarlyBirdSearch:
    """One detector per replicate, fed the mask the next pruning step would draw: `prune.eb_structure`'s
    unstructured magnitude mask (`density` of the pool for IMP's next level, of all weights for `init`) or
    BatchNorm channel mask. `update` is True when every replicate's masks have settled."""

    def __init__(self, p: PruneConfig, density: float, output: Callable[[nn.Module], str | None],
                 state: dict[str, Any] | None = None) -> None:
        self.p, self.density, self.output = p, density, output
        self.detectors = [EarlyBird(p.eb_epsilon, p.eb_window) for _ in range(p.replicates)]
        if state:  # a checkpoint from before every replicate was checked holds replicate 0's state only
            for detector, saved in zip(self.detectors, state.get("replicates", [state]), strict=False):
                detector.load_state_dict(saved)

    def draw(self, model: nn.Module, mask: Mask) -> Mask:
        """The mask the next pruning step would draw from `model` (`mask`: the weights it still keeps)."""
        p = self.p
        if p.eb_structure == "channel":
            return channel_mask(model, self.density)
        params = dict(model.named_parameters())
        scores = {n: params[n].detach().abs() for n in mask}
        output = self.output(model)
        out_d = schedule.output_density_for(self.density, p.rate, p.output_rate) if output else self.density
        pool_d = self.density
        if p.method == "init" and output in mask:  # the target counts every prunable weight
            pool_d = schedule.pool_density(self.density, out_d, mask[output].numel() / masks.counts(mask)[1])
        return structure.prune(scores, mask, pool_d, scope=p.scope, output=output, output_density=out_d,
                               structure=structure.of(p.structure, model))

    def update(self, replicates: list[tuple[nn.Module, Mask]]) -> bool:
        """Add each replicate's newest mask; True when all of them are settled."""
        ready = [d.update(self.draw(model, mask)) for d, (model, mask) in zip(self.detectors, replicates,
                                                                               strict=True)]
        return all(ready)

    def state_dict(self) -> dict[str, Any]:
        return {"replicates": [d.state_dict() for d in self.detectors]}
