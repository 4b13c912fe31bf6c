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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from search.results import fetch, reading, uncertainty
from search.results.reading import ticket_where
from search.sweep import objectives
from search.sweep.storage import DEFAULT_ROOT, MLFLOW_DB
from search.tracking import schema as S
from trainables.config import ConfigError, Ticket

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

# MLflow is imported where a client is made: `best` reads most stores without it (search/results/reading.py).
T = TypeVar("T")

RUN_ID = re.compile(r"[0-9a-f]{32}")  # MLflow run ids: uuid4 hex


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


def store_uri(tracking_uri: str | None) -> str:
    """`tracking_uri` (or the default); a local sqlite file that does not exist is a user mistake, not a new
    store (MLflow would silently create an empty one)."""
    uri = tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"--tracking-uri: no MLflow store at {uri.removeprefix('sqlite:///')}")
    return uri


def client_for(tracking_uri: str | None) -> MlflowClient:
    """An MLflow client for `tracking_uri` (checked by `store_uri`)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(store_uri(tracking_uri))


def open_fast(uri: str) -> reading.Reader | None:
    """A reader for `uri` that imports no MLflow, or None (then the caller uses the MLflow client)."""
    if os.environ.get(reading.READ_ENV, "").lower() == "mlflow" or any(os.environ.get(v) for v in reading.FAST_OFF):
        return None
    if uri.startswith(("http://", "https://")):
        from search.results import restread  # urllib, ssl: only for a server

        client = restread.RestClient.open(uri)
        return reading.SearchReader(client) if client is not None else None
    from search.results import sqlread

    return sqlread.SqlReader.open(uri)


def read(tracking_uri: str | None, answer: Callable[[reading.Reader], T]) -> T:
    """`answer(reader)` from a reader that imports no MLflow where one fits the store, else (or when it cannot
    answer) from the MLflow client: the same answer either way (search/results/reading.py)."""
    uri = store_uri(tracking_uri)
    try:
        fast = open_fast(uri)
        if fast is not None:
            return answer(fast)
    except reading.Unavailable:
        pass
    return answer(reading.SearchReader(client_for(uri)))


def check_run_id(text: str, what: str = "run id") -> str:
    """`text` if it is an MLflow run id (32 lowercase hex characters), else ConfigError."""
    if not isinstance(text, str) or not RUN_ID.fullmatch(text):
        raise ConfigError(f"{what}: {str(text)[:80]!r} is not an MLflow run id (32 hex characters)")
    return text


def get_run(client: MlflowClient, run_id: str) -> Run:
    from mlflow.exceptions import MlflowException

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


def sweep_id(reader: reading.Reader, sweep: str) -> str:
    """The id of the active experiment `sweep`; ConfigError naming the known sweeps otherwise."""
    found = reader.experiment(sweep)
    if found is None or found[1] != "active":
        known = sorted(name for _, name in reader.experiments())
        raise ConfigError(f"unknown sweep '{sweep}'; known sweeps: {', '.join(known) or 'none'}")
    return found[0]


def experiment_id(client: MlflowClient, sweep: str) -> str:
    return sweep_id(reading.SearchReader(client), sweep)


def parent_run(client: MlflowClient, exp_id: str) -> Run | None:
    """The sweep's parent run (`tags.kind = 'sweep'`), the latest by start time."""
    run: Run | None = reading.SearchReader(client).parent(exp_id)
    return run


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


def max_instability(client: MlflowClient, exp_id: str) -> float | None:
    """The sweep's `[objective] max_instability` as its parent run recorded it (None: unconstrained)."""
    return _bound(_parent_param(parent_run(client, exp_id), S.PARAM_MAX_INSTABILITY))


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


class Best(NamedTuple):
    objective: str  # the objective that ranked them (the sweep's; across sweeps the default, by val_score)
    records: list[TicketRecord]


def best_tickets(tracking_uri: str | None = None, **options: Any) -> list[TicketRecord]:
    """The best ticket runs, as the sweep's objective ranks them (`best`'s records; its options)."""
    return best(tracking_uri, **options).records


def best(tracking_uri: str | None = None, *, sweep: str | None = None,
         max_density: float | None = None, dataset: str | None = None, scorer: str | None = None,
         model: str | None = None, top: int | None = 10, rank: str = "mean",
         confirmed: bool = False, structure: str | None = None) -> Best:
    """The best ticket runs, as the sweep's objective ranks them: by val_score (descending), or a front.

    One query ranks the tickets (a front reads only its candidates, never the dominated bulk); only the
    tickets shown are read whole, and their control margins come with them. A sqlite or PostgreSQL store is
    read in SQL and an `mlflow server` over REST, without importing MLflow (search/results/reading.py).
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
    filters: dict[str, Any] = {"max_density": max_density, "dataset": dataset, "scorer": scorer, "model": model,
                               "structure": structure, "confirmed": confirmed}
    ticket_where(**filters)  # bad values are the user's mistake before any store is opened
    return read(tracking_uri, lambda reader: best_from(reader, sweep, filters, top, rank, confirmed))


def best_from(reader: reading.Reader, sweep: str | None, filters: dict[str, Any], top: int | None, rank: str,
              confirmed: bool) -> Best:
    """`best` answered by `reader` (`filters`: best's filter arguments, checked)."""
    filters = dict(filters)
    name = objectives.DEFAULT  # across sweeps: by val_score
    if sweep is not None:
        exp_ids = [sweep_id(reader, sweep)]
        parent = reader.parent(exp_ids[0])  # read once: it holds the objective and the target
        name = _parent_param(parent, S.PARAM_OBJECTIVE) or objectives.DEFAULT
    ranking = objectives.get(name)
    if sweep is not None:
        if filters["max_density"] is None and ranking.targets_density:  # a sweep's best: those at its target
            filters["max_density"] = _target(_parent_param(parent, S.PARAM_TARGET))
        filters["max_instability"] = _bound(_parent_param(parent, S.PARAM_MAX_INSTABILITY))  # stable ones only
    else:
        exp_ids = [i for i, _ in reader.experiments()]
    if not exp_ids:
        return Best(name, [])
    if rank != "mean" and ranking.whole:
        raise ConfigError(f"--rank: sweep '{sweep}' ranks by a Pareto front (of means); valid here: mean")
    resort = rank != "mean" or (confirmed and not ranking.whole)
    where = ticket_where(**filters)
    latency = "latency_ms" in ranking.metrics  # the latency front reads every ticket whole and ranks it here
    if ranking.whole and not latency:  # a front: only its candidates are read, never the dominated bulk
        runs = reader.front(exp_ids, where)
    else:
        runs = reader.ranked(exp_ids, where, None if resort or latency else top)
    ranked = ranking.rank([to_record(r) for r in runs])
    if resort:
        ranked = uncertainty.rerank(ranked, rank, confirmed, top)
    shown = {r.run_id for r in ranked}
    margins = fetch.control_margins(reader.controls, [r for r in runs if r.info.run_id in shown])  # shown only
    return Best(name, [replace(r, controls=margins.get(r.run_id, {})) for r in ranked])


def sweep_tickets(tracking_uri: str | None, sweep: str) -> list[TicketRecord]:
    """Every ticket run of a sweep (no controls), best val_score first."""
    return read(tracking_uri, lambda r: [to_record(run) for run in r.ranked([sweep_id(r, sweep)], ticket_where(),
                                                                           None)])
