"""Datasets: shapes, split sizes and disjointness, normalisation, seeds, augmentation, and the torchvision
datasets read from tiny files written here in their real on-disk formats (nothing is downloaded)."""

from __future__ import annotations

import hashlib
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision.datasets as tvd

from trainables.config import ConfigError, DataConfig
from trainables.tasks.classification import data, datasets


def channel_means(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(0, 1).flatten(1).mean(1) if x.dim() > 2 else x.mean().reshape(1)


def channel_stds(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(0, 1).flatten(1).std(1) if x.dim() > 2 else x.std().reshape(1)


def test_digits_shapes_and_split_sizes():
    d = data.load(DataConfig(name="digits", val_fraction=0.1))
    assert (d.input_shape, d.num_classes, d.augment) == ((1, 8, 8), 10, False)
    assert len(d.test) == round(0.2 * 1797)  # fixed 20% test split
    assert len(d.val) == round(0.1 * (1797 - len(d.test)))
    assert len(d.train) + len(d.val) + len(d.test) == 1797
    assert d.train.x.shape == (len(d.train), 1, 8, 8) and d.train.x.dtype == torch.float32
    assert d.train.y.dtype == torch.int64 and set(d.train.y.tolist()) == set(range(10))


def test_mnist1d_uses_its_official_test_set():
    d = data.load(DataConfig(name="mnist1d", val_fraction=0.25))
    assert (d.input_shape, d.num_classes) == ((40,), 10)
    assert (len(d.train), len(d.val), len(d.test)) == (3000, 1000, 1000)


def test_synthetic_splits_are_disjoint_and_cover_the_data():
    d = data.load(DataConfig(name="synthetic", input_shape="3x4x4", num_classes=5, size=300))
    assert (d.input_shape, d.num_classes) == ((3, 4, 4), 5)
    rows = torch.cat([d.train.x, d.val.x, d.test.x]).flatten(1)
    assert len(rows) == 300 and len(torch.unique(rows, dim=0)) == 300  # Gaussian noise: no duplicates


def test_synthetic_is_learnable_by_nearest_class_mean():
    d = data.load(DataConfig(name="synthetic", input_shape="40", num_classes=10, size=2000))
    means = torch.stack([d.train.x[d.train.y == c].mean(0) for c in range(10)])
    predicted = torch.cdist(d.test.x, means).argmin(1)
    assert (predicted == d.test.y).float().mean() > 0.6  # chance is 0.1


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_normalised_with_training_statistics_per_channel(name):
    d = data.load(DataConfig(name=name, input_shape="2x6x6"))
    torch.testing.assert_close(channel_means(d.train.x), torch.zeros(d.input_shape[0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(channel_stds(d.train.x), torch.ones(d.input_shape[0]), atol=1e-3, rtol=0)
    assert channel_means(d.test.x).abs().max() > 1e-4  # test statistics are not used


def test_split_is_a_function_of_the_seed():
    cfg = DataConfig(name="digits", seed=3)
    a, b = data.load(cfg), data.load(cfg)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)
    c = data.load(DataConfig(name="digits", seed=4))
    assert not torch.equal(a.val.x, c.val.x)
    assert torch.equal(a.test.y, c.test.y)  # the test split does not move with data.seed
    assert a.train.x is not b.train.x  # each load has its own tensors; the cache is not shared out


def test_zero_val_fraction_validates_on_the_test_split():
    d = data.load(DataConfig(name="digits", val_fraction=0.0))
    assert d.val is d.test and len(d.train) + len(d.test) == 1797
    moved = d.to("meta")
    assert moved.val is moved.test and moved.train.x.device.type == "meta"


def test_load_puts_every_split_on_the_device():
    d = data.load(DataConfig(name="synthetic", size=50), device="meta")
    assert {s.x.device.type for s in (d.train, d.val, d.test)} == {"meta"}


def test_tiny_val_fraction_keeps_one_example():
    assert len(data.load(DataConfig(name="synthetic", size=20, val_fraction=1e-6)).val) == 1


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(ConfigError, match=r"data.name: unknown value 'imagenet'; valid choices: digits"):
        data.load(DataConfig(name="imagenet"))


# -- augmentation ---------------------------------------------------------------------------------


def transforms(image: torch.Tensor) -> dict[tuple[bool, int, int], torch.Tensor]:
    """All 2 x 9 x 9 (flip, dy, dx) flips and 4-pixel shifts of one (C, H, W) image, zero-filled."""
    _, h, w = image.shape
    out = {}
    for flip in (False, True):
        padded = torch.nn.functional.pad(image.flip(2) if flip else image, (4, 4, 4, 4))
        for dy in range(9):
            for dx in range(9):
                out[flip, dy, dx] = padded[:, dy:dy + h, dx:dx + w]
    return out


def test_augment_batch_is_a_seeded_flip_and_crop_of_each_image():
    x = torch.randn(64, 3, 10, 12)
    a = data.augment_batch(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape
    assert torch.equal(a, data.augment_batch(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, data.augment_batch(x, torch.Generator().manual_seed(2)))
    drawn = []
    for image, out in zip(x, a, strict=True):  # each output is exactly one transform of its own input
        match = [t for t, img in transforms(image).items() if torch.equal(img, out)]
        assert len(match) == 1
        drawn.append(match[0])
    flips, dys, dxs = zip(*drawn, strict=True)
    assert set(flips) == {False, True} and len(set(dys)) > 5 and len(set(dxs)) > 5
    assert any(dy != dx for dy, dx in zip(dys, dxs, strict=True))  # independent shifts per axis


def test_augment_batch_rejects_vectors():
    with pytest.raises(ValueError, match=r"needs images \(B, C, H, W\)"):
        data.augment_batch(torch.zeros(4, 40), torch.Generator())


# -- torchvision datasets from tiny files in their real formats -------------------------------------


def pattern(n: int, h: int, w: int, c: int, seed: int) -> np.ndarray:
    """uint8 images (n, h, w, c), random but image 0: channel 0 rises down rows, channel 1 across columns."""
    imgs = np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)
    imgs[0, :, :, 0] = (np.arange(h) * 7)[:, None]
    if c > 1:
        imgs[0, :, :, 1] = (np.arange(w) * 7)[None, :]
    return imgs


def assert_layout(first: torch.Tensor) -> None:
    """Image 0 of `pattern`, loaded as (C, H, W): rows rise in channel 0, columns in channel 1."""
    assert (first[0, 1:, 0] > first[0, :-1, 0]).all() and (first[0, 0, 1:] == first[0, 0, 0]).all()
    if first.shape[0] > 1:
        assert (first[1, 0, 1:] > first[1, 0, :-1]).all() and (first[1, 1:, 0] == first[1, 0, 0]).all()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_idx(path: Path, array: np.ndarray) -> None:
    """The MNIST idx format: big-endian magic (0, 0, 0x08 = uint8, ndim), then each dimension, then bytes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_family_from_idx_files(tmp_path, name, folder):
    raw = tmp_path / folder / "raw"  # torchvision reads the unpacked files (it checks names, not md5)
    raw.mkdir(parents=True)
    for split, n in (("train", 30), ("t10k", 12)):
        write_idx(raw / f"{split}-images-idx3-ubyte", pattern(n, 28, 28, 1, n)[..., 0])
        write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    d = data.load(DataConfig(name=name, root=str(tmp_path), val_fraction=0.2))
    assert (d.input_shape, d.num_classes, d.augment) == ((1, 28, 28), 10, False)
    assert (len(d.train), len(d.val), len(d.test)) == (24, 6, 12)
    assert d.test.y.tolist() == [i % 10 for i in range(12)]  # official test set, in file order
    assert_layout(d.test.x[0])


def write_pickle(path: Path, obj: object) -> None:
    path.write_bytes(pickle.dumps(obj))


def cifar_batch(n: int, seed: int, label_key: str, classes: int) -> dict[str, object]:
    # CIFAR stores each image as 3072 bytes: the red plane, then green, then blue (CHW).
    flat = pattern(n, 32, 32, 3, seed).transpose(0, 3, 1, 2).reshape(n, 3072)
    return {"data": flat, label_key: [i % classes for i in range(n)]}


def patch_md5(monkeypatch, cls: type, folder: Path) -> None:
    """torchvision checks CIFAR files against the md5 sums of the real ones, held as class attributes.

    The files written here are tiny, so the test sets those attributes to their sums (undone after the
    test by monkeypatch); torchvision's own `check_integrity` still runs, unpatched.
    """
    monkeypatch.setattr(cls, "train_list", [[f, md5(folder / f)] for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[f, md5(folder / f)] for f, _ in cls.test_list])
    meta = cls.meta
    monkeypatch.setattr(cls, "meta", {**meta, "md5": md5(folder / meta["filename"])})


def test_cifar10_from_python_batches(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        write_pickle(folder / f"data_batch_{i}", cifar_batch(8, i, "labels", 10))
    write_pickle(folder / "test_batch", cifar_batch(10, 0, "labels", 10))
    write_pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    patch_md5(monkeypatch, tvd.CIFAR10, folder)
    d = data.load(DataConfig(name="cifar10", root=str(tmp_path), val_fraction=0.1))
    assert (d.input_shape, d.num_classes, d.augment) == ((3, 32, 32), 10, True)
    assert (len(d.train), len(d.val), len(d.test)) == (36, 4, 10)
    assert_layout(d.test.x[0])
    torch.testing.assert_close(channel_means(d.train.x), torch.zeros(3), atol=1e-4, rtol=0)
    assert not data.load(DataConfig(name="cifar10", root=str(tmp_path), augment=False)).augment


def test_cifar100_uses_fine_labels(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for file, n in (("train", 40), ("test", 10)):
        batch = cifar_batch(n, n, "fine_labels", 100)
        write_pickle(folder / file, {**batch, "coarse_labels": [0] * n})
    write_pickle(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    patch_md5(monkeypatch, tvd.CIFAR100, folder)
    d = data.load(DataConfig(name="cifar100", root=str(tmp_path)))
    assert (d.input_shape, d.num_classes, len(d.test)) == ((3, 32, 32), 100, 10)
    assert d.test.y.tolist() == list(range(10))
    assert_layout(d.test.x[0])


def test_svhn_from_mat_files(tmp_path, monkeypatch):
    for split, n in (("train", 20), ("test", 10)):
        path = tmp_path / f"{split}_32x32.mat"
        # SVHN's .mat layout: X is (H, W, C, N); y is (N, 1) with the digit 0 stored as label 10.
        scipy.io.savemat(path, {"X": pattern(n, 32, 32, 3, n).transpose(1, 2, 3, 0),
                                "y": (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)})
        url, file, _ = tvd.SVHN.split_list[split]
        monkeypatch.setitem(tvd.SVHN.split_list, split, [url, file, md5(path)])  # see patch_md5
    d = data.load(DataConfig(name="svhn", root=str(tmp_path)))
    assert (d.input_shape, d.num_classes, d.augment) == ((3, 32, 32), 10, False)
    assert d.test.y.tolist() == [(i + 1) % 10 for i in range(10)]  # label 10 read back as digit 0
    assert_layout(d.test.x[0])


@pytest.mark.parametrize(("name", "folder"), [("cifar10", "cifar-10-batches-py"), ("mnist", "MNIST/raw"),
                                              ("svhn", "")])
def test_missing_dataset_names_the_folder_and_the_keys(tmp_path, name, folder):
    where = re.escape(str(tmp_path / folder) if folder else str(tmp_path))
    message = rf"data.name={name}: no dataset .*at {where};.*data.download=true"
    with pytest.raises(datasets.DatasetMissing, match=message):
        data.load(DataConfig(name=name, root=str(tmp_path)))
    assert issubclass(datasets.DatasetMissing, ConfigError)
