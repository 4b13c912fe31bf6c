"""Comparing two tickets' masks: per-layer densities and normalised Hamming distance (`ticket-search compare`)."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from search.results.artifacts import download
from search.results.query import client_for, get_ticket_run
from trainables.io import maskio
from trainables.paths import MASK_FILE
from trainables.pruning import masks as mk


@dataclass(frozen=True)
class LayerOverlap:
    """One layer of two masks: densities (None where absent), Hamming distance (None if not comparable)."""

    name: str
    density_a: float | None
    density_b: float | None
    hamming: float | None
    note: str = ""


@dataclass(frozen=True)
class MaskComparison:
    run_a: str
    run_b: str
    density_a: float
    density_b: float
    hamming: float | None  # over the layers both masks have with equal shapes, weighted by size
    layers: list[LayerOverlap]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _shape_text(shape: Any) -> str:
    return "x".join(str(d) for d in shape) or "scalar"


def compare_masks(a: Mapping[str, Any], b: Mapping[str, Any], run_a: str = "a", run_b: str = "b") -> MaskComparison:
    """Per-layer densities and normalised Hamming distance of two masks, tolerating layer mismatches."""
    da, db = mk.layer_density(dict(a)), mk.layer_density(dict(b))
    shared: mk.Mask = {}
    layers = []
    for name in [*a, *(n for n in b if n not in a)]:
        if name not in b or name not in a:
            layers.append(LayerOverlap(name, da.get(name), db.get(name), None,
                                       f"only in {run_a if name in a else run_b}"))
        elif a[name].shape != b[name].shape:
            layers.append(LayerOverlap(name, da[name], db[name], None,
                                       f"shapes differ: {_shape_text(a[name].shape)} vs "
                                       f"{_shape_text(b[name].shape)}"))
        else:
            shared[name] = a[name]
            layers.append(LayerOverlap(name, da[name], db[name], mk.hamming({name: a[name]}, {name: b[name]})))
    overall = mk.hamming(shared, {n: b[n] for n in shared}) if shared else None
    return MaskComparison(run_a, run_b, mk.density(dict(a)), mk.density(dict(b)), overall, layers)


def compare_tickets(run_a: str, run_b: str, tracking_uri: str | None = None) -> MaskComparison:
    """Compare the masks of two ticket runs."""
    client = client_for(tracking_uri)
    loaded = []
    with tempfile.TemporaryDirectory(prefix="ticket-compare-") as tmp:
        for i, run_id in enumerate((run_a, run_b)):
            get_ticket_run(client, run_id)
            loaded.append(maskio.load(download(client, run_id, MASK_FILE, Path(tmp) / str(i))))
    return compare_masks(loaded[0], loaded[1], run_a, run_b)
