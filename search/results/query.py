"""Reading tickets back out of MLflow: the best tickets of a sweep, its Pareto front, and run look-ups.

Only ticket runs count as tickets (`tags.kind = 'ticket' and tags.member = 'ticket'`); control runs
(member reinit/shuffle/random of the same trial run and level) become the ticket's margin over each
control. Ranking uses the validation score; test accuracy is carried along and never used to rank.

A sweep's objective, as its parent run recorded it, ranks its tickets (search/sweep/objectives.py): a
`pareto` sweep answers with the Pareto front over (val_score, sparsity), both maximised, sorted by
sparsity; an `accuracy_at_density` sweep ranks by val_score the tickets at its target density.

Example:
    >>> for r in best_tickets("sqlite:///runs/mlflow.db", sweep="digits", max_density=0.2, top=3):
    ...     print(r.run_id, r.density, r.val_score, r.ticket().prune.rate)
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from search.results import fetch, sqlfetch, uncertainty
from search.sweep import objectives
from search.sweep.storage import DEFAULT_ROOT, MLFLOW_DB
from search.tracking import schema as S
from search.tracking import store
from trainables.config import ConfigError, Ticket

RUN_ID = re.compile(r"[0-9a-f]{32}")  # MLflow run ids: uuid4 hex
SAFE_VALUE = re.compile(r"[A-Za-z0-9_.:+\-]{1,200}")  # tag values we put inside a filter string


@dataclass(frozen=True)
class TicketRecord:
    """One ticket run, typed. `flat` holds the run's params (strings); `controls` the margins over each
    control trained beside it (ticket val_score - control val_score)."""

    run_id: str
    trial_run_id: str
    sweep: str
    level: int
    density: float
    sparsity: float
    val_score: float
    val_acc: float
    test_acc: float
    collapsed: bool
    test_score: float = math.nan  # the task's test score (accuracy, -perplexity, mean return): shown, never ranked
    instability: float | None = None  # validation error barrier (prune.instability), None when not measured
    score_meaning: str = ""  # what the scores measure, as the writer tagged it ("" on runs from before the tag)
    # the exported ticket's measured latency (objective latency_pareto); NaN when not measured, so not compared
    latency_ms: float = field(default=math.nan, compare=False)
    flat: dict[str, str] = field(default_factory=dict, hash=False)
    controls: dict[str, float] = field(default_factory=dict, hash=False)
    # Over replicates (search/results/uncertainty.py): `val_score_mean/_std/_n/_ci95` ..., the paired margins
    # per control, and after `confirm` the confirmed figures (same names, prefix removed)
    stats: dict[str, float] = field(default_factory=dict, hash=False)
    margins: dict[str, dict[str, float]] = field(default_factory=dict, hash=False)
    confirmed: dict[str, float] = field(default_factory=dict, hash=False)

    def ticket(self) -> Ticket:
        """The ticket search that found this ticket, re-typed from the run's params."""
        return Ticket.from_flat(self.flat)

    @property
    def scorer(self) -> str:
        return self.flat.get("prune.scorer", "?")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; NaN (a metric never logged) becomes None."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(self).items()}


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else the embedded store `./runs/mlflow.db` (absolute)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / DEFAULT_ROOT / MLFLOW_DB}"


