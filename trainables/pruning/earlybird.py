"""Early-Bird ticket detection (You et al. 2020): stop dense training once the drawn mask settles.

At the start of each epoch the training loop draws the mask the next pruning step would draw and passes
it to `EarlyBird.update`. The detector keeps the last `window` masks and fires when the newest one is
within `epsilon` normalised Hamming distance of each of the others. Its state (the recent masks) is plain
tensors and numbers, so it goes into a checkpoint and a resumed run continues identically.

Example:
    >>> eb = EarlyBird(epsilon=0.1, window=2)
    >>> mask = {"fc.weight": torch.tensor([True, False, True, True])}
    >>> eb.update(mask), eb.update(mask), eb.distances
    (False, True, [0.0])
"""

from __future__ import annotations

from typing import Any

import torch

from trainables.pruning import masks
from trainables.pruning.masks import Mask
from trainables.typed import ConfigError, in_range


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
