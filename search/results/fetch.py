"""Fetching only what an answer needs from MLflow: the Pareto front's candidates and the controls of the shown
tickets, each by narrow queries that stay fast as a store fills up (tens of thousands of ticket runs).

MLflow's search returns whole runs (every param, tag and metric), and a filter knows `and` only (no `IN` on
tags), so "fetch less" means fewer runs: a front is walked with filters that skip every dominated run in bulk,
and controls are looked up per shown ticket instead of reading every control run of the experiment.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
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


class Meet:
    """Where two walks of one front stand: the walk by val_score has passed every run sparser than `sparsity`
    left unread, the walk by sparsity every run scoring above `score`; both read only what lies between."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sparsity: float | None = None  # the val_score walk's last candidate's sparsity
        self.score: float | None = None  # the sparsity walk's last candidate's val_score
        self.done = threading.Event()  # one walk covered everything between: the other may stop


def front_candidates(client: MlflowClient, exp_ids: list[str], filter_string: str, *, ends: int = 2) -> list[Run]:
    """A superset of the Pareto front over (val_score, sparsity), both maximised, of the runs `filter_string`
    selects (`objectives.pareto_front` then picks the front itself, ties included).

    The front is walked from its best-scoring end (runs by val_score, descending: a run is a candidate when it
    is sparser than every better-scoring run, or ties the last candidate) and, with `ends` 2, at the same time
    from its sparsest end (by sparsity). After each candidate a walk's next query asks only for what is left
    between the two walks' candidates, so the dominated bulk of the store is never read, and the walks meet
    in the middle: against a server with several workers, in about half the time of one walk."""
    meet = Meet()
    walks = [(True, "metrics.val_score", "metrics.sparsity"), (False, "metrics.sparsity", "metrics.val_score")]
    if ends == 1:
        return _walk(client, exp_ids, filter_string, meet, *walks[0])
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = [pool.submit(_walk, client, exp_ids, filter_string, meet, *w) for w in walks]
        found = [run for d in done for run in d.result()]
    unique = {run.info.run_id: run for run in found}
    return sorted(unique.values(), key=lambda r: tuple(-x for x in _point(r)))


def _walk(client: MlflowClient, exp_ids: list[str], filter_string: str, meet: Meet, by_score: bool, first: str,
          second: str) -> list[Run]:
    """One walk of `front_candidates`: runs by `first` then `second` (descending), candidates where `second`
    beats every run before them."""
    order = [f"{first} DESC", f"{second} DESC"]
    found: list[Run] = []
    seen: set[str] = set()
    floor: tuple[float, float] | None = None  # (first, second) of the last candidate
    token: str | None = None
    narrowed = filter_string
    while not meet.done.is_set():
        if token is None:  # a new query (a page token goes on with the filter it was issued for)
            with meet.lock:
                theirs = meet.score if by_score else meet.sparsity  # the other walk's floor, on our `first`
            bounds = [f"{second} >= {floor[1]!r}"] if floor is not None else []
            bounds += [f"{first} >= {theirs!r}"] if theirs is not None else []
            narrowed = " and ".join(b for b in [filter_string, *bounds] if b)
        page = client.search_runs(exp_ids, narrowed, max_results=FRONT_PAGE, order_by=order, page_token=token)
        grew = False
        for run in page:
            if run.info.run_id in seen:
                continue
            seen.add(run.info.run_id)
            v, s = _point(run)
            a, b = (v, s) if by_score else (s, v)
            if not (math.isfinite(a) and math.isfinite(b)):
                continue
            if floor is None or b > floor[1] or (a, b) == floor:
                found.append(run)
                grew = grew or floor is None or b > floor[1]
                floor = (a, b)
        if floor is not None:
            with meet.lock:
                if by_score:
                    meet.sparsity = floor[1]
                else:
                    meet.score = floor[1]
        if not page.token:
            meet.done.set()  # everything between the walks was read by this one
            return found
        token = None if grew else page.token  # narrowed further: start the new query from its top
    return found


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
