"""Datasets as normalised tensors on the training device: loading, splitting and augmentation.

This module owns every classification dataset behind the `data.*` keys (DESIGN.md section 4; the text
corpus `pydoc` is corpus.py's, `gym:<EnvId>` environments envs.py's): where its examples come from,
how the train/validation/test splits are carved, how inputs are normalised, and the tensor-only flip+crop
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
import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from trainables.config import ConfigError, DataConfig, parse_shape

TEST_FRACTION = 0.2  # digits and synthetic have no official test set: hold out this fraction
TEST_SEED = 0  # fixed, so the test set does not move when data.seed changes the validation split
SYNTHETIC_SEED = 0  # synthetic data is one fixed dataset per (shape, classes, size)
CROP_PAD = 4  # pixels of zero padding around an image before its random crop (the CIFAR standard)
AUGMENTED = ("cifar10", "cifar100")  # flips suit natural images, not digits (SVHN, MNIST)


class DatasetMissing(ConfigError):
    """A torchvision dataset is not on disk; the message names the folder and the keys to set."""


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


class _Source(NamedTuple):
    """Raw examples as a loader returns them: inputs (N, *shape) in any numeric dtype, int64 labels."""

    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor | None  # None: no official test set, carve TEST_FRACTION of x
    y_test: torch.Tensor | None
    num_classes: int


# -- sources: every loader below is cached, so a second `load` in one process costs only the split ---


@functools.lru_cache(maxsize=1)
def _digits() -> _Source:
    from sklearn.datasets import load_digits  # imported late: scikit-learn is slow to import

    d = load_digits()  # ships with scikit-learn: 1797 images of 8x8 pixels valued 0..16
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1)
    return _Source(x, torch.tensor(d.target, dtype=torch.int64), None, None, 10)


@functools.lru_cache(maxsize=1)
def _mnist1d() -> _Source:
    # make_dataset generates the published dataset offline (about 2 s); get_dataset would try the network.
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())
    x, x_test = (torch.tensor(d[k], dtype=torch.float32) for k in ("x", "x_test"))
    y, y_test = (torch.tensor(d[k], dtype=torch.int64) for k in ("y", "y_test"))
    return _Source(x, y, x_test, y_test, 10)


@functools.lru_cache(maxsize=4)
def _synthetic(shape: tuple[int, ...], num_classes: int, size: int) -> _Source:
    """Gaussian classes: a random mean per class plus unit noise, balanced, from a fixed seed.

    Mean entries have scale 1.25 / dim**0.25 so that a linear model trained on a few thousand examples
    reaches roughly 80-100% accuracy for 40 to 3072 input features: learnable, but not trivially.
    """
    g = torch.Generator().manual_seed(SYNTHETIC_SEED)
    dim = math.prod(shape)
    means = torch.randn(num_classes, dim, generator=g) * (1.25 * dim**-0.25)
    y = torch.arange(size) % num_classes
    x = means[y] + torch.randn(size, dim, generator=g)
    return _Source(x.view(size, *shape), y, None, None, num_classes)


@dataclass(frozen=True)
class _Vision:
    """How to read one torchvision dataset from `data.root` with torchvision's own class."""

    cls: str  # class name in torchvision.datasets
    folder: str  # where that class looks for its files, relative to data.root ("" = root itself)
    layout: str  # axis order of the class's `.data` array: NHW, NHWC or NCHW
    num_classes: int


VISION: dict[str, _Vision] = {
    "mnist": _Vision("MNIST", "MNIST/raw", "NHW", 10),
    "fashion_mnist": _Vision("FashionMNIST", "FashionMNIST/raw", "NHW", 10),
    "cifar10": _Vision("CIFAR10", "cifar-10-batches-py", "NHWC", 10),
    "cifar100": _Vision("CIFAR100", "cifar-100-python", "NHWC", 100),
    "svhn": _Vision("SVHN", "", "NCHW", 10),
}
_TO_NCHW: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "NHW": lambda t: t.unsqueeze(1),
    "NHWC": lambda t: t.permute(0, 3, 1, 2),
    "NCHW": lambda t: t,
}


def _read_vision(name: str, root: str, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One official split as (uint8 NCHW images, int64 labels), read through the arrays, not per item."""
    import torchvision.datasets  # imported late: workers on vector data never pay for it

    spec = VISION[name]
    cls = getattr(torchvision.datasets, spec.cls)
    split = {"split": "train" if train else "test"} if spec.cls == "SVHN" else {"train": train}
    try:
        ds = cls(root, download=download, **split)
    except RuntimeError as err:  # torchvision: "Dataset not found [or corrupted]. You can use download=True"
        if "not found" not in str(err):
            raise
        where = os.path.normpath(os.path.join(root, spec.folder))
        raise DatasetMissing(f"data.name={name}: no dataset (or a corrupted one) at {where}; put it there, "
                             f"set data.root to its folder, or set data.download=true") from err
    labels = ds.labels if spec.cls == "SVHN" else ds.targets  # SVHN already maps its label 10 to 0
    x = _TO_NCHW[spec.layout](torch.as_tensor(np.asarray(ds.data)))
    return x.contiguous(), torch.as_tensor(np.asarray(labels), dtype=torch.int64)


@functools.lru_cache(maxsize=2)
def _vision(name: str, root: str, download: bool) -> _Source:
    x, y = _read_vision(name, root, True, download)
    x_test, y_test = _read_vision(name, root, False, download)
    return _Source(x, y, x_test, y_test, VISION[name].num_classes)


def _vision_loader(name: str) -> Callable[[DataConfig], _Source]:
    def load_vision(cfg: DataConfig) -> _Source:  # an absolute root: the cache key and the error message
        return _vision(name, os.path.abspath(os.path.expanduser(cfg.root)), cfg.download)

    return load_vision


SOURCES: dict[str, Callable[[DataConfig], _Source]] = {
    "digits": lambda cfg: _digits(),
    "mnist1d": lambda cfg: _mnist1d(),
    "synthetic": lambda cfg: _synthetic(parse_shape(cfg.input_shape), cfg.num_classes, cfg.size),
    **{n: _vision_loader(n) for n in VISION},
}


def source(name: str) -> Callable[[DataConfig], _Source]:
    """The loader for `data.name`; an unknown name raises ConfigError listing the valid ones."""
    if name not in SOURCES:
        raise ConfigError(f"data.name: unknown value '{name}'; valid choices: {', '.join(SOURCES)}")
    return SOURCES[name]


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
                   train=train, val=val, test=test, augment=cfg.augment and cfg.name in AUGMENTED)
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
