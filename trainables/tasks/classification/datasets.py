"""The classification datasets behind `data.name`: where each one's examples come from, as a registry.

A dataset is a loader function `(DataConfig) -> Source` plus one line in `SOURCES` (a torchvision dataset:
one line in `VISION`); the names register themselves as `data.name` values through the classification
family (trainables/tasks/classification/family.py). `digits` ships with scikit-learn and `mnist1d` is
generated offline, so neither needs a download; torchvision datasets are read from `data.root` and
downloaded only with `data.download=true`. Every loader is cached, so a second load in one process costs
only the split (trainables/tasks/classification/data.py).

Example:
    >>> from trainables.config import DataConfig
    >>> src = source("digits")(DataConfig())
    >>> tuple(src.x.shape), src.num_classes
    ((1797, 1, 8, 8), 10)
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from trainables.config import DataConfig
from trainables.typed import ConfigError, lookup

SYNTHETIC_SEED = 0  # synthetic data is one fixed dataset per (shape, classes, size)


class DatasetMissing(ConfigError):
    """A torchvision dataset is not on disk; the message names the folder and the keys to set."""


def parse_shape(text: str) -> tuple[int, ...]:
    """`3x32x32` -> (3, 32, 32); `40` -> (40,)."""
    try:
        shape = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or any(p <= 0 for p in shape) or len(shape) > 3:
        raise ConfigError(f"data.input_shape: cannot read '{text}'; write it like 3x32x32 or 40")
    return shape


class Source(NamedTuple):
    """Raw examples as a loader returns them: inputs (N, *shape) in any numeric dtype, int64 labels."""

    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor | None  # None: no official test set, carve TEST_FRACTION of x
    y_test: torch.Tensor | None
    num_classes: int
    augment: bool = False  # flip+crop suits natural images (CIFAR), not digits or house numbers


@functools.lru_cache(maxsize=1)
def _digits() -> Source:
    from sklearn.datasets import load_digits  # imported late: scikit-learn is slow to import

    d = load_digits()  # ships with scikit-learn: 1797 images of 8x8 pixels valued 0..16
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1)
    return Source(x, torch.tensor(d.target, dtype=torch.int64), None, None, 10)


@functools.lru_cache(maxsize=1)
def _mnist1d() -> Source:
    # make_dataset generates the published dataset offline (about 2 s); get_dataset would try the network.
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())
    x, x_test = (torch.tensor(d[k], dtype=torch.float32) for k in ("x", "x_test"))
    y, y_test = (torch.tensor(d[k], dtype=torch.int64) for k in ("y", "y_test"))
    return Source(x, y, x_test, y_test, 10)


@functools.lru_cache(maxsize=4)
def _synthetic(shape: tuple[int, ...], num_classes: int, size: int) -> Source:
    """Gaussian classes: a random mean per class plus unit noise, balanced, from a fixed seed.

    Mean entries have scale 1.25 / dim**0.25 so that a linear model trained on a few thousand examples
    reaches roughly 80-100% accuracy for 40 to 3072 input features: learnable, but not trivially.
    """
    g = torch.Generator().manual_seed(SYNTHETIC_SEED)
    dim = math.prod(shape)
    means = torch.randn(num_classes, dim, generator=g) * (1.25 * dim**-0.25)
    y = torch.arange(size) % num_classes
    x = means[y] + torch.randn(size, dim, generator=g)
    return Source(x.view(size, *shape), y, None, None, num_classes)


@dataclass(frozen=True)
class _Vision:
    """How to read one torchvision dataset from `data.root` with torchvision's own class."""

    cls: str  # class name in torchvision.datasets
    folder: str  # where that class looks for its files, relative to data.root ("" = root itself)
    layout: str  # axis order of the class's `.data` array: NHW, NHWC or NCHW
    shape: str  # one image as data.input_shape writes it (a smoke sweep stands in synthetic data of it)
    num_classes: int
    augment: bool = False  # natural images: data.augment applies flip+crop


VISION: dict[str, _Vision] = {
    "mnist": _Vision("MNIST", "MNIST/raw", "NHW", "1x28x28", 10),
    "fashion_mnist": _Vision("FashionMNIST", "FashionMNIST/raw", "NHW", "1x28x28", 10),
    "cifar10": _Vision("CIFAR10", "cifar-10-batches-py", "NHWC", "3x32x32", 10, augment=True),
    "cifar100": _Vision("CIFAR100", "cifar-100-python", "NHWC", "3x32x32", 100, augment=True),
    "svhn": _Vision("SVHN", "", "NCHW", "3x32x32", 10),
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
def _vision(name: str, root: str, download: bool) -> Source:
    x, y = _read_vision(name, root, True, download)
    x_test, y_test = _read_vision(name, root, False, download)
    spec = VISION[name]
    return Source(x, y, x_test, y_test, spec.num_classes, spec.augment)


def _vision_loader(name: str) -> Callable[[DataConfig], Source]:
    def load_vision(cfg: DataConfig) -> Source:  # an absolute root: the cache key and the error message
        return _vision(name, os.path.abspath(os.path.expanduser(cfg.root)), cfg.download)

    return load_vision


SOURCES: dict[str, Callable[[DataConfig], Source]] = {
    "digits": lambda cfg: _digits(),
    "mnist1d": lambda cfg: _mnist1d(),
    "synthetic": lambda cfg: _synthetic(parse_shape(cfg.input_shape), cfg.num_classes, cfg.size),
    **{n: _vision_loader(n) for n in VISION},
}


def source(name: str) -> Callable[[DataConfig], Source]:
    """The loader for `data.name`; an unknown name raises ConfigError listing the valid ones."""
    return lookup(SOURCES, "data.name", name)
