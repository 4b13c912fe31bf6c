"""`ticket-search best | export | compare | confirm | plot`: read tickets back out of MLflow, print with rich.

Each verb is `<verb>_command(args) -> int` over an argparse Namespace; `add_parsers(sub)` adds all five
subparsers and sets `args.handler` to the verb's function, which the CLI's one dispatch calls. User
mistakes raise `ConfigError`, which `search.cli.main` prints as `error: ...` with exit code 2. JSON goes to
stdout unwrapped, so it pipes.

Namespace attributes read (all from `add_parsers`; `tracking_uri=None` means MLFLOW_TRACKING_URI or
`sqlite:///<cwd>/runs/mlflow.db`):
    best:    tracking_uri, sweep, max_density, dataset, scorer, model, structure, top, json, rank, confirmed,
             register
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
from search.cli.console import pct as _pct
from search.cli.console import tracking_option as _tracking

if TYPE_CHECKING:
    from search.results.compare import MaskComparison
    from search.results.query import TicketRecord

# MLflow, matplotlib and torch are imported inside each verb: `add_parsers` runs on every CLI start, and
# `ticket-search run` should not pay seconds for them.


def _meaning(r: TicketRecord) -> str:
    """What the record's scores measure ("accuracy", "-perplexity", ...)."""
    if r.score_meaning:
        return r.score_meaning
    from trainables.tasks.registry import score_meaning  # a run from before the tag: the registry (torch)

    return score_meaning(r.flat.get("data.name", ""))


def _score(r: TicketRecord, value: float) -> str:
    """A score as its task means it: accuracy in percent, else the number (-perplexity, mean return)."""
    if _meaning(r) == "accuracy":
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


def _interval(r: TicketRecord, flat: dict[str, float], score: str, fallback: float) -> str:
    """`mean ± half-width` of a score over replicates (percent for accuracy); the plain score without one."""
    from search.results.uncertainty import plus_minus, summary

    s = summary(flat, score)
    if s is None:
        return _score(r, fallback)
    accuracy = _meaning(r) == "accuracy"
    return plus_minus(s, 100.0 if accuracy else 1.0, 1 if accuracy else 2) + ("%" if accuracy else "")


def _margins(r: TicketRecord, margins: dict[str, dict[str, float]]) -> str:
    """Each control's margin in points: paired over replicates with its interval where recorded."""
    from search.results.uncertainty import summary

    parts = []
    for c in sorted(set(margins) | set(r.controls)):
        s = summary(margins.get(c, {}))
        if s is not None:
            parts.append(f"{c} {100 * s.mean:+.1f}" + (f" ± {100 * s.ci95:.1f}" if s.ci95 is not None else ""))
        elif c in r.controls:
            parts.append(f"{c} {100 * r.controls[c]:+.1f}")
    return " ".join(parts) or "-"


def best_table(records: list[TicketRecord], title: str, confirmed: bool = False) -> Table:
    """One row per ticket; the full run id stays on one line so it can be pasted into `export`. Scores are
    `mean ± 95% half-width` over replicates (over the confirming seeds with `confirmed`)."""
    from search.results.uncertainty import margins_of

    table = Table(title=title)
    table.add_column("run", no_wrap=True, min_width=32)
    # with `confirmed`, n, test and the margins are the confirming seeds'; "sweep val" is what the sweep saw
    cols: tuple[str, ...] = ("level", "density", "val", "n", "test", "scorer", "rate", "vs controls")
    if confirmed:
        cols = ("level", "density", "confirmed val", "sweep val", "seeds", "confirmed test", "scorer", "rate",
                "vs controls (confirmed)")
    for col in cols:
        table.add_column(col, justify="left" if col in ("scorer", "vs controls", cols[-1]) else "right")
    for r in records:
        flat = r.confirmed if confirmed else r.stats
        density = _pct(r.density, 1) + (" collapsed" if r.collapsed else "")
        n = str(int(flat.get("val_score_n", 1)))
        val = _interval(r, r.stats, "val_score", r.val_score)
        first = [r.run_id, str(r.level), density]
        if confirmed:
            first.append(_interval(r, flat, "val_score", float("nan")))
        table.add_row(*first, val, n, _interval(r, flat, "test_score", r.test_score), r.scorer,
                      _number(r.flat.get("prune.rate", "?")),
                      _margins(r, margins_of(flat) if confirmed else r.margins))
    return table


