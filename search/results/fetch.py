"""Fetching only what an answer needs from MLflow: the Pareto front's candidates and the controls of the shown
tickets, each by narrow queries that stay fast as a store fills up (tens of thousands of ticket runs).

MLflow's search returns whole runs (every param, tag and metric), and a filter knows `and` only (no `IN` on
tags), so "fetch less" means fewer runs: a front is walked with filters that skip every dominated run in bulk,
and controls are looked up per shown ticket instead of reading every control run of the experiment.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from search.tracking import schema as S

if TYPE_CHECKING:  # any client with MlflowClient's `search_runs` will do (search/results/restread.py)
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

FRONT_PAGE = 20  # runs per query walking a front: a server reads and sends each whole (see benchmarks/RESULTS.md)


class Point(NamedTuple):
    """A ticket as a front sees it, without its run: (run id, val_score, sparsity)."""

    run_id: str
    val_score: float
    sparsity: float


def _point(run: Run) -> tuple[float, float]:
    m = run.data.metrics
    return m.get("val_score", math.nan), m.get("sparsity", math.nan)


def front_candidates(client: MlflowClient, exp_ids: list[str], filter_string: str) -> list[Run]:
    """A superset of the Pareto front over (val_score, sparsity), both maximised, of the runs `filter_string`
    selects (`objectives.pareto_front` then picks the front itself, ties included).

    Walks runs by val_score (descending): a run is a candidate when it is sparser than every better-scoring run,
    or ties the last candidate. After each candidate the next query asks only for runs at least that sparse, so
    the dominated bulk of the store is never read."""
    order = ["metrics.val_score DESC", "metrics.sparsity DESC"]
    found: list[Run] = []
    seen: set[str] = set()
    floor: tuple[float, float] | None = None  # (val_score, sparsity) of the last candidate
    token: str | None = None
    while True:
        narrowed = filter_string if floor is None else f"{filter_string} and metrics.sparsity >= {floor[1]!r}"
        page = client.search_runs(exp_ids, narrowed, max_results=FRONT_PAGE, order_by=order, page_token=token)
        grew = False
        for run in page:
            if run.info.run_id in seen:
                continue
            seen.add(run.info.run_id)
            v, s = _point(run)
            if not (math.isfinite(v) and math.isfinite(s)):
                continue
            if floor is None or s > floor[1] or (s, v) == (floor[1], floor[0]):
                found.append(run)
                grew = grew or floor is None or s > floor[1]
                floor = (v, s)
        if not page.token:
            return found
        token = None if grew else page.token  # narrowed further: start the new query from its top


def controls_of(client: MlflowClient, ticket: Run) -> dict[str, float]:
    """{control: its val_score} for the controls trained beside `ticket` (same trial run and level), from one
    query; a control written twice (a restarted trial) counts once, the later one."""
    tags = ticket.data.tags
    trial, level = tags.get(S.PARENT_TAG, ""), tags.get(S.TAG_LEVEL, "")
    if not trial or not level:
        return {}
    runs = client.search_runs([ticket.info.experiment_id],
                              f"tags.{S.KIND} = '{S.TICKET}' and tags.{S.TAG_MEMBER} != '{S.MEMBER_TICKET}' and "
                              f"tags.`{S.PARENT_TAG}` = '{trial}' and tags.{S.TAG_LEVEL} = '{level}'",
                              max_results=S.PAGE, order_by=["attributes.start_time ASC"])
    return {run.data.tags[S.TAG_MEMBER]: run.data.metrics.get("val_score", math.nan) for run in runs}


def control_margins(controls: Callable[[Run], dict[str, float]], tickets: Sequence[Run]) -> dict[str, dict[str, float]]:
    """ticket run id -> {control: ticket val_score - control val_score}, for the tickets shown only: read off
    the ticket run (CONTROL_SCORE metrics) or, for a run written before those, `controls(ticket)`: one query
    per ticket (a Reader's `controls`)."""
    out: dict[str, dict[str, float]] = {}
    for t in tickets:
        names = [c for c in t.data.params.get("prune.controls", "").split(",") if c]
        if not names:
            continue
        m = t.data.metrics
        carried = {c: m[S.CONTROL_SCORE.format(control=c)] for c in names if S.CONTROL_SCORE.format(control=c) in m}
        found = carried if len(carried) == len(names) else controls(t)  # older runs: one query
        out[t.info.run_id] = {name: m.get("val_score", math.nan) - v for name, v in sorted(found.items())}
    return out
