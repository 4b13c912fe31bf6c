"""One record shape for a finished level, and the on-disk layout of `ticket-search run --out DIR`.

`DIR/results.json` = {"config": <flat keys>, "levels": [<LevelResult without masks>], "early_bird_epoch"}
`DIR/masks/level_NN.safetensors` = the ticket mask of level NN (replicate 0; `level_NN_rep<R>` others);
the names are trainables/paths.py's.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from trainables import paths, stats
from trainables.io import maskio
from trainables.pruning.masks import Mask, density
from trainables.tasks.base import Task
from trainables.training.members import TICKET, Member


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
    """What one level of a ticket search produced (ticket metrics are means over replicates; `stats` and
    `margins` carry their spread, see trainables/stats.py)."""

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
    controls: dict[str, dict[str, float]] = field(default_factory=dict)  # means, and each score's stats
    advantage: dict[str, float] = field(default_factory=dict)  # ticket val_acc - control val_acc
    # Over replicates (trainables/stats.py): `<score>_mean/_std/_n/_ci95` of every score of the ticket
    stats: dict[str, float] = field(default_factory=dict)
    # control -> paired margins, replicate r's ticket minus replicate r's control: `val_score_mean` ...
    margins: dict[str, dict[str, float]] = field(default_factory=dict)
    latency_ms: float = math.nan  # the exported ticket's inference latency, when a sweep measures it (io/latency.py)
    reused_stage: bool = False  # loaded from the stage store, not trained by this trial (trainables/staged.py)
    members: list[MemberResult] = field(default_factory=list)
    masks: list[Mask] = field(default_factory=list, repr=False)  # one per replicate
    # prune.instability: {"val", "test": error barriers, means over replicates; "val_per_replicate",
    # "test_per_replicate"; "alpha", "val_error", "test_error": replicate 0's path} (training/instability.py)
    instability: dict[str, Any] = field(default_factory=dict)
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


def member_result(m: Member, task: Task) -> MemberResult:
    """A trained member's final metrics: validation from its last evaluation, test evaluated now."""
    test = task.evaluate(m.model, "test")
    hist = m.history or [{"iteration": 0, "val_loss": math.nan, "val_acc": math.nan, "val_score": math.nan}]
    last = hist[-1]
    losses = [h["val_loss"] for h in hist]
    best = min(range(len(hist)), key=lambda i: (math.isnan(losses[i]), losses[i]))
    return MemberResult(
        member=m.name, replicate=m.replicate, density=density(m.mask) if m.mask else 1.0,
        val_acc=last["val_acc"], test_acc=test["acc"], val_loss=last["val_loss"],
        test_loss=test["loss"], val_score=last["val_score"], test_score=test["score"],
        best_val_acc=max(h["val_acc"] for h in hist), early_stop_iter=int(hist[best]["iteration"]))


def instability_metrics(result: LevelResult) -> dict[str, float]:
    """`instability_val`/`instability_test` of a level that measured them (prune.instability), else none."""
    if not result.instability:
        return {}
    return {"instability_val": float(result.instability["val"]),
            "instability_test": float(result.instability["test"])}


def summarise(level: int, members: list[MemberResult], masks: list[Mask], layer_density: dict[str, float],
              collapsed_layers: list[str], epochs: float, iterations: int, wall_s: float) -> LevelResult:
    """Aggregate member results: ticket metrics as means over replicates with their statistics, controls
    likewise, and each control's margin paired per replicate."""
    tickets = sorted((m for m in members if m.member == TICKET), key=lambda m: m.replicate)

    def values(rows: list[MemberResult], key: str) -> list[float]:
        return [float(getattr(r, key)) for r in rows]

    def mean(rows: list[MemberResult], key: str) -> float:
        return stats.summary(values(rows, key)).mean

    def scored(rows: list[MemberResult]) -> dict[str, float]:
        out: dict[str, float] = {}
        for key in stats.SCORES:
            out.update(stats.summary(values(rows, key)).flat(key))
        return out

    controls: dict[str, dict[str, float]] = {}
    margins: dict[str, dict[str, float]] = {}
    by_rep = {t.replicate: t for t in tickets}
    for name in dict.fromkeys(m.member for m in members if m.member != TICKET):
        rows = sorted((m for m in members if m.member == name), key=lambda m: m.replicate)
        controls[name] = {k: mean(rows, k) for k in ("val_acc", "test_acc", "val_score", "test_score",
                                                     "density")}
        controls[name].update({k: v for k, v in scored(rows).items() if k.split("_")[1] == "score"})
        pairs = [(by_rep[c.replicate], c) for c in rows if c.replicate in by_rep]
        margins[name] = {}
        for key in ("val_score", "test_score"):
            margins[name].update(stats.paired([getattr(t, key) for t, _ in pairs],
                                              [getattr(c, key) for _, c in pairs]).flat(key))
    ticket_val = mean(tickets, "val_acc")
    summary = scored(tickets)
    return LevelResult(
        level=level, density=mean(tickets, "density"), layer_density=layer_density,
        val_acc=ticket_val, test_acc=mean(tickets, "test_acc"), val_loss=mean(tickets, "val_loss"),
        test_loss=mean(tickets, "test_loss"), val_score=mean(tickets, "val_score"),
        test_score=mean(tickets, "test_score"), best_val_acc=mean(tickets, "best_val_acc"),
        val_acc_std=summary.get("val_acc_std", 0.0), test_acc_std=summary.get("test_acc_std", 0.0),
        early_stop_iter=round(mean(tickets, "early_stop_iter")),
        collapsed=bool(collapsed_layers), collapsed_layers=collapsed_layers,
        epochs=epochs, iterations=iterations, wall_s=wall_s, controls=controls,
        advantage={c: ticket_val - v["val_acc"] for c, v in controls.items()},
        stats=summary, margins=margins, members=members, masks=masks)


def mask_information(result: LevelResult) -> float:
    """Whether the ticket's mask carries per-weight information: 1.0 when its test-score margin over `shuffle`
    (paired per replicate) has a 95% interval above 0, 0.0 when the interval reaches 0 or below, NaN without
    `shuffle` or with one replicate (no interval, no verdict)."""
    margin = stats.Summary.from_flat(result.margins.get("shuffle", {}), "test_score")
    if margin is None or margin.ci95 is None:
        return math.nan
    return 1.0 if margin.low > 0 else 0.0


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