def best_command(args: argparse.Namespace) -> int:
    from search.results.query import best
    from search.sweep import objectives

    objective, records = best(args.tracking_uri, sweep=args.sweep, max_density=args.max_density,
                              dataset=args.dataset, scorer=args.scorer, model=args.model, top=args.top,
                              rank=args.rank, confirmed=args.confirmed, structure=args.structure)
    if getattr(args, "register", None) and records:
        from search.results.register import register_best

        reg = register_best(args.tracking_uri, records[0], args.register)
        make_console(stderr=True).print(f"registered ticket {records[0].run_id} as {reg.name} version "
                                        f"{reg.version} (models:/{reg.name}@{reg.alias})")
    if args.json:
        _print_json([r.to_json() for r in records])
        return 0
    console = make_console()
    if not records:
        where = f"sweep '{args.sweep}'" if args.sweep else "any sweep"
        console.print(f"No ticket runs in {where} match these filters yet.")
        return 0
    if args.sweep is not None:
        title = objectives.get(objective).title.format(sweep=args.sweep)
    else:
        title = "Best tickets by validation score"
    if args.confirmed:
        title = f"{title} (confirmed on new seeds)"
    console.print(best_table(records, title, confirmed=args.confirmed))
    console.print("val = validation score (ranks tickets: accuracy, minus the perplexity of a language model, "
                  "a policy's mean return); test = the same score on the test split, shown, never used to rank.")
    console.print("a ± b = mean over n replicate seeds ± the 95% interval's half-width (Student's t); controls "
                  "are paired per seed. Ranked by the "
                  + ("interval's lower end (--rank lcb)." if args.rank == "lcb" else "mean."))
    line = separation_line(records, args.confirmed)
    if line:
        console.print(line)
    return 0


def separation_line(records: list[TicketRecord], confirmed: bool = False) -> str:
    """How many neighbours in the ranking are told apart by their intervals ("" when none has one)."""
    from search.results.uncertainty import summary
    from trainables.stats import separated

    sums = [summary(r.confirmed if confirmed else r.stats) for r in records[:5]]
    pairs = [(a, b) for a, b in zip(sums, sums[1:], strict=False) if a is not None and b is not None]
    if not any(s is not None and s.ci95 is not None for s in sums) or not pairs:
        return ""
    apart = sum(separated(a, b) for a, b in pairs)
    return (f"intervals: {apart} of {len(pairs)} neighbouring pairs in the top {len(sums)} do not overlap "
            "(the others are ties within the noise of the seeds)")


def export_command(args: argparse.Namespace) -> int:
    from search.results.export import export_ticket
    from trainables.paths import TICKET_JSON

    out = export_ticket(args.run_id, args.out, args.tracking_uri, fmt=args.format)
    how = (f"; model.pt is the trained {args.format} network: torch.jit.load('{out.resolve()}/model.pt')"
           if args.format else "")
    console = make_console()
    console.print(f"exported ticket {args.run_id} to {out.resolve()} "
                  f"(load it with trainables.io.ticketio.load_ticket{how})")
    semi = json.loads((out / TICKET_JSON).read_text()).get("semistructured")
    if semi:
        console.print(semi.get("why") or f"2:4 layers {', '.join(semi['layers'])} in PyTorch's semi-structured format "
                      f"on the GPU: import semistructured from {out.resolve()}; semistructured.load()"
                      + "".join(f"; {n} stays dense-masked ({why})" for n, why in semi["dense"].items()))
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
    console = make_console()
    if args.kind == "instability":
        from search.results.instability_plot import plot_instability

        path = plot_instability(args.sweep, args.tracking_uri, args.out)
        if path is None:
            console.print(f"Sweep '{args.sweep}' has no ticket that measured instability "
                          "(run its trials with prune.instability = true): nothing to plot.")
            return 0
        console.print(f"plot: {path.resolve()} (also logged to the sweep's parent run)")
        return 0
    from search.results.plot import plot_sweep

    path = plot_sweep(args.sweep, args.tracking_uri, args.out)
    if path is None:
        console.print(f"Sweep '{args.sweep}' has no ticket runs yet: nothing to plot.")
    else:
        console.print(f"plot: {path.resolve()} (also logged to the sweep's parent run)")
    return 0


def add_parsers(sub: Any) -> None:
    """Add `best`, `export`, `compare`, `confirm` and `plot` to an argparse subparsers object (`handler` = function)."""
    best = sub.add_parser("best", help="the best tickets found so far, from MLflow")
    best.add_argument("--sweep", help="one sweep (experiment) name; default: all sweeps")
    best.add_argument("--max-density", type=float, help="only tickets at or below this density, e.g. 0.2")
    best.add_argument("--dataset", help="only tickets on this dataset")
    best.add_argument("--scorer", help="only tickets found with this scorer")
    best.add_argument("--model", help="only tickets of this model")
    best.add_argument("--structure", help="only tickets of this prune.structure (unstructured, channel, 2:4, ...)")
    best.add_argument("--top", type=int, default=10, help="how many to show (default 10)")
    best.add_argument("--json", action="store_true", help="print JSON instead of a table")
    best.add_argument("--rank", default="mean", choices=("mean", "lcb"),
                      help="rank by the mean val score over replicates (default) or by its 95%% lower bound")
    best.add_argument("--confirmed", action="store_true",
                      help="only tickets `confirm` retrained on new seeds, with their confirmed figures")
    best.add_argument("--register", metavar="NAME", help="register the best ticket as a new version of the "
                                                         "MLflow model NAME, with the alias 'best'")
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
    plot = sub.add_parser("plot", help="score against weights remaining, ticket and controls with intervals (PNG)")
    plot.add_argument("--sweep", required=True, help="the sweep (experiment) name")
    plot.add_argument("--out", help="PNG file (default <tracking root>/plots/<sweep>.png)")
    plot.add_argument("--kind", choices=("score", "instability"), default="score",
                      help="score: score against weights remaining (default); instability: the error "
                           "barrier against rewind iteration and density (prune.instability sweeps)")
    _tracking(plot)
    plot.set_defaults(handler=plot_command)
