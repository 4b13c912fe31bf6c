"""Mask files: safetensors, bit-packed to about one bit per weight, written atomically, never pickled.

`write_atomically` is the engine's one way to write a file under its final name (masks, checkpoints,
results.json): a temporary name in the same folder, fsync, rename.

Each layer is stored as a flat uint8 tensor from `numpy.packbits` (8 weights per byte, big-endian bit
order) under its parameter name; the shapes, in layer order, sit in the safetensors metadata as JSON under
`mask_shapes`. Callers' own string metadata (dataset, density, ...) travels beside it. Loading validates
everything and raises `MaskFileError` with one line; it never unpickles, so a file from a stranger is safe.

Example:
    >>> save({"fc.weight": torch.ones(3, 4, dtype=torch.bool)}, "mask.safetensors", {"level": "2"})
    >>> load("mask.safetensors")["fc.weight"].shape, load_metadata("mask.safetensors")
    (torch.Size([3, 4]), {'level': '2'})
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save as save_bytes

from trainables.pruning.masks import Mask
from trainables.typed import ConfigError

# Reserved metadata keys; everything else in the metadata belongs to the caller.
SHAPES_KEY = "mask_shapes"
FORMAT_KEY = "mask_format"
FORMAT = "packbits-v1"


class MaskFileError(ConfigError):
    """A mask file that is not a valid bit-packed mask; the message is one line naming the file."""


def save(mask: Mask, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write `mask` to `path` atomically: no partial file ever carries the final name."""
    extra = dict(metadata or {})
    for key, value in extra.items():
        if key in (SHAPES_KEY, FORMAT_KEY) or not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"metadata must map str to str without the reserved keys; bad key {key!r}")
    packed = {name: np.packbits(m.detach().to("cpu", torch.bool).reshape(-1).numpy())
              for name, m in mask.items()}
    shapes = {name: list(m.shape) for name, m in mask.items()}
    blob = save_bytes(packed, metadata={**extra, SHAPES_KEY: json.dumps(shapes), FORMAT_KEY: FORMAT})
    write_atomically(Path(path), blob)


def write_atomically(path: Path, blob: bytes, what: str = "mask") -> None:
    """Write `blob` to `path` under a temporary name, then rename: no partial file carries the real name.
    An OSError (a full disk: ENOSPC) keeps its errno and names `what` and the file."""
    # The temporary file sits in the destination folder so os.replace is a same-filesystem rename.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it visible under its name
        os.replace(tmp, path)
    except OSError as e:  # a full disk says ENOSPC without naming the file: name it
        Path(tmp).unlink(missing_ok=True)
        raise OSError(e.errno, f"{e.strerror or e} (writing {what} {path})") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fail(path: Path, why: Any) -> MaskFileError:
    return MaskFileError(f"{path}: not a valid mask file ({' '.join(str(why).split())})")


def _read(path: Path, *, tensors: bool = True) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata, with any parse failure of the container turned into MaskFileError."""
    try:
        with safe_open(str(path), framework="np") as f:
            names = list(f.keys()) if tensors else []
            return {k: f.get_tensor(k) for k in names}, dict(f.metadata() or {})
    except FileNotFoundError:
        raise MaskFileError(f"{path}: no such mask file") from None
    except Exception as err:  # safetensors raises its own error types for bad headers and truncation
        raise _fail(path, err) from None


def _shapes(path: Path, meta: dict[str, str]) -> dict[str, tuple[int, ...]]:
    if meta.get(FORMAT_KEY) != FORMAT or SHAPES_KEY not in meta:
        raise _fail(path, f"missing '{FORMAT_KEY}' or '{SHAPES_KEY}' metadata")
    try:
        raw = json.loads(meta[SHAPES_KEY])
        shapes = {str(n): tuple(int(d) for d in s) for n, s in raw.items()}
    except (ValueError, TypeError, AttributeError) as err:
        raise _fail(path, f"unreadable '{SHAPES_KEY}' metadata: {err}") from None
    if any(d < 0 for s in shapes.values() for d in s):
        raise _fail(path, "negative dimension in shape metadata")
    return shapes


def _unpack(path: Path, name: str, packed: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    numel = math.prod(shape)
    if packed.dtype != np.uint8 or packed.ndim != 1 or packed.size != (numel + 7) // 8:
        raise _fail(path, f"layer '{name}' holds {packed.size} bytes of {packed.dtype}, "
                          f"shape {list(shape)} needs {(numel + 7) // 8} bytes of uint8")
    bits = np.unpackbits(packed, count=numel).astype(bool)
    return torch.from_numpy(bits).reshape(shape)


def load(path: str | Path) -> Mask:
    """Read a mask written by `save`: bool CPU tensors by name, in the saved layer order."""
    path = Path(path)
    tensors, meta = _read(path)
    shapes = _shapes(path, meta)
    if tensors.keys() != shapes.keys():
        raise _fail(path, f"layers and shape metadata disagree on {sorted(tensors.keys() ^ shapes.keys())}")
    return {name: _unpack(path, name, tensors[name], shape) for name, shape in shapes.items()}


def load_metadata(path: str | Path) -> dict[str, str]:
    """The caller's metadata saved with the mask (without this module's reserved keys)."""
    path = Path(path)
    _, meta = _read(path, tensors=False)
    _shapes(path, meta)
    return {k: v for k, v in meta.items() if k not in (SHAPES_KEY, FORMAT_KEY)}


def load_init_mask(path: str) -> Mask:
    """Read a transferred ticket's mask, `prune.init_mask` (a file; `runs:/` URIs are resolved by search/
    first)."""
    if "://" in path or path.startswith("runs:/"):
        raise ConfigError(f"prune.init_mask: '{path}' is a URI; resolve it with the search service first")
    return load(path)
