"""The search service: sweep files, Ray Tune + Optuna sweeps, MLflow tracking and queries.

Python users get the CLI's verbs here:
    >>> from search import best_tickets                                     # doctest: +SKIP
    >>> best = best_tickets(sweep="digits", max_density=0.2, top=5)       # doctest: +SKIP
    >>> best[0].ticket()  # the typed config that found it                 # doctest: +SKIP
"""

from search.results.query import TicketRecord, best_tickets, pareto_front

__all__ = ["TicketRecord", "best_tickets", "pareto_front", "load_sweep", "run_sweep", "resume_sweep",
           "export_ticket", "resolve_init_mask"]


def __getattr__(name: str):  # heavy imports (Ray) only when asked for
    if name in ("run_sweep", "resume_sweep"):
        from search.tune import runner

        return getattr(runner, name)
    if name == "load_sweep":
        from search.sweep.file import load_sweep

        return load_sweep
    if name in ("export_ticket", "resolve_init_mask"):
        from search.results import export

        return getattr(export, name)
    raise AttributeError(name)
