"""`ticket-search run`: one ticket search on this machine, a table per level, results on disk."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from search.cli.console import console as make_console

if TYPE_CHECKING:
    from trainables.config import Ticket
    from trainables.io.checkpoint import State
    from trainables.io.results import LevelResult

# The engine (torch) is imported inside `run_command`: `add_parsers` runs on every CLI start.


def planned_epochs(t: Ticket, levels: int) -> float:
    """Epochs the search will train at most (for the progress bar); `levels` = its last level."""
    trained = 1 if t.prune.method == "init" else levels + 1
    return float(trained * t.train.epochs)


def early_bird_line(epoch: int, drawn: bool) -> str:
    """What the Early-Bird detector saw. It also watches IMP's dense level 0 when `prune.early_bird` is
    off, as information; only when it is on did the ticket come from there."""
    if drawn:
        return f"Early-Bird ticket drawn at epoch {epoch} (dense training stopped there)"
    return (f"mask distance settled at epoch {epoch} (Early-Bird would have drawn the ticket there; "
            "prune.early_bird is off)")


def level_table(results: list[LevelResult]) -> Table:
    table = Table(title="Ticket search", show_lines=False)
    for col in ("level", "density", "val acc", "test acc", "early stop", "controls (val acc, ticket +)",
                "collapse"):
        table.add_column(col, justify="right" if col != "controls (val acc, ticket +)" else "left")
    for r in results:
        ci = r.stats.get("val_acc_ci95")  # the 95% half-width over replicates (trainables/stats.py)
        std = f" ± {100 * ci:.1f}" if ci is not None else ""
        controls = "  ".join(f"{c} {100 * v['val_acc']:.1f}% ({_margin(r, c)})" for c, v in r.controls.items())
        table.add_row(str(r.level), f"{100 * r.density:.2f}%", f"{100 * r.val_acc:.2f}%{std}",
                      f"{100 * r.test_acc:.2f}%", str(r.early_stop_iter), controls or "-",
                      ", ".join(r.collapsed_layers) or "no")
    return table


def _margin(r: LevelResult, control: str) -> str:
    """The ticket's margin over a control in points: paired per replicate ± its 95% half-width where there is one."""
    m = r.margins.get(control, {})
    if "val_score_ci95" in m:
        return f"{100 * m['val_score_mean']:+.1f} ± {100 * m['val_score_ci95']:.1f}"
    return f"{100 * r.advantage[control]:+.1f}"


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    run = sub.add_parser("run", help="one ticket search on this machine, no Ray")
    run.set_defaults(handler=run_command)
    run.add_argument("ticket", nargs="?", help="TOML file with [data]/[model]/[train]/[prune] keys")
    run.add_argument("--set", dest="sets", nargs="+", action="extend", metavar="KEY=VALUE",
                     help="override keys, e.g. --set prune.rate=0.5 prune.controls=shuffle,reinit")
    run.add_argument("--out", help="write results.json, masks/ and a resumable checkpoint here")
    run.add_argument("--resume", action="store_true", help="continue the search saved in --out")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--stages", metavar="DIR", help="stage store: load the levels a sweep or an earlier run "
                                                     "trained, file the ones this run trains (sweeps' default: "
                                                     "runs/stages)")
    run.add_argument("--tracking-uri", help="MLflow store for prune.init_mask=runs:/RUN_ID "
                                            "(default: $MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db)")


def run_command(args: argparse.Namespace) -> int:
    from search.sweep.overrides import load_ticket
    from trainables import paths
    from trainables.io import checkpoint
    from trainables.io.results import write_results
    from trainables.typed import ConfigError

    console = make_console()
    out = Path(args.out).resolve() if args.out else None
    ticket = load_ticket(args.ticket, args.sets)
    if ticket.prune.init_mask.startswith("runs:"):  # ticket transfer from a tracked run
        from search.results.transfer import resolve_init_mask

        ticket = resolve_init_mask(ticket, args.tracking_uri)
    state: State | None = None
    if args.resume:
        if out is None or not (out / paths.CHECKPOINT_DIR / paths.STATE_JSON).is_file():
            raise ConfigError("--resume: needs --out pointing at a folder with a checkpoint/ from an earlier run")
        state = checkpoint.load(out / paths.CHECKPOINT_DIR)
    lottery = _lottery(ticket, state, args.stages)
    lottery.require_target_reached()  # prune.levels and prune.target_density both given: they must agree
    p = ticket.prune
    console.print(f"ticket {ticket.id}: {ticket.data.name} / {ticket.model.name} / {p.method} "
                  f"/ {p.scorer} on {lottery.device}")
    if p.levels is None and lottery.levels_needed is not None:
        console.print(f"prune.levels: {lottery.levels} levels at prune.rate {p.rate:g} reach prune.target_density "
                      f"{p.target_density:g}")
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        TextColumn("{task.completed:.1f}/{task.total:.0f} epochs"), TimeElapsedColumn(),
                        console=console, disable=args.quiet, transient=True)
    with progress:
        bar = progress.add_task("level 0", total=planned_epochs(ticket, lottery.levels))

        def on_epoch(row: dict[str, Any]) -> None:
            progress.update(bar, completed=row["epochs_total"],
                            description=f"level {row['level']}  val acc {100 * row['val_acc']:.1f}%")

        lottery.on_epoch = on_epoch
        for result in lottery.run():
            loaded = "  (loaded from the stage store)" if result.reused_stage else ""
            progress.console.print(f"level {result.level}: density {100 * result.density:.2f}%  "
                                   f"val acc {100 * result.val_acc:.2f}%  test acc {100 * result.test_acc:.2f}%"
                                   f"{loaded}")
            if out is not None:
                write_results(out, ticket.flat(), lottery.state.results, lottery.state.early_bird_epoch)
                checkpoint.save(lottery.state, out / paths.CHECKPOINT_DIR)
    console.print(level_table(lottery.state.results))
    if lottery.state.epochs_trained < lottery.state.epochs_total:
        console.print(f"trained {lottery.state.epochs_trained:g} of the {lottery.state.epochs_total:g} epochs this "
                      f"ticket represents; the rest were loaded from the stage store {args.stages}")
    if lottery.state.early_bird_epoch is not None:
        console.print(early_bird_line(lottery.state.early_bird_epoch, p.early_bird))
    if out is not None:
        console.print(f"results: {out / paths.RESULTS_JSON}  masks: {out / paths.MASKS_DIR}")
    return 0


def _lottery(ticket: Ticket, state: State | None, stages: str | None) -> Any:
    """The search: a `StagedLottery` on the store `stages` when one is given (it trains every level of a
    ticket whose levels are never reused)."""
    from trainables.io.stages import why_not
    from trainables.io.stagestore import StageStore
    from trainables.lottery import Lottery
    from trainables.staged import StagedLottery
    from trainables.typed import ConfigError

    if stages is None:
        return Lottery(ticket, state=state)
    if Path(stages).exists() and not Path(stages).is_dir():
        raise ConfigError(f"--stages: {stages} is not a folder")
    if why_not(ticket):
        make_console().print(f"--stages: levels of a {why_not(ticket)} search are not reused; training them all")
    return StagedLottery(ticket, store=StageStore(stages), state=state)
