"""`ticket-search plot --kind instability`: how stable a sweep's tickets are, against rewind point and density.

Left: validation instability (the error barrier of training/instability.py) against the rewind iteration,
one line per pruning level. Right: against the percent of weights remaining on a log axis (100, 51, 26, ...),
one line per rewind iteration. The dashed line is the sweep's `[objective] max_instability` where it set
one, else the 2% the instability paper calls stable. A PNG on disk, logged to the sweep's parent run as
`plots/instability.png`. Only tickets of trials run with `prune.instability = true` have a value.

Example:
    >>> plot_instability("digits-stable", "sqlite:///runs/mlflow.db")   # -> runs/plots/digits-stable-instability.png
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from search.results.plot import log_plot, safe_name, sweep_parent
from search.results.query import (
    TicketRecord,
    client_for,
    default_tracking_uri,
    experiment_id,
    max_instability,
    sweep_tickets,
    tracking_root,
)
from search.tracking import schema as S
from trainables.config import ConfigError

ARTIFACT = "instability.png"
STABLE = 0.02  # the instability paper's threshold of "stable" (error barrier under 2%), drawn when unset


def _rewind(r: TicketRecord) -> int:
    return int(float(r.flat.get("prune.rewind_iter", "0")))


def _mean_by(records: list[TicketRecord], key: str) -> dict[tuple[int, float], float]:
    """(series value, x) -> mean instability, series = level or rewind iteration."""
    groups: dict[tuple[int, float], list[float]] = defaultdict(list)
    for r in records:
        series, x = (r.level, float(_rewind(r))) if key == "level" else (_rewind(r), 100 * r.density)
        groups[(series, x)].append(r.instability or 0.0)
    return {k: sum(v) / len(v) for k, v in groups.items()}


def draw(records: list[TicketRecord], title: str, out: Path, bound: float | None) -> None:
    """Two panels (against rewind iteration, against weights remaining); write a PNG to `out`."""
    fig = Figure(figsize=(10, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, sharey=True)
    for ax, key, label in ((left, "level", "level"), (right, "rewind", "rewind iteration")):
        points = _mean_by(records, key)
        for i, series in enumerate(sorted({s for s, _ in points})):
            xs = sorted(x for s, x in points if s == series)
            ax.plot(xs, [100 * points[(series, x)] for x in xs], marker="o", color=f"C{i % 10}",
                    label=f"{label} {series}")
        ax.axhline(100 * (bound if bound is not None else STABLE), color="black", linestyle="--", linewidth=1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    left.set_xlabel("rewind iteration")
    left.set_ylabel("instability (validation error barrier, points)")
    right.set_xscale("log")
    right.invert_xaxis()
    right.set_xlabel("weights remaining (%)")
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(out), format="png")


def plot_instability(sweep: str, tracking_uri: str | None = None, out: str | Path | None = None) -> Path | None:
    """Draw the sweep's instability, write the PNG (default `<tracking root>/plots/<sweep>-instability.png`)
    and log it to the parent run. None when no ticket of the sweep measured instability."""
    uri = tracking_uri or default_tracking_uri()
    records = [r for r in sweep_tickets(uri, sweep) if r.instability is not None and math.isfinite(r.instability)]
    if not records:
        return None
    path = Path(out) if out else tracking_root(uri) / S.PLOT_DIR / f"{safe_name(sweep)}-instability.png"
    if path.suffix.lower() != ".png":
        raise ConfigError(f"--out: {path} should end in .png")
    client = client_for(uri)
    exp = experiment_id(client, sweep)
    parent = sweep_parent(client, sweep, exp)
    draw(records, f"{sweep}: instability of {len(records)} tickets", path, max_instability(client, exp))
    log_plot(client, parent, path, ARTIFACT)
    return path
