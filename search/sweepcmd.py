"""`ticket-search sweep` and `ticket-search resume`: run a sweep with console progress, then the best tickets."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from rich.console import Console

from search.console import console as make_console

if TYPE_CHECKING:
    from search.runner import SweepOutcome


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sw = sub.add_parser("sweep", help="Optuna-guided Ray Tune sweep of ticket searches, tracked in MLflow")
    sw.add_argument("sweep_file", help="sweep TOML file, e.g. sweeps/digits.toml")
    sw.add_argument("--set", dest="sets", nargs="+", action="extend", metavar="KEY=VALUE",
                    help="override any entry: ticket keys (prune.rate=0.3) or sweep entries "
                         "(budget.num_samples=4, scheduler.name=none, storage.tracking_uri=...)")
    sw.add_argument("--smoke", action="store_true", help="shrink the sweep to a one-minute run")
    re = sub.add_parser("resume", help="continue an interrupted sweep")
    re.add_argument("name", help="the sweep's name")
    re.add_argument("--root", default="runs", help="the sweep's storage root (default: runs)")


def _finish(console: Console, outcome: SweepOutcome) -> int:
    """The end of a sweep: the best tickets, the plot, and how to look at everything in MLflow."""
    from search.plot import plot_sweep
    from search.querycmd import best_command

    s = outcome.sweep
    console.print(f"[bold]sweep {s.name}[/]: {outcome.trials} trials, {outcome.errored} failed")
    best_command(argparse.Namespace(tracking_uri=s.tracking_uri, sweep=s.name, max_density=None, dataset=None,
                                    scorer=None, model=None, top=5, json=False))
    png = plot_sweep(s.name, s.tracking_uri)
    if png is not None:
        console.print(f"plot: {png}")
    if s.tracking_uri.startswith("sqlite:"):
        console.print(f"MLflow UI: mlflow ui --backend-store-uri {s.tracking_uri}  (then open http://127.0.0.1:5000)")
    else:
        console.print(f"MLflow: {s.tracking_uri}")
    return 0 if outcome.errored == 0 else 1


def sweep_command(args: argparse.Namespace) -> int:
    from search.callbacks import ProgressCallback
    from search.runner import run_sweep
    from search.sweepfile import load_sweep

    console = make_console()
    sweep = load_sweep(args.sweep_file, args.sets, smoke=args.smoke)
    console.print(f"sweep [bold]{sweep.name}[/]: {sweep.num_samples} trials, {sweep.max_concurrent} at a time, "
                  f"objective {sweep.objective}, sampler {sweep.sampler}, scheduler {sweep.scheduler}"
                  f"{' (smoke)' if sweep.smoke else ''}")
    outcome = run_sweep(sweep, callbacks=[ProgressCallback(console.print)])
    return _finish(console, outcome)


def resume_command(args: argparse.Namespace) -> int:
    from search.callbacks import ProgressCallback
    from search.runner import load_record, run_sweep

    console = make_console()
    sweep = load_record(args.name, args.root)
    console.print(f"resuming sweep [bold]{sweep.name}[/]")
    outcome = run_sweep(sweep, resume=True, callbacks=[ProgressCallback(console.print)])
    return _finish(console, outcome)
