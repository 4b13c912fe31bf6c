"""One record shape for a finished level, and the on-disk layout of `ticket-search run --out DIR`.

`DIR/results.json` = {"config": <flat keys>, "levels": [<LevelResult without masks>], "early_bird_epoch"}
`DIR/masks/level_NN.safetensors` = the ticket mask of level NN (replicate 0; `level_NN_rep<R>` others);
the names are trainables/paths.py's.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from trainables import paths
from trainables.io import maskio
from trainables.io.margins import paired_margin
from trainables.pruning.masks import Mask
from trainables.training.members import TICKET


@dataclass
class MemberResult:
    """Final metrics of one member (ticket, control or replicate) at one level."""

    member: str
    replicate: int
    density: float
    val_acc: float
    test_acc: float
    val_loss: float
    test_loss: float
    val_score: float
    test_score: float
    best_val_acc: float
    early_stop_iter: int


@dataclass
class LevelResult:
    """What one level of a ticket search produced (ticket metrics are means over replicates)."""

    level: int
    density: float
    layer_density: dict[str, float]
    val_acc: float
    test_acc: float
    val_loss: float
    test_loss: float
    val_score: float
    test_score: float
    best_val_acc: float
    val_acc_std: float
    test_acc_std: float
    early_stop_iter: int
    collapsed: bool
    collapsed_layers: list[str]
    epochs: float  # epochs trained at this level
    iterations: int  # iterations trained at this level
    wall_s: float
    controls: dict[str, dict[str, float]] = field(default_factory=dict)
    advantage: dict[str, float] = field(default_factory=dict)  # ticket val_acc - control val_acc
    # ticket minus control, paired per replicate: {"<control>": {"val_mean", "val_lo", "val_hi", "test_mean", ...}}
    margins: dict[str, dict[str, float]] = field(default_factory=dict)
    latency_ms: float = math.nan  # the exported ticket's inference latency, when a sweep measures it (io/latency.py)
    members: list[MemberResult] = field(default_factory=list)
    masks: list[Mask] = field(default_factory=list, repr=False)  # one per replicate
    # the trained ticket (replicate 0), masked weights packed to their kept positions (trainables/io/packing.py)
    weights: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def mask(self) -> Mask:
        return self.masks[0]

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def to_json(self) -> dict[str, Any]:
        d = asdict(replace(self, masks=[], weights={}))  # tensors stay out of JSON (and are not copied)
        d.pop("masks")
        d.pop("weights")
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LevelResult:
        d = dict(d)
        d["members"] = [MemberResult(**m) for m in d.get("members", [])]
        return cls(**d)


def summarise(level: int, members: list[MemberResult], masks: list[Mask], layer_density: dict[str, float],
              collapsed_layers: list[str], epochs: float, iterations: int, wall_s: float) -> LevelResult:
    """Aggregate member results: ticket metrics as mean/std over replicates, controls as means."""
    tickets = [m for m in members if m.member == TICKET]

    def mean(rows: list[MemberResult], key: str) -> float:
        return statistics.fmean(getattr(r, key) for r in rows)

    def std(rows: list[MemberResult], key: str) -> float:
        return statistics.pstdev([getattr(r, key) for r in rows]) if len(rows) > 1 else 0.0

    controls: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(m.member for m in members if m.member != TICKET):
        rows = [m for m in members if m.member == name]
        controls[name] = {k: mean(rows, k) for k in ("val_acc", "test_acc", "val_score", "test_score",
                                                     "density")}
    ticket_val = mean(tickets, "val_acc")
    return LevelResult(
        level=level, density=mean(tickets, "density"), layer_density=layer_density,
        val_acc=ticket_val, test_acc=mean(tickets, "test_acc"), val_loss=mean(tickets, "val_loss"),
        test_loss=mean(tickets, "test_loss"), val_score=mean(tickets, "val_score"),
        test_score=mean(tickets, "test_score"), best_val_acc=mean(tickets, "best_val_acc"),
        val_acc_std=std(tickets, "val_acc"), test_acc_std=std(tickets, "test_acc"),
        early_stop_iter=round(mean(tickets, "early_stop_iter")),
        collapsed=bool(collapsed_layers), collapsed_layers=collapsed_layers,
        epochs=epochs, iterations=iterations, wall_s=wall_s, controls=controls,
        advantage={c: ticket_val - v["val_acc"] for c, v in controls.items()},
        margins={c: control_margins(tickets, [m for m in members if m.member == c]) for c in controls},
        members=members, masks=masks)


def control_margins(tickets: list[MemberResult], control: list[MemberResult]) -> dict[str, float]:
    """Ticket minus control on val_score and test_score, paired by replicate, with 95% t intervals
    (trainables/io/margins.py; NaN bounds with one replicate)."""
    by_rep = {m.replicate: m for m in control}
    pairs = [(t, by_rep[t.replicate]) for t in tickets if t.replicate in by_rep]
    out: dict[str, float] = {"n": float(len(pairs))}
    for split in ("val", "test"):
        key = f"{split}_score"
        m = paired_margin([getattr(t, key) for t, _ in pairs], [getattr(c, key) for _, c in pairs])
        out.update({f"{split}_mean": m.mean, f"{split}_lo": m.lo, f"{split}_hi": m.hi})
    return out


def mask_information(result: LevelResult) -> float:
    """Whether the ticket's mask carries per-weight information: 1.0 when its test-score margin over `shuffle`
    has a 95% interval above 0, 0.0 when the interval reaches 0 or below, NaN without `shuffle` or with one
    replicate (no interval, no verdict)."""
    m = result.margins.get("shuffle")
    if not m or not m["n"] >= 2 or math.isnan(m["test_lo"]):
        return math.nan
    return 1.0 if m["test_lo"] > 0 else 0.0


def write_results(out: Path, config: dict[str, Any], levels: list[LevelResult],
                  early_bird_epoch: int | None) -> None:
    """Write results.json and every level's masks under `out`, each file atomically."""
    out.mkdir(parents=True, exist_ok=True)
    (out / paths.MASKS_DIR).mkdir(exist_ok=True)
    for lv in levels:
        for r, mask in enumerate(lv.masks):
            maskio.save(mask, out / paths.MASKS_DIR / paths.level_mask(lv.level, r),
                        {"level": str(lv.level), "replicate": str(r), "density": f"{lv.density:.6f}"})
    doc = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
           "levels": [lv.to_json() for lv in levels], "early_bird_epoch": early_bird_epoch}
    maskio.write_atomically(out / paths.RESULTS_JSON, json.dumps(doc, indent=2, allow_nan=True).encode(), "results")
