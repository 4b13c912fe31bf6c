"""How `best` reads a store: one Reader interface, three implementations, one set of answers.

The query verbs (`best`, a sweep's Pareto front, the control margins) need a handful of reads: an experiment
by name, the active experiments, a sweep's parent run, the ticket runs a filter selects ranked by val_score,
the candidates of a Pareto front, and the controls beside a ticket. A `Reader` does exactly these:

- `SearchReader` over an MLflow client: `search_runs` with MLflow filter strings. Given an `MlflowClient` it is
  the reference behaviour; given `restread.RestClient` (the REST API of `mlflow server`, spoken with urllib)
  it sends the same requests without importing MLflow.
- `sqlread.SqlReader`: MLflow's own tables of a sqlite or PostgreSQL store, in SQL that orders and filters as
  MLflow's SQL store does, reading only the columns a ranking needs and then the runs shown.

`query.open_fast(uri)` picks a reader that needs no MLflow import (None when none fits); anything it cannot answer
raises `Unavailable`, and the caller asks the MLflow client instead, so a fast reader costs speed, never an
answer. `TICKET_SEARCH_READ=mlflow` turns the fast readers off.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from search.tracking import schema as S
from trainables.typed import ConfigError

SAFE_VALUE = re.compile(r"[A-Za-z0-9_.:+\-]{1,200}")  # tag values we put inside a filter string
READ_ENV = "TICKET_SEARCH_READ"  # "mlflow": always read through the MLflow client
FAST_OFF = ("MLFLOW_ENABLE_WORKSPACES", "MLFLOW_WORKSPACE", "MLFLOW_TRACKING_AUTH", "MLFLOW_TRACKING_AWS_SIGV4",
            "MLFLOW_TRACKING_CLIENT_CERT_PATH")  # set: MLflow scopes or signs requests; leave those to it


class Unavailable(Exception):
    """A fast reader cannot answer this (a database error, an unexpected reply): ask the MLflow client."""


@dataclass(frozen=True)
class Info:
    run_id: str
    experiment_id: str
    start_time: int | None = None


@dataclass(frozen=True)
class Data:
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LiteRun:
    """A run as the queries read it: the attribute names of `mlflow.entities.Run` they use."""

    info: Info
    data: Data


@dataclass(frozen=True)
class Page:
    """One page of a search: runs and the token of the next page (None: the last)."""

    runs: list[Any]
    token: str | None

    def __iter__(self) -> Any:
        return iter(self.runs)

    def __len__(self) -> int:
        return len(self.runs)

    def __getitem__(self, i: int) -> Any:
        return self.runs[i]


@dataclass(frozen=True)
class Where:
    """Which ticket runs a query selects: the ticket runs themselves (or, `controls=True`, their control runs),
    at most this dense and this unstable, with these tag values (describing tags, `confirmed`)."""

    max_density: float | None = None
    max_instability: float | None = None
    tags: tuple[tuple[str, str], ...] = ()
    controls: bool = False

    def filter_string(self) -> str:
        """The MLflow filter string (values were checked by `ticket_where`)."""
        member = f"!= '{S.MEMBER_TICKET}'" if self.controls else f"= '{S.MEMBER_TICKET}'"
        clauses = [f"tags.{S.KIND} = '{S.TICKET}'", f"tags.{S.TAG_MEMBER} {member}"]
        if self.max_density is not None:
            clauses.append(f"metrics.density <= {float(self.max_density)!r}")
        if self.max_instability is not None and not self.controls:
            clauses.append(f"metrics.{S.INSTABILITY_METRICS[0]} <= {float(self.max_instability)!r}")
        clauses += [f"tags.{tag} = '{value}'" for tag, value in self.tags]
        return " and ".join(clauses)


def _tag_clause(tag: str, value: str | None) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not SAFE_VALUE.fullmatch(value):
        raise ConfigError(f"--{tag}: {value[:80]!r} is not a valid name (letters, digits, _ . : + -)")
    return [(tag, value)]


def ticket_where(*, max_density: float | None = None, dataset: str | None = None, scorer: str | None = None,
                 model: str | None = None, controls: bool = False, max_instability: float | None = None,
                 structure: str | None = None, confirmed: bool = False) -> Where:
    """The selection of the "best tickets" query, its values checked; with `controls=True` the same filters
    select the control runs instead (controls measure no instability)."""
    if max_density is not None and not (isinstance(max_density, int | float) and 0 < max_density <= 1):
        raise ConfigError(f"--max-density: {max_density!r} is outside (0, 1]")
    tags = [t for tag, value in (("dataset", dataset), ("scorer", scorer), ("model", model),
                                 ("structure", structure)) for t in _tag_clause(tag, value)]
    if confirmed:
        tags.append((S.CONFIRMED, "true"))
    return Where(max_density=None if max_density is None else float(max_density),
                 max_instability=None if controls or max_instability is None else float(max_instability),
                 tags=tuple(tags), controls=controls)


def ticket_filter(**filters: Any) -> str:
    """The MLflow filter string of `ticket_where(**filters)` (MLflow filters know `and` only)."""
    return ticket_where(**filters).filter_string()


class Reader(Protocol):
    def experiment(self, name: str) -> tuple[str, str] | None:
        """(id, lifecycle stage) of the experiment `name`, deleted ones included; None when there is none."""

    def experiments(self) -> list[tuple[str, str]]:
        """(id, name) of every active experiment."""

    def parent(self, exp_id: str) -> Any | None:
        """The sweep's parent run (`tags.kind = 'sweep'`), the latest by start time."""

    def ranked(self, exp_ids: Sequence[str], where: Where, top: int | None) -> list[Any]:
        """The runs `where` selects, whole, best val_score first as MLflow orders them (the top `top`)."""

    def front(self, exp_ids: Sequence[str], where: Where) -> list[Any]:
        """Whole runs that include every run of the Pareto front over (val_score, sparsity) of the runs `where`
        selects (both metrics finite), in MLflow's order by val_score then sparsity, both descending."""

    def controls(self, ticket: Any) -> dict[str, float]:
        """{control: its val_score} of the control runs beside `ticket` (same trial run and level); a control
        written twice counts once, the later one."""


