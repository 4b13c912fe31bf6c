"""Classification datasets as normalised tensors on the training device: splitting and augmentation.

This module owns what happens to a dataset's examples (datasets.py says where they come from): how the
train/validation/test splits are carved, how inputs are normalised, and the tensor-only flip+crop
augmentation the training loop applies per batch. Small datasets live whole on the device and
are batched by index (DESIGN.md section 8), so a `Dataset` is plain tensors, never a DataLoader.

Example:
    >>> from trainables.config import DataConfig
    >>> d = load(DataConfig(name="digits"))
    >>> d.input_shape, d.num_classes, len(d.train) + len(d.val) + len(d.test)
    ((1, 8, 8), 10, 1797)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainables.config import DataConfig
from trainables.tasks.base import TEST_FRACTION, TEST_SEED
from trainables.tasks.classification.datasets import source

CROP_PAD = 4  # pixels of zero padding around an image before its random crop (the CIFAR standard)


@dataclass
class Split:
    """One split: float32 normalised inputs (N, *input_shape) and int64 labels (N,), on one device."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Dataset:
    """A dataset split three ways, normalised with the training split's per-channel statistics.

    When `data.val_fraction` is 0 there is no validation split: `val` is the test split itself (the same
    `Split` object), so the training loop still has something to monitor; metrics then say nothing
    beyond test accuracy.
    """

    name: str
    input_shape: tuple[int, ...]  # per example: (1, 8, 8) digits, (40,) mnist1d, (3, 32, 32) cifar10
    num_classes: int
    train: Split
    val: Split
    test: Split
    augment: bool  # apply `augment_batch` to training batches (CIFAR with data.augment)

    def to(self, device: torch.device | str) -> Dataset:
        test = self.test.to(device)
        val = test if self.val is self.test else self.val.to(device)  # keep one copy when shared
        return dataclasses.replace(self, train=self.train.to(device), val=val, test=test)


# -- splitting and normalisation ------------------------------------------------------------------


def _carve(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted indices (kept, held out) of a seeded random split holding out `fraction` of n examples.

    At least one example is held out and at least one kept, so a tiny fraction never yields an empty split.
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = min(max(1, round(fraction * n)), n - 1)
    return perm[k:].sort().values, perm[:k].sort().values


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std per channel (axis 1) for inputs with channels, one pair for flat vectors."""
    dims = tuple(d for d in range(x.dim()) if d != 1) if x.dim() > 2 else tuple(range(x.dim()))
    std, mean = torch.std_mean(x, dim=dims, keepdim=True)
    return mean, std.clamp_min(1e-6)  # a constant channel stays finite instead of dividing by zero


def load(cfg: DataConfig, device: torch.device | str = "cpu") -> Dataset:
    """Load `cfg.name`, split it, normalise it with training-split statistics, and put it on `device`.

    The test split is the official test set where there is one (mnist1d, torchvision datasets), else a
    fixed 20% of the data. Validation is `cfg.val_fraction` of the rest, carved with `cfg.seed`; with a
    fraction of 0 the validation split *is* the test split (see `Dataset`).
    """
    src = source(cfg.name)(cfg)
    x, y = src.x, src.y  # indexed before conversion to float: uint8 images stay small until split
    if src.x_test is None or src.y_test is None:
        keep, held = _carve(len(y), TEST_FRACTION, TEST_SEED)
        test = Split(x[held], y[held])
        x, y = x[keep], y[keep]
    else:
        test = Split(src.x_test, src.y_test.clone())
    val: Split | None = None
    if cfg.val_fraction > 0:
        keep, held = _carve(len(y), cfg.val_fraction, cfg.seed)
        train, val = Split(x[keep], y[keep]), Split(x[held], y[held])
    else:
        train = Split(x, y.clone())
    mean, std = _channel_stats(train.x.float())

    def norm(s: Split) -> Split:  # out of place: the cached source is never modified
        return Split((s.x.float() - mean) / std, s.y)

    train, test = norm(train), norm(test)
    val = test if val is None else norm(val)
    data = Dataset(name=cfg.name, input_shape=tuple(train.x.shape[1:]), num_classes=src.num_classes,
                   train=train, val=val, test=test, augment=cfg.augment and src.augment)
    return data.to(device)


# -- augmentation ---------------------------------------------------------------------------------


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and random crop of the 4-pixel zero-padded image, for a whole batch at once.

    x: (B, C, H, W) on any device. The random draws come from `generator` (CPU or on x's device), so a
    batch is augmented identically whenever the generator is seeded identically. Each example is flipped
    with probability 1/2 and shifted by (dy, dx) uniform in [-4, 4]^2, the vacated border filled with 0.
    """
    if x.dim() != 4:
        raise ValueError(f"augment_batch needs images (B, C, H, W), got shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    dev = generator.device
    flip = (torch.rand(b, generator=generator, device=dev) < 0.5).to(x.device)
    dy, dx = torch.randint(0, 2 * CROP_PAD + 1, (2, b), generator=generator, device=dev).to(x.device)
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (CROP_PAD,) * 4).permute(0, 2, 3, 1)  # (B, H+8, W+8, C): gather rows and columns
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded[batch, rows, cols].permute(0, 3, 1, 2).contiguous()  # (B, H, W, C) -> (B, C, H, W)
