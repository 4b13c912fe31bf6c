"""Ranking tickets straight from a database-backed MLflow store (sqlite, PostgreSQL, MySQL): only the columns
an answer needs, then the whole runs of the tickets it shows.

MLflow's search loads every param, tag and metric of each run it returns, and its ORDER BY on a metric is a
join that sqlite plans badly: `best` on 10,000 ticket runs took 15-40 s that way. The store's own tables
(`runs`, `tags`, `latest_metrics`: MLflow's schema since 1.x) answer the same question in one indexed query of
three columns: the top N by val_score, or every ticket's (val_score, sparsity) for a Pareto front. The runs
shown are then read through MLflow (`attributes.run_id IN (...)`). Any database error falls back to the
MLflow API (search/results/query.py), so a schema MLflow changes some day costs speed, not answers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from search.tracking import schema as S

DB_SCHEMES = ("sqlite:", "postgresql", "mysql", "mssql")  # MLflow's database-backed tracking URIs
TAG_FILTERS = ("dataset", "scorer", "model", "structure")  # the describing tags `best` filters on


def is_database(uri: str) -> bool:
    return uri.startswith(DB_SCHEMES)


def _query(exp_ids: Sequence[str], filters: dict[str, Any], *, metric: str, top: int | None) -> tuple[str, dict]:
    tags = [(S.KIND, S.TICKET), (S.TAG_MEMBER, S.MEMBER_TICKET),
            *((t, filters[t]) for t in TAG_FILTERS if filters.get(t) is not None)]
    joins = [f"JOIN tags t_{i} ON t_{i}.run_uuid = r.run_uuid AND t_{i}.key = :k_{i} AND t_{i}.value = :v_{i}"
             for i in range(len(tags))]
    params: dict[str, Any] = {f"k_{i}": k for i, (k, _) in enumerate(tags)}
    params |= {f"v_{i}": str(v) for i, (_, v) in enumerate(tags)}
    params |= {f"e_{i}": int(e) for i, e in enumerate(exp_ids)}
    where = [f"r.experiment_id IN ({', '.join(f':e_{i}' for i in range(len(exp_ids)))})",
             "r.lifecycle_stage = 'active'", "v.is_nan = 0", "m.is_nan = 0"]
    if filters.get("max_density") is not None:
        joins.append("JOIN latest_metrics d ON d.run_uuid = r.run_uuid AND d.key = 'density'")
        where.append("d.value <= :max_density AND d.is_nan = 0")
        params["max_density"] = float(filters["max_density"])
    sql = (f"SELECT r.run_uuid, v.value, m.value FROM runs r {' '.join(joins)} "
           "JOIN latest_metrics v ON v.run_uuid = r.run_uuid AND v.key = 'val_score' "
           f"JOIN latest_metrics m ON m.run_uuid = r.run_uuid AND m.key = '{metric}' "
           f"WHERE {' AND '.join(where)} ORDER BY v.value DESC, r.start_time DESC, r.run_uuid")
    return (sql + f" LIMIT {int(top)}" if top is not None else sql), params


def points(uri: str, exp_ids: Sequence[str], filters: dict[str, Any], *, top: int | None,
           metric: str = "sparsity") -> list[tuple[str, float, float]] | None:
    """(run id, val_score, `metric`) of the matching ticket runs, best val_score first (the top `top`); None
    when the store is not a database or the query fails (the caller then asks MLflow)."""
    if not is_database(uri) or not exp_ids:
        return None if not is_database(uri) else []
    import sqlalchemy

    sql, params = _query(exp_ids, filters, metric=metric, top=top)
    try:
        engine = sqlalchemy.create_engine(uri)
        try:
            with engine.connect() as con:
                rows = con.execute(sqlalchemy.text(sql), params).fetchall()
        finally:
            engine.dispose()
    except sqlalchemy.exc.SQLAlchemyError:
        return None
    return [(str(r[0]), float(r[1]), float(r[2])) for r in rows if math.isfinite(r[1])]


def runs_by_id(client: MlflowClient, exp_ids: Sequence[str], run_ids: Sequence[str]) -> list[Run]:
    """The whole runs `run_ids`, in that order (one search per 100 ids)."""
    found: dict[str, Run] = {}
    ids = list(dict.fromkeys(run_ids))
    for i in range(0, len(ids), 100):
        chunk = ids[i:i + 100]
        quoted = ", ".join(f"'{x}'" for x in chunk)  # run ids come from the store: 32 hex characters
        for run in client.search_runs(list(exp_ids), f"attributes.run_id IN ({quoted})", max_results=len(chunk)):
            found[run.info.run_id] = run
    return [found[x] for x in ids if x in found]
