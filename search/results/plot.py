"""The figure researchers expect, for one sweep: a PNG on disk and an artifact of the sweep's parent run.

Left: the validation score against the percent of weights remaining, on a log axis read right to left
(100, 51, 26, 13, ... as in the lottery-ticket papers). One line per scorer and rewind point (the trial of
that group whose sparsest ticket scores best), the ticket solid and each control dashed in the same colour,
every point with its 95% interval over replicates as an error bar (none with one replicate).
Right: every ticket of the sweep by sparsity with its interval, one colour per scorer, and the Pareto front
over the means (search/sweep/objectives.py) as a step line.

Drawn with matplotlib's Agg canvas directly (no pyplot, no global backend switch), so it works on a head
node without a display and never touches other code's figures.

Example:
    >>> plot_sweep("digits", "sqlite:///runs/mlflow.db")   # -> runs/plots/digits.png
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from search.results import uncertainty
from search.results.query import (
    TicketRecord,
    client_for,
    default_tracking_uri,
    experiment_id,
    parent_run,
    sweep_tickets,
    tracking_root,
)
from search.results.reading import ticket_filter
from search.sweep.objectives import pareto_front
from search.tracking import schema as S
from search.tracking import store
from trainables.config import ConfigError
from trainables.tasks.registry import score_meaning

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
TICK_STEP = 0.8 ** 3  # 100, 51.2, 26.2, 13.4, ...: every third level of the paper's rate 0.2


@dataclass(frozen=True)
class Series:
    """One line of the left panel: `label`, and per level the percent of weights remaining, the mean val
    score and its 95% half-width (0 without an interval), in the plotted units."""

    label: str
    member: str  # "ticket" or the control's name
    remaining: tuple[float, ...]
    score: tuple[float, ...]
    ci95: tuple[float, ...]


def safe_name(name: str) -> str:
    """A file name from a sweep name: only letters, digits, `_ . -`, never starting with a dot."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "sweep"


def default_path(sweep: str, tracking_uri: str) -> Path:
    return tracking_root(tracking_uri) / S.PLOT_DIR / f"{safe_name(sweep)}.png"


def _mean_ci(flat: dict[str, float], fallback: float) -> tuple[float, float]:
    s = uncertainty.summary(flat)
    if s is None:
        return fallback, 0.0
    return s.mean, s.ci95 or 0.0


def _group(r: TicketRecord, keys: Sequence[str]) -> str:
    names = {"prune.scorer": "", "prune.rewind_iter": "rewind "}
    return ", ".join(f"{names[k]}{r.flat.get(k, '?')}" for k in keys) or r.scorer


def level_series(tickets: list[TicketRecord], controls: dict[tuple[str, int], dict[str, dict[str, float]]],
                 scale: float) -> list[Series]:
    """The left panel's lines: per group (scorer, and rewind point where the sweep varies it) the trial whose
    sparsest ticket has the best mean val score, its ticket and each control over the levels."""
    keys = [k for k in ("prune.scorer", "prune.rewind_iter") if len({t.flat.get(k) for t in tickets}) > 1]
    trials: dict[str, list[TicketRecord]] = {}
    for t in tickets:
        trials.setdefault(t.trial_run_id, []).append(t)
    best: dict[str, list[TicketRecord]] = {}
    for levels in trials.values():
        levels.sort(key=lambda t: t.level)
        group, last = _group(levels[-1], keys or ["prune.scorer"]), levels[-1]
        if group not in best or last.val_score > best[group][-1].val_score:
            best[group] = levels
    out = []
    for group, levels in sorted(best.items()):
        pts = [(100 * t.density, *_mean_ci(t.stats, t.val_score)) for t in levels]
        out.append(Series(group, S.MEMBER_TICKET, *_columns(pts, scale)))
        names = sorted({c for t in levels for c in controls.get((t.trial_run_id, t.level), {})})
        for c in names:
            pts = [(100 * t.density, *_mean_ci(controls[(t.trial_run_id, t.level)][c], math.nan))
                   for t in levels if c in controls.get((t.trial_run_id, t.level), {})]
            out.append(Series(f"{group}: {c}", c, *_columns(pts, scale)))
    return out


def _columns(pts: list[tuple[float, float, float]], scale: float) -> tuple[tuple[float, ...], ...]:
    return (tuple(p[0] for p in pts), tuple(scale * p[1] for p in pts), tuple(scale * p[2] for p in pts))


