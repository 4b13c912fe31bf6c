"""The search service: sweep files, Ray Tune + Optuna sweeps, MLflow tracking and queries.

Subpackages: cli/ (the `ticket-search` command), sweep/ (sweep files, spaces, objectives, storage), tune/ (the
Ray Tune run, its Optuna searcher, recovery and reconciliation), tracking/ (the MLflow schema, store, sink,
outbox, callbacks), results/ (best tickets, confirmation, export, transfer, comparison, plots). Imports `trainables`,
never the reverse.

Python users get the CLI's verbs here:
    >>> from search import best_tickets                                     # doctest: +SKIP
    >>> best = best_tickets(sweep="digits", max_density=0.2, top=5)       # doctest: +SKIP
    >>> best[0].ticket()  # the typed config that found it                 # doctest: +SKIP
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from search.results.query import TicketRecord, best_tickets
    from search.sweep.objectives import pareto_front

__all__ = ["TicketRecord", "best_tickets", "pareto_front", "load_sweep", "run_sweep", "resume_sweep",
           "export_ticket", "resolve_init_mask", "confirm_ticket"]


def __getattr__(name: str) -> Any:  # heavy imports (MLflow, Ray, torch) only when asked for: the CLI starts fast
    if name in ("TicketRecord", "best_tickets"):
        from search.results import query

        return getattr(query, name)
    if name == "pareto_front":
        from search.sweep.objectives import pareto_front

        return pareto_front
    if name in ("run_sweep", "resume_sweep"):
        from search.tune import runner

        return getattr(runner, name)
    if name == "load_sweep":
        from search.sweep.file import load_sweep

        return load_sweep
    if name == "export_ticket":
        from search.results.export import export_ticket

        return export_ticket
    if name == "confirm_ticket":
        from search.results.confirm import confirm_ticket

        return confirm_ticket
    if name == "resolve_init_mask":
        from search.results.transfer import resolve_init_mask

        return resolve_init_mask
    raise AttributeError(name)
