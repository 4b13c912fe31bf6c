"""Accuracy against sparsity for one sweep: a PNG on disk and an artifact of the sweep's parent run.

One colour and marker per scorer; the Pareto front over (val_score, sparsity) is drawn as a step line.
Drawn with matplotlib's Agg canvas directly (no pyplot, no global backend switch), so it works on a
head node without a display and never touches other code's figures.

Example:
    >>> plot_sweep("digits", "sqlite:///runs/mlflow.db")   # -> runs/plots/digits.png
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from search.results.query import (
    TicketRecord,
    client_for,
    default_tracking_uri,
    experiment_id,
    parent_run,
    sweep_tickets,
    tracking_root,
)
from search.sweep.objectives import pareto_front
from search.tracking import schema as S
from trainables.config import ConfigError
from trainables.tasks.registry import score_meaning

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def safe_name(name: str) -> str:
    """A file name from a sweep name: only letters, digits, `_ . -`, never starting with a dot."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "sweep"


def default_path(sweep: str, tracking_uri: str) -> Path:
    return tracking_root(tracking_uri) / S.PLOT_DIR / f"{safe_name(sweep)}.png"


def draw(records: list[TicketRecord], title: str, out: Path) -> None:
    """Scatter every ticket by scorer, the Pareto front as a step line; write a PNG to `out`."""
    fig = Figure(figsize=(7, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    meanings = {score_meaning(r.flat.get("data.name", "")) for r in records}
    scale = 100 if meanings <= {"accuracy"} else 1  # accuracy in percent; perplexity and return as they are
    for i, scorer in enumerate(sorted({r.scorer for r in records})):
        mine = [r for r in records if r.scorer == scorer]
        ax.scatter([100 * r.sparsity for r in mine], [scale * r.val_score for r in mine],
                   marker=MARKERS[i % len(MARKERS)], color=f"C{i}", label=scorer, alpha=0.8)
    front = pareto_front(records)
    if front:
        # "pre": between two front points the best score reachable at that sparsity or more is the
        # sparser point's, so the line drops at each point and runs level to the next.
        ax.step([100 * r.sparsity for r in front], [scale * r.val_score for r in front], where="pre",
                color="black", linewidth=1.2, label="Pareto front")
    ax.set_xlabel("sparsity (% of prunable weights removed)")
    ax.set_ylabel("validation score (%)" if scale == 100 else f"validation score ({', '.join(sorted(meanings))})")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(title="scorer", fontsize="small")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(out), format="png")


def plot_sweep(sweep: str, tracking_uri: str | None = None, out: str | Path | None = None) -> Path | None:
    """Draw the sweep's tickets, write the PNG (default `<tracking root>/plots/<sweep>.png`) and log it
    to the parent run as `plots/accuracy_vs_sparsity.png` (tracking/schema.py). None when the sweep has no
    ticket runs yet."""
    uri = tracking_uri or default_tracking_uri()
    records = sweep_tickets(uri, sweep)
    if not records:
        return None
    path = Path(out) if out else default_path(sweep, uri)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"--out: {path} should end in .png")
    client = client_for(uri)
    parent = parent_run(client, experiment_id(client, sweep))
    if parent is None:
        raise ConfigError(f"sweep '{sweep}' has no parent run (tags.kind = 'sweep') to log the plot to")
    draw(records, f"{sweep}: {len(records)} tickets", path)
    with tempfile.TemporaryDirectory(prefix="ticket-plot-") as tmp:
        named = Path(tmp) / S.PLOT_ARTIFACT
        shutil.copyfile(path, named)
        client.log_artifact(parent.info.run_id, str(named), S.PLOT_DIR)
    return path
