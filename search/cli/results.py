"""`ticket-search best | export | compare | plot`: read tickets back out of MLflow, print with rich.

Each verb is `<verb>_command(args) -> int` over an argparse Namespace; `add_parsers(sub)` adds all four
subparsers and sets `args.handler` to the verb's function, which the CLI's one dispatch calls. User
mistakes raise `ConfigError`, which `search.cli.main` prints as `error: ...` with exit code 2. JSON goes to
stdout unwrapped, so it pipes.

Namespace attributes read (all from `add_parsers`; `tracking_uri=None` means MLFLOW_TRACKING_URI or
`sqlite:///<cwd>/runs/mlflow.db`):
    best:    tracking_uri, sweep, max_density, dataset, scorer, model, structure, top, json
    export:  tracking_uri, run_id, out, format
    compare: tracking_uri, run_a, run_b, json
    plot:    tracking_uri, sweep, out
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import TYPE_CHECKING, Any

from rich.table import Table

from search.cli.console import console as make_console
from trainables.tasks.registry import score_meaning

if TYPE_CHECKING:
    from search.results.compare import MaskComparison
    from search.results.query import TicketRecord

# MLflow and matplotlib are imported inside each verb: `add_parsers` runs on every CLI start, and
# `ticket-search run` should not pay seconds for them.


def _pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.{digits}f}%"


def _score(r: TicketRecord, value: float) -> str:
    """A score as its task means it: accuracy in percent, else the number (-perplexity, mean return)."""
    if score_meaning(r.flat.get("data.name", "")) == "accuracy":
        return _pct(value, 1)
    return "-" if math.isnan(value) else f"{value:.2f}"


def _number(text: str) -> str:
    """A sampled float param (MLflow keeps every digit) shown with 4 significant digits; anything else as is."""
    try:
        value = float(text)
    except ValueError:
        return text
    return text if value.is_integer() and "." not in text else f"{value:.4g}"


def _print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def best_table(records: list[TicketRecord], title: str) -> Table:
    """One row per ticket; the full run id stays on one line so it can be pasted into `export`."""
    table = Table(title=title)
    table.add_column("run", no_wrap=True, min_width=32)
    for col in ("level", "density", "val", "test", "scorer", "rate", "vs controls"):
        table.add_column(col, justify="left" if col in ("scorer", "vs controls") else "right")
    for r in records:
        margins = " ".join(f"{c} {100 * m:+.1f}" for c, m in r.controls.items()) or "-"
        density = _pct(r.density, 1) + (" collapsed" if r.collapsed else "")
        table.add_row(r.run_id, str(r.level), density, _score(r, r.val_score), _score(r, r.test_score), r.scorer,
                      _number(r.flat.get("prune.rate", "?")), margins)
    return table


def best_command(args: argparse.Namespace) -> int:
    from search.results.query import best_tickets, sweep_objective
    from search.sweep import objectives

    records = best_tickets(args.tracking_uri, sweep=args.sweep, max_density=args.max_density,
                           dataset=args.dataset, scorer=args.scorer, model=args.model, top=args.top,
                           structure=args.structure)
    if args.json:
        _print_json([r.to_json() for r in records])
        return 0
    console = make_console()
    if not records:
        where = f"sweep '{args.sweep}'" if args.sweep else "any sweep"
        console.print(f"No ticket runs in {where} match these filters yet.")
        return 0
    if args.sweep is not None:
        title = objectives.get(sweep_objective(args.tracking_uri, args.sweep)).title.format(sweep=args.sweep)
    else:
        title = "Best tickets by validation score"
    console.print(best_table(records, title))
    console.print("val = validation score (ranks tickets: accuracy, minus the perplexity of a language model, "
                  "a policy's mean return); test = the same score on the test split, shown, never used to rank.")
    return 0


def export_command(args: argparse.Namespace) -> int:
    from search.results.export import export_ticket

    out = export_ticket(args.run_id, args.out, args.tracking_uri, fmt=args.format)
    how = (f"; model.pt is the trained {args.format} network: torch.jit.load('{out.resolve()}/model.pt')"
           if args.format else "")
    make_console().print(f"exported ticket {args.run_id} to {out.resolve()} "
                         f"(load it with trainables.io.ticketio.load_ticket{how})")
    return 0


def compare_table(c: MaskComparison) -> Table:
    table = Table(title=f"Masks of {c.run_a} (A) and {c.run_b} (B)")
    for col in ("layer", "density A", "density B", "Hamming", "note"):
        table.add_column(col, justify="left" if col in ("layer", "note") else "right")
    for layer in c.layers:
        table.add_row(layer.name, _pct(layer.density_a), _pct(layer.density_b), _pct(layer.hamming),
                      layer.note)
    table.add_section()
    table.add_row("all", _pct(c.density_a), _pct(c.density_b), _pct(c.hamming),
                  "over layers both have, same shape")
    return table


def compare_command(args: argparse.Namespace) -> int:
    from search.results.compare import compare_tickets

    comparison = compare_tickets(args.run_a, args.run_b, args.tracking_uri)
    if args.json:
        _print_json(comparison.to_json())
    else:
        make_console().print(compare_table(comparison))
    return 0


def plot_command(args: argparse.Namespace) -> int:
    from search.results.plot import plot_sweep

    path = plot_sweep(args.sweep, args.tracking_uri, args.out)
    console = make_console()
    if path is None:
        console.print(f"Sweep '{args.sweep}' has no ticket runs yet: nothing to plot.")
    else:
        console.print(f"plot: {path.resolve()} (also logged to the sweep's parent run)")
    return 0


def _tracking(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/runs/mlflow.db)")


def add_parsers(sub: Any) -> None:
    """Add `best`, `export`, `compare` and `plot` to an argparse subparsers object (`handler` = function)."""
    best = sub.add_parser("best", help="the best tickets found so far, from MLflow")
    best.add_argument("--sweep", help="one sweep (experiment) name; default: all sweeps")
    best.add_argument("--max-density", type=float, help="only tickets at or below this density, e.g. 0.2")
    best.add_argument("--dataset", help="only tickets on this dataset")
    best.add_argument("--scorer", help="only tickets found with this scorer")
    best.add_argument("--model", help="only tickets of this model")
    best.add_argument("--structure", help="only tickets of this prune.structure (unstructured, channel, 2:4, ...)")
    best.add_argument("--top", type=int, default=10, help="how many to show (default 10)")
    best.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _tracking(best)
    best.set_defaults(handler=best_command)
    export = sub.add_parser("export", help="write a ticket run's mask, rewind weights and config to a folder")
    export.add_argument("run_id", help="the ticket run's MLflow run id")
    export.add_argument("--out", required=True, help="folder to write")
    export.add_argument("--format", choices=("masked", "compact", "sparse"),
                        help="also write model.pt (TorchScript) of the trained ticket: masked (pruned weights zero), "
                             "compact (pruned channels removed) or sparse (CSR layers)")
    _tracking(export)
    export.set_defaults(handler=export_command)
    compare = sub.add_parser("compare", help="per-layer density and mask overlap of two ticket runs")
    compare.add_argument("run_a")
    compare.add_argument("run_b")
    compare.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _tracking(compare)
    compare.set_defaults(handler=compare_command)
    plot = sub.add_parser("plot", help="validation score against sparsity for one sweep (PNG)")
    plot.add_argument("--sweep", required=True, help="the sweep (experiment) name")
    plot.add_argument("--out", help="PNG file (default <tracking root>/plots/<sweep>.png)")
    _tracking(plot)
    plot.set_defaults(handler=plot_command)