class SearchReader:
    """A Reader over an MLflow client's `search_runs` (an `MlflowClient` or a `restread.RestClient`)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def experiment(self, name: str) -> tuple[str, str] | None:
        exp = self.client.get_experiment_by_name(name)
        return None if exp is None else (str(exp.experiment_id), str(exp.lifecycle_stage))

    def experiments(self) -> list[tuple[str, str]]:
        return [(str(e.experiment_id), str(e.name)) for e in paged(
            lambda size, token: self.client.search_experiments(max_results=size, page_token=token))]

    def parent(self, exp_id: str) -> Any | None:
        runs = self.client.search_runs([exp_id], f"tags.{S.KIND} = '{S.SWEEP}'",
                                       order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0] if len(runs) else None

    def ranked(self, exp_ids: Sequence[str], where: Where, top: int | None) -> list[Any]:
        ids, text = list(exp_ids), where.filter_string()
        return list(paged(lambda size, token: self.client.search_runs(
            ids, text, max_results=size, order_by=["metrics.val_score DESC"], page_token=token), top))

    def front(self, exp_ids: Sequence[str], where: Where) -> list[Any]:
        from search.results import fetch

        return fetch.front_candidates(self.client, list(exp_ids), where.filter_string())

    def controls(self, ticket: Any) -> dict[str, float]:
        from search.results import fetch

        return fetch.controls_of(self.client, ticket)


def paged(fetch: Callable[[int, str | None], Any], limit: int | None = None) -> list[Any]:
    """Everything a search returns, following its page tokens (at most `limit` items)."""
    out: list[Any] = []
    token = None
    while limit is None or len(out) < limit:
        page = fetch(S.PAGE if limit is None else min(S.PAGE, limit - len(out)), token)
        out += list(page)
        token = page.token
        if not token:
            break
    return out


def metric_value(value: Any, is_nan: Any = False) -> float:
    """A stored metric as MLflow hands it out: NaN when flagged so (MLflow stores 0 beside the flag)."""
    return math.nan if is_nan else float(value)
