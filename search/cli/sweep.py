"""`ticket-search sweep`, `resume` and `dashboard`: run a sweep with console progress, then the best tickets."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from rich.console import Console

from search.cli.console import console as make_console
from search.sweep.storage import DEFAULT_ROOT

if TYPE_CHECKING:
    from search.tune.runner import SweepOutcome


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sw = sub.add_parser("sweep", help="Optuna-guided Ray Tune sweep of ticket searches, tracked in MLflow")
    sw.set_defaults(handler=sweep_command)
    sw.add_argument("sweep_file", help="sweep TOML file, e.g. sweeps/digits.toml")
    sw.add_argument("--set", dest="sets", nargs="+", action="extend", metavar="KEY=VALUE",
                    help="override any entry: ticket keys (prune.rate=0.3) or sweep entries "
                         "(budget.num_samples=4, scheduler.name=none, storage.tracking_uri=...)")
    sw.add_argument("--smoke", action="store_true", help="shrink the sweep to a one-minute run")
    re = sub.add_parser("resume", help="continue an interrupted sweep")
    re.set_defaults(handler=resume_command)
    re.add_argument("name", help="the sweep's name")
    re.add_argument("--root", default=DEFAULT_ROOT, help=f"the sweep's storage root (default: {DEFAULT_ROOT})")
    da = sub.add_parser("dashboard", help="open the sweep's Optuna study in optuna-dashboard (on 127.0.0.1)")
    da.set_defaults(handler=dashboard_command)
    da.add_argument("name", help="the sweep's name")
    da.add_argument("--root", default=DEFAULT_ROOT, help=f"the sweep's storage root (default: {DEFAULT_ROOT})")
    da.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (default: 8080)")


def _finish(console: Console, outcome: SweepOutcome) -> int:
    """The end of a sweep: what ran and what MLflow holds of it, the best tickets, the plot, the MLflow UI."""
    from search.results.plot import plot_sweep
    from search.sweep import objectives

    s, rec, ends = outcome.sweep, outcome.record, outcome.endings
    console.print(f"[bold]sweep {s.name}[/]: {outcome.trials} trials: {ends.get('FINISHED', 0)} ran every level, "
                  f"{ends.get('KILLED', 0)} stopped early, {ends.get('FAILED', 0)} failed")
    written = f" ({rec.written} ticket run(s) logged by the driver from them)" if rec.written else ""
    console.print(f"levels finished (Ray's level checkpoints): {rec.levels_finished}; recorded in MLflow: "
                  f"{rec.levels_recorded}{written}")
    for missing in rec.missing:
        console.print(f"[red]not recorded[/]: {missing}")
    _best(s.name, s.tracking_uri, s.target_density if objectives.get(s.objective).targets_density else None)
    png = plot_sweep(s.name, s.tracking_uri)
    if png is not None:
        console.print(f"plot: {png}")
    if s.tracking_uri.startswith("sqlite:"):
        console.print(f"MLflow UI: mlflow ui --backend-store-uri {s.tracking_uri}  (then open http://127.0.0.1:5000)")
    else:
        console.print(f"MLflow: {s.tracking_uri}")
    return 0 if outcome.errored == 0 and not rec.missing else 1


def _best(name: str, tracking_uri: str, target: float | None) -> None:
    """The best tickets at the sweep's target density; if no ticket reached it, say so and show the best
    at any density (never "no tickets" when there are some)."""
    from search.cli.results import best_command
    from search.results.query import best_tickets

    args = argparse.Namespace(tracking_uri=tracking_uri, sweep=name, max_density=None, dataset=None,
                              scorer=None, model=None, structure=None, top=5, json=False, rank="mean",
                              confirmed=False, register=None)
    if target is not None and not best_tickets(tracking_uri, sweep=name, top=1):
        if not best_tickets(tracking_uri, sweep=name, max_density=1.0, top=1):
            make_console().print(f"No trial of sweep '{name}' finished a level.")
            return
        make_console().print(f"No ticket reached the target density {100 * target:.1f}%; the best at any density:")
        args.max_density = 1.0
    best_command(args)


def sweep_command(args: argparse.Namespace) -> int:
    from search.sweep.file import load_sweep
    from search.tracking.callbacks import ProgressCallback
    from search.tune.runner import run_sweep

    console = make_console()
    sweep = load_sweep(args.sweep_file, args.sets, smoke=args.smoke)
    console.print(f"sweep [bold]{sweep.name}[/]: {sweep.num_samples} trials, {sweep.max_concurrent} at a time, "
                  f"objective {sweep.objective}, sampler {sweep.sampler}, scheduler {sweep.scheduler}"
                  f"{' (smoke)' if sweep.smoke else ''}")
    outcome = run_sweep(sweep, callbacks=[ProgressCallback(console.print)])
    return _finish(console, outcome)


def resume_command(args: argparse.Namespace) -> int:
    from search.tracking.callbacks import ProgressCallback
    from search.tune.runner import load_record, run_sweep

    console = make_console()
    sweep = load_record(args.name, args.root)
    console.print(f"resuming sweep [bold]{sweep.name}[/]")
    outcome = run_sweep(sweep, resume=True, callbacks=[ProgressCallback(console.print)])
    return _finish(console, outcome)


def dashboard_command(args: argparse.Namespace) -> int:
    from search.results.dashboard import HOST, open_study_storage, serve

    storage = open_study_storage(args.name, args.root)
    make_console(stderr=True).print(f"optuna-dashboard for sweep [bold]{args.name}[/]: http://{HOST}:{args.port} "
                                    "(Ctrl-C stops it)")
    serve(storage, port=args.port)
    return 0