def tracking_root(tracking_uri: str) -> Path:
    """The folder a local sqlite store lives in; the cwd for any other store."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent
    return Path.cwd()


def client_for(tracking_uri: str | None) -> MlflowClient:
    """A client for `tracking_uri`; a local sqlite file that does not exist is a user mistake, not a
    new store (MLflow would silently create an empty one)."""
    uri = tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"--tracking-uri: no MLflow store at {uri.removeprefix('sqlite:///')}")
    return MlflowClient(uri)


def check_run_id(text: str, what: str = "run id") -> str:
    """`text` if it is an MLflow run id (32 lowercase hex characters), else ConfigError."""
    if not isinstance(text, str) or not RUN_ID.fullmatch(text):
        raise ConfigError(f"{what}: {str(text)[:80]!r} is not an MLflow run id (32 hex characters)")
    return text


def get_run(client: MlflowClient, run_id: str) -> Run:
    check_run_id(run_id)
    try:
        return client.get_run(run_id)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise ConfigError(f"run {run_id} does not exist in this tracking store") from None
        raise


def get_ticket_run(client: MlflowClient, run_id: str) -> Run:
    """The run `run_id`, checked to be a ticket run (not a trial, a sweep or a control)."""
    run = get_run(client, run_id)
    tags = run.data.tags
    if tags.get(S.KIND) != S.TICKET or tags.get(S.TAG_MEMBER) != S.MEMBER_TICKET:
        kind = tags.get(S.KIND, "untagged")
        member = f" (member {tags[S.TAG_MEMBER]})" if S.TAG_MEMBER in tags else ""
        raise ConfigError(f"run {run_id} is not a ticket run: it is a {kind} run{member}")
    return run


def experiment_id(client: MlflowClient, sweep: str) -> str:
    exp = client.get_experiment_by_name(sweep)
    if exp is None or exp.lifecycle_stage != "active":
        known = sorted(e.name for e in store.experiments(client))
        raise ConfigError(f"unknown sweep '{sweep}'; known sweeps: {', '.join(known) or 'none'}")
    return str(exp.experiment_id)


def parent_run(client: MlflowClient, exp_id: str) -> Run | None:
    """The sweep's parent run (`tags.kind = 'sweep'`), the latest by start time."""
    runs = client.search_runs([exp_id], f"tags.{S.KIND} = '{S.SWEEP}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def _parent_param(parent: Run | None, name: str) -> str | None:
    return parent.data.params.get(name) if parent else None


def _bound(raw: str | None) -> float | None:
    try:
        return float(raw or "None")
    except ValueError:
        return None


def _target(raw: str | None) -> float | None:
    try:
        return float(raw or "None") + 1e-9  # a hair above: the ticket at the target counts
    except ValueError:
        return None


def objective(client: MlflowClient, exp_id: str) -> str:
    """The sweep's objective as its parent run recorded it (the default objective when unrecorded)."""
    return _parent_param(parent_run(client, exp_id), S.PARAM_OBJECTIVE) or objectives.DEFAULT


def target_density(client: MlflowClient, exp_id: str) -> float | None:
    """The density an `accuracy_at_density` sweep aims at, as its parent run recorded it (a hair above)."""
    return _target(_parent_param(parent_run(client, exp_id), S.PARAM_TARGET))


def max_instability(client: MlflowClient, exp_id: str) -> float | None:
    """The sweep's `[objective] max_instability` as its parent run recorded it (None: unconstrained)."""
    return _bound(_parent_param(parent_run(client, exp_id), S.PARAM_MAX_INSTABILITY))


def sweep_objective(tracking_uri: str | None, sweep: str) -> str:
    """The sweep's objective as its parent run recorded it (the default objective when unrecorded)."""
    client = client_for(tracking_uri)
    return objective(client, experiment_id(client, sweep))


def _tag_clause(tag: str, value: str | None) -> list[str]:
    if value is None:
        return []
    if not SAFE_VALUE.fullmatch(value):
        raise ConfigError(f"--{tag}: {value[:80]!r} is not a valid name (letters, digits, _ . : + -)")
    return [f"tags.{tag} = '{value}'"]


def ticket_filter(*, max_density: float | None = None, dataset: str | None = None,
                  scorer: str | None = None, model: str | None = None, controls: bool = False,
                  max_instability: float | None = None, structure: str | None = None) -> str:
    """The filter string of the "best tickets" query (MLflow filters know `and` only); with
    `controls=True` the same filters select the control runs instead (controls measure no instability)."""
    member = f"!= '{S.MEMBER_TICKET}'" if controls else f"= '{S.MEMBER_TICKET}'"
    clauses = [f"tags.{S.KIND} = '{S.TICKET}'", f"tags.{S.TAG_MEMBER} {member}"]
    if max_density is not None:
        if not (isinstance(max_density, int | float) and 0 < max_density <= 1):
            raise ConfigError(f"--max-density: {max_density!r} is outside (0, 1]")
        clauses.append(f"metrics.density <= {float(max_density)!r}")
    if max_instability is not None and not controls:
        clauses.append(f"metrics.{S.INSTABILITY_METRICS[0]} <= {float(max_instability)!r}")
    for tag, value in (("dataset", dataset), ("scorer", scorer), ("model", model), ("structure", structure)):
        clauses += _tag_clause(tag, value)
    return " and ".join(clauses)


def to_record(run: Run, controls: dict[str, float] | None = None) -> TicketRecord:
    m, tags = run.data.metrics, run.data.tags
    density = m.get("density", math.nan)
    return TicketRecord(
        run_id=run.info.run_id, trial_run_id=tags.get(S.PARENT_TAG, ""), sweep=tags.get(S.TAG_SWEEP, ""),
        level=int(m.get("level", tags.get(S.TAG_LEVEL, -1))), density=density,
        sparsity=m.get("sparsity", 1.0 - density), val_score=m.get("val_score", math.nan),
        val_acc=m.get("val_acc", math.nan), test_acc=m.get("test_acc", math.nan),
        collapsed=bool(m.get("collapsed", 0.0)), flat=dict(run.data.params), controls=dict(controls or {}),
        test_score=m.get("test_score", m.get("test_acc", math.nan)), score_meaning=tags.get(S.TAG_SCORE, ""),
        instability=m.get("instability_val"), stats=uncertainty.stats_of(m), margins=uncertainty.margins_of(m),
        confirmed=uncertainty.confirmed_of(m) if tags.get(S.CONFIRMED) == "true" else {},
        latency_ms=m.get(S.LATENCY, math.nan))


def best_tickets(tracking_uri: str | None = None, *, sweep: str | None = None,
                 max_density: float | None = None, dataset: str | None = None, scorer: str | None = None,
                 model: str | None = None, top: int | None = 10, rank: str = "mean",
                 confirmed: bool = False, structure: str | None = None) -> list[TicketRecord]:
    """The best ticket runs, as the sweep's objective ranks them: by val_score (descending), or a front.

    On a database store one query of three columns ranks the tickets (search/results/sqlfetch.py); elsewhere
    one `search_runs` query does (a front is walked by narrowing queries, search/results/fetch.py). Only the
    tickets shown are read whole; their control margins come with them.
    `sweep=None` searches every experiment and ranks by val_score; with a sweep and no `max_density`, an
    objective that targets a density filters by the sweep's own, and a sweep with `[objective]
    max_instability` shows only tickets that stable. `top` caps a ranked list; a ranking that needs every
    ticket (a Pareto front) comes whole (cutting it would hide one end of the trade-off). `rank="lcb"` ranks
    by the lower end of the val score's 95% interval instead of its mean; `confirmed=True` keeps only tickets
    `confirm` has retrained and ranks them by their confirmed figures (search/results/uncertainty.py).
    """
    uncertainty.check_rank(rank)
    if top is not None and top < 1:
        raise ConfigError(f"--top: need a positive count, got {top}")
    client = client_for(tracking_uri)
    filters: dict[str, Any] = {"max_density": max_density, "dataset": dataset, "scorer": scorer, "model": model,
                               "structure": structure}
    ranking = objectives.get(objectives.DEFAULT)  # across sweeps: by val_score
    if sweep is not None:
        exp_ids = [experiment_id(client, sweep)]
        parent = parent_run(client, exp_ids[0])  # read once: it holds the objective and the target
        ranking = objectives.get(_parent_param(parent, S.PARAM_OBJECTIVE) or objectives.DEFAULT)
        if max_density is None and ranking.targets_density:  # a sweep's best tickets are those at its target
            filters["max_density"] = _target(_parent_param(parent, S.PARAM_TARGET))
        filters["max_instability"] = _bound(_parent_param(parent, S.PARAM_MAX_INSTABILITY))  # stable ones only
    else:
        exp_ids = [str(e.experiment_id) for e in store.experiments(client)]
    if not exp_ids:
        return []
    if rank != "mean" and ranking.whole:
        raise ConfigError(f"--rank: sweep '{sweep}' ranks by a Pareto front (of means); valid here: mean")
    resort = rank != "mean" or (confirmed and not ranking.whole)
    where = ticket_filter(**filters) + (f" and tags.{S.CONFIRMED} = 'true'" if confirmed else "")  # checks values
    # The fast paths rank (val_score, sparsity) alone: not a stability bound, a confirmed or resorted ranking, or
    # the latency front (whose tickets are read whole and ranked here).
    latency = "latency_ms" in ranking.metrics
    plain = not (confirmed or resort or latency or filters.get("max_instability") is not None)
    light = sqlfetch.points(tracking_uri or default_tracking_uri(), exp_ids, filters,
                            top=None if ranking.whole else top) if plain else None
    if light is not None:  # a database store: rank three columns, then read the runs shown
        front = objectives.pareto_front([fetch.Point(*p) for p in light]) if ranking.whole else light
        runs = sqlfetch.runs_by_id(client, exp_ids, [p[0] for p in front])
    elif ranking.whole and not latency:  # a front: only its candidates are read, never the dominated bulk
        runs = fetch.front_candidates(client, exp_ids, where)
    elif latency:
        runs = store.search_all(client, exp_ids, where, order_by=["metrics.val_score DESC"])
    else:
        runs = store.search_all(client, exp_ids, where, order_by=["metrics.val_score DESC"],
                                limit=None if resort else top)
    ranked = ranking.rank([to_record(r) for r in runs])
    if resort:
        ranked = uncertainty.rerank(ranked, rank, confirmed, top)
    shown = {r.run_id for r in ranked}
    margins = fetch.control_margins(client, [r for r in runs if r.info.run_id in shown])  # the shown ones only
    return [replace(r, controls=margins.get(r.run_id, {})) for r in ranked]


def sweep_tickets(tracking_uri: str | None, sweep: str) -> list[TicketRecord]:
    """Every ticket run of a sweep (no controls), best val_score first."""
    client = client_for(tracking_uri)
    runs = store.search_all(client, [experiment_id(client, sweep)], ticket_filter(),
                            order_by=["metrics.val_score DESC"])
    return [to_record(r) for r in runs]