def _draw_levels(ax: Axes, series: list[Series], ylabel: str) -> None:
    groups = list(dict.fromkeys(s.label.split(": ")[0] for s in series))
    members = list(dict.fromkeys(s.member for s in series))
    for s in series:
        colour = f"C{groups.index(s.label.split(': ')[0]) % 10}"
        ticket = s.member == S.MEMBER_TICKET
        ax.errorbar(s.remaining, s.score, yerr=s.ci95, color=colour, linestyle="-" if ticket else "--",
                    marker=MARKERS[members.index(s.member) % len(MARKERS)], capsize=3, markersize=4,
                    linewidth=1.6 if ticket else 1.0, alpha=1.0 if ticket else 0.7,
                    label=s.label if ticket else s.label.split(": ")[-1] if len(groups) == 1 else s.label)
    lowest = min((x for s in series for x in s.remaining if x > 0), default=100.0)
    ticks, x = [], 100.0
    while x >= lowest * 0.8:
        ticks.append(x)
        x *= TICK_STEP
    if lowest < ticks[-1] * 0.8:  # the sparsest point gets its own tick
        ticks.append(lowest)
    ax.set_xscale("log")
    ax.set_xticks(ticks, [f"{t:.2g}" if t < 10 else f"{t:.0f}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlim(110, lowest * 0.85)  # read right to left: sparser to the right
    ax.set_xlabel("percent of weights remaining (log)")
    ax.set_ylabel(ylabel)
    ax.set_title("ticket (solid) and controls (dashed), ± 95% CI")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")


def _draw_front(ax: Axes, records: list[TicketRecord], scale: float, ylabel: str) -> None:
    for i, scorer in enumerate(sorted({r.scorer for r in records})):
        mine = [r for r in records if r.scorer == scorer]
        mc = [_mean_ci(r.stats, r.val_score) for r in mine]
        ax.errorbar([100 * r.sparsity for r in mine], [scale * m for m, _ in mc], yerr=[scale * c for _, c in mc],
                    fmt=MARKERS[i % len(MARKERS)], color=f"C{i}", label=scorer, alpha=0.8, capsize=2, markersize=4)
    front = pareto_front(records)
    if front:
        # "pre": between two front points the best score reachable at that sparsity or more is the
        # sparser point's, so the line drops at each point and runs level to the next.
        ax.step([100 * r.sparsity for r in front], [scale * r.val_score for r in front], where="pre",
                color="black", linewidth=1.2, label="Pareto front (means)")
    ax.set_xlabel("sparsity (% of prunable weights removed)")
    ax.set_ylabel(ylabel)
    ax.set_title("every ticket, ± 95% CI")
    ax.grid(alpha=0.3)
    ax.legend(title="scorer", fontsize="x-small")


def draw(records: list[TicketRecord], title: str, out: Path,
         controls: dict[tuple[str, int], dict[str, dict[str, float]]] | None = None) -> list[Series]:
    """Draw both panels into a PNG at `out`; returns the left panel's series."""
    fig = Figure(figsize=(12, 4.8), dpi=110)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    meanings = {score_meaning(r.flat.get("data.name", "")) for r in records}
    scale = 100.0 if meanings <= {"accuracy"} else 1.0  # accuracy in percent; perplexity and return as they are
    ylabel = "validation score (%)" if scale == 100 else f"validation score ({', '.join(sorted(meanings))})"
    series = level_series(records, controls or {}, scale)
    _draw_levels(left, series, ylabel)
    _draw_front(right, records, scale, ylabel)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(out), format="png")
    return series


def control_scores(uri: str, exp_id: str) -> dict[tuple[str, int], dict[str, dict[str, float]]]:
    """(trial run id, level) -> control -> its val score statistics (or plain `val_score_mean`), one query."""
    out: dict[tuple[str, int], dict[str, dict[str, float]]] = {}
    for run in store.search_all(client_for(uri), exp_id, ticket_filter(controls=True),
                                order_by=["attributes.start_time ASC"]):  # later duplicates win
        m, tags = run.data.metrics, run.data.tags
        flat = uncertainty.stats_of(m) or {"val_score_mean": m.get("val_score", math.nan)}
        key = (tags.get(S.PARENT_TAG, ""), int(tags.get(S.TAG_LEVEL, -1)))
        out.setdefault(key, {})[tags.get(S.TAG_MEMBER, "?")] = flat
    return out


def plot_sweep(sweep: str, tracking_uri: str | None = None, out: str | Path | None = None) -> Path | None:
    """Draw the sweep's tickets, write the PNG (default `<tracking root>/plots/<sweep>.png`) and log it
    to the parent run as `plots/<schema.PLOT_ARTIFACT>`. None when the sweep has no ticket runs yet."""
    uri = tracking_uri or default_tracking_uri()
    records = sweep_tickets(uri, sweep)
    if not records:
        return None
    path = Path(out) if out else default_path(sweep, uri)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"--out: {path} should end in .png")
    client = client_for(uri)
    exp_id = experiment_id(client, sweep)
    parent = sweep_parent(client, sweep, exp_id)
    draw(records, f"{sweep}: {len(records)} tickets", path, control_scores(uri, exp_id))
    log_plot(client, parent, path, S.PLOT_ARTIFACT)
    return path


def sweep_parent(client: MlflowClient, sweep: str, exp_id: str) -> str:
    """The run id a sweep's plots are logged to (its parent run); ConfigError when it has none."""
    parent = parent_run(client, exp_id)
    if parent is None:
        raise ConfigError(f"sweep '{sweep}' has no parent run (tags.kind = 'sweep') to log the plot to")
    return str(parent.info.run_id)


def log_plot(client: MlflowClient, run_id: str, path: Path, artifact: str) -> None:
    """Log the PNG at `path` to `run_id` as `plots/<artifact>`, whatever the file on disk is called."""
    with tempfile.TemporaryDirectory(prefix="ticket-plot-") as tmp:
        named = Path(tmp) / artifact
        shutil.copyfile(path, named)
        client.log_artifact(run_id, str(named), S.PLOT_DIR)
