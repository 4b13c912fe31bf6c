"""`ticket-search confirm RUN_ID --seeds N`: retrain the search that found a ticket on new seeds (no Ray).

Namespace attributes read (from `add_parsers`): tracking_uri, run_id, seeds, out. The work is
search/results/confirm.py's; MLflow and torch are imported inside the handler, so the CLI starts fast.
"""

from __future__ import annotations

import argparse
from typing import Any

from search.cli.console import console as make_console
from search.cli.console import pct as _pct
from search.cli.console import tracking_option as _tracking


def confirm_command(args: argparse.Namespace) -> int:
    from search.results.confirm import confirm_ticket
    from search.results.uncertainty import plus_minus

    console = make_console()
    console.print(f"confirming ticket {args.run_id} on {args.seeds} new seed(s), one after another ...")

    def on_seed(seed: int, r: Any) -> None:
        margins = "  ".join(f"{c} {100 * (r.val_score - v['val_score']):+.1f}" for c, v in r.controls.items())
        console.print(f"seed {seed}: level {r.level}  density {_pct(r.density, 1)}  val {_pct(r.val_score, 1)}  "
                      f"test {_pct(r.test_score, 1)}  {margins}")

    c = confirm_ticket(args.run_id, args.seeds, args.tracking_uri, out=args.out, on_seed=on_seed)
    parts = [f"val {plus_minus(c.summary('val_score'))}", f"test {plus_minus(c.summary('test_score'))}"]
    for control in c.results[0].controls:
        parts.append(f"vs {control} {plus_minus(c.margin(control), signed=True)} (paired)")
    console.print(f"confirmed over {len(c.seeds)} seeds (mean ± 95% half-width, points): " + "; ".join(parts))
    console.print(f"logged to ticket run {c.run_id} (tag confirmed=true) with {len(c.child_run_ids)} child runs; "
                  "`ticket-search best --confirmed` lists it")
    return 0


def add_parsers(sub: Any) -> None:
    """Add `confirm` to an argparse subparsers object (`handler` = function)."""
    confirm = sub.add_parser("confirm", help="retrain a ticket's search on new seeds: confirmed mean, interval")
    confirm.add_argument("run_id", help="the ticket run's MLflow run id (from `best`)")
    confirm.add_argument("--seeds", type=int, default=3, help="how many new seeds (default 3)")
    confirm.add_argument("--out", help="also write each seed's results.json and masks under OUT/seed_<S>/")
    _tracking(confirm)
    confirm.set_defaults(handler=confirm_command)
