"""A Reader over MLflow's own tables (sqlite through the standard library, PostgreSQL through SQLAlchemy), for
`best` without importing MLflow.

MLflow's search loads every param, tag and metric of each run it returns, and its ORDER BY on a metric is a
join that sqlite plans badly: `best` on 10,000 ticket runs took 15-40 s through it. The tables (`experiments`,
`runs`, `tags`, `params`, `latest_metrics`: MLflow's schema since 1.x, read in MLflow 3.17's
`store/tracking/dbmodels/models.py`) answer the same questions in indexed queries of a few columns; then only
the runs shown are read whole. The SQL mirrors MLflow's SQL store (`sqlalchemy_store._search_runs`): active
runs only; a metric filter never matches a NaN metric (stored as 0 with `is_nan`); ORDER BY a metric puts
values first, then NaN, then runs without it, and ties go to the latest start time, then the run id. Any
database error raises `Unavailable`: the caller asks MLflow instead, so a schema MLflow changes some day costs
speed, not answers. MySQL and SQL Server compare strings their own way (MLflow adds collations): not here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from search.results.reading import Data, Info, LiteRun, Unavailable, Where, metric_value
from search.sweep import objectives
from search.tracking import schema as S

CHUNK = 500  # run ids per IN (...) list
ORDER_TAIL = "r.start_time DESC, r.run_uuid"  # MLflow's tie-breakers after the requested order


def _sqlite_path(uri: str) -> str | None:
    """The file of a plain `sqlite:///PATH` URI (no query string, not in memory), else None."""
    path = uri.removeprefix("sqlite:///")
    if path == uri or not path or "?" in uri or path.startswith(":memory:"):
        return None
    return path


class SqlReader:
    """Reads a sqlite or PostgreSQL MLflow store; every query is a `(sql, params)` with `:name` parameters."""

    def __init__(self, execute: Any, join: str = "JOIN") -> None:
        self._execute = execute
        self.join = join  # sqlite: CROSS JOIN, which keeps the runs table the outer loop (see `open`)

    @classmethod
    def open(cls, uri: str) -> SqlReader | None:
        path = _sqlite_path(uri)
        if path is not None:
            # Scanning `runs` and looking each run's tags and metrics up by (key, run id) reads them near one
            # another (rows sit in the order they were written, a run's together); sqlite's own plan walks an
            # index of one key over every run in run-id order, a random read each: 2-7x slower at 30,000 runs.
            return cls(_sqlite(path), "CROSS JOIN")
        if uri.startswith(("postgresql://", "postgresql+psycopg2://")):
            return cls(_sqlalchemy(uri))
        return None

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        try:
            return [tuple(r) for r in self._execute(sql, params or {})]
        except Unavailable:
            raise
        except Exception as e:  # any driver's error (missing table, locked file, lost connection)
            raise Unavailable(f"{type(e).__name__}: {e}") from e

    # -- the Reader ----------------------------------------------------------------------------------------

    def experiment(self, name: str) -> tuple[str, str] | None:
        found = self.rows("SELECT experiment_id, lifecycle_stage FROM experiments WHERE name = :n "
                          "AND lifecycle_stage IN ('active', 'deleted')", {"n": name})
        if len(found) > 1:  # one name in several workspaces: MLflow's workspaces decide, not us
            raise Unavailable(f"{len(found)} experiments named {name!r}")
        return (str(found[0][0]), str(found[0][1])) if found else None

    def experiments(self) -> list[tuple[str, str]]:
        return [(str(i), str(n)) for i, n in self.rows(
            "SELECT experiment_id, name FROM experiments WHERE lifecycle_stage = 'active' ORDER BY experiment_id")]

    def parent(self, exp_id: str) -> LiteRun | None:
        ids = [r[0] for r in self.rows(
            f"SELECT r.run_uuid FROM runs r {self.join} tags k "
            "ON k.run_uuid = r.run_uuid AND k.key = :k AND k.value = :v "
            "WHERE r.experiment_id = :e AND r.lifecycle_stage = 'active' "
            f"ORDER BY CASE WHEN r.start_time IS NULL THEN 1 ELSE 0 END, {ORDER_TAIL} LIMIT 1",
            {"k": S.KIND, "v": S.SWEEP, "e": int(exp_id)})]
        return self.runs(ids)[0] if ids else None

    def ranked(self, exp_ids: Sequence[str], where: Where, top: int | None) -> list[LiteRun]:
        joins, params = _selection(exp_ids, where, self.join)
        sql = (f"SELECT r.run_uuid FROM runs r {joins} "
               "LEFT JOIN latest_metrics v ON v.run_uuid = r.run_uuid AND v.key = 'val_score' "
               "WHERE r.experiment_id IN ({ids}) AND r.lifecycle_stage = 'active' "
               "ORDER BY CASE WHEN v.is_nan = :t THEN 1 WHEN v.value IS NULL THEN 2 ELSE 0 END, v.value DESC, "
               f"{ORDER_TAIL}" + ("" if top is None else f" LIMIT {int(top)}"))
        return self.runs([r[0] for r in self.rows(sql.format(ids=_in("e", len(exp_ids))), params)])

    def front(self, exp_ids: Sequence[str], where: Where) -> list[LiteRun]:
        """The front itself (a subset of what `Reader.front` allows), from three columns of every candidate."""
        joins, params = _selection(exp_ids, where, self.join)
        sql = (f"SELECT r.run_uuid, v.value, s.value FROM runs r {joins} "
               f"{self.join} latest_metrics v ON v.run_uuid = r.run_uuid AND v.key = 'val_score' AND v.is_nan = :f "
               f"{self.join} latest_metrics s ON s.run_uuid = r.run_uuid AND s.key = 'sparsity' AND s.is_nan = :f "
               "WHERE r.experiment_id IN ({ids}) AND r.lifecycle_stage = 'active' "
               f"ORDER BY v.value DESC, s.value DESC, {ORDER_TAIL}")
        points = [_Point(str(i), float(v), float(s)) for i, v, s in
                  self.rows(sql.format(ids=_in("e", len(exp_ids))), params)
                  if math.isfinite(float(v)) and math.isfinite(float(s))]
        on_front = {p.run_id for p in objectives.pareto_front(points)}
        return self.runs([p.run_id for p in points if p.run_id in on_front])  # in MLflow's order

    def controls(self, ticket: Any) -> dict[str, float]:
        tags = ticket.data.tags
        trial, level = tags.get(S.PARENT_TAG, ""), tags.get(S.TAG_LEVEL, "")
        if not trial or not level:
            return {}
        j = self.join
        sql = (f"SELECT m.value, v.value, v.is_nan FROM runs r "
               f"{j} tags p ON p.run_uuid = r.run_uuid AND p.key = :pk AND p.value = :pv "
               f"{j} tags l ON l.run_uuid = r.run_uuid AND l.key = :lk AND l.value = :lv "
               f"{j} tags m ON m.run_uuid = r.run_uuid AND m.key = :mk AND m.value != :mv "
               f"{j} tags k ON k.run_uuid = r.run_uuid AND k.key = :kk AND k.value = :kv "
               "LEFT JOIN latest_metrics v ON v.run_uuid = r.run_uuid AND v.key = 'val_score' "
               "WHERE r.experiment_id = :e AND r.lifecycle_stage = 'active' "
               f"ORDER BY CASE WHEN r.start_time IS NULL THEN 1 ELSE 0 END, r.start_time, r.run_uuid LIMIT {S.PAGE}")
        params = {"kk": S.KIND, "kv": S.TICKET, "mk": S.TAG_MEMBER, "mv": S.MEMBER_TICKET, "pk": S.PARENT_TAG,
                  "pv": trial, "lk": S.TAG_LEVEL, "lv": level, "e": int(ticket.info.experiment_id)}
        return {str(member): math.nan if value is None else metric_value(value, is_nan)
                for member, value, is_nan in self.rows(sql, params)}

    # -- whole runs ----------------------------------------------------------------------------------------

    def runs(self, run_ids: Sequence[str]) -> list[LiteRun]:
        """The runs `run_ids`, whole (params, tags, latest metrics), in that order."""
        ids = list(dict.fromkeys(run_ids))
        info: dict[str, Info] = {}
        data: dict[str, Data] = {}
        for i in range(0, len(ids), CHUNK):
            chunk = ids[i:i + CHUNK]
            where = {f"r_{j}": x for j, x in enumerate(chunk)}
            inside = _in("r", len(chunk))
            for run_id, exp, start in self.rows(
                    f"SELECT run_uuid, experiment_id, start_time FROM runs WHERE run_uuid IN ({inside})", where):
                info[run_id] = Info(str(run_id), str(exp), start)
                data[run_id] = Data()
            for run_id, key, value in self.rows(
                    f"SELECT run_uuid, key, value FROM params WHERE run_uuid IN ({inside})", where):
                data[run_id].params[key] = value
            for run_id, key, value in self.rows(
                    f"SELECT run_uuid, key, value FROM tags WHERE run_uuid IN ({inside})", where):
                data[run_id].tags[key] = value
            for run_id, key, value, is_nan in self.rows(
                    f"SELECT run_uuid, key, value, is_nan FROM latest_metrics WHERE run_uuid IN ({inside})", where):
                data[run_id].metrics[key] = metric_value(value, is_nan)
        return [LiteRun(info[x], data[x]) for x in ids if x in info]


class _Point:
    __slots__ = ("run_id", "val_score", "sparsity")

    def __init__(self, run_id: str, val_score: float, sparsity: float) -> None:
        self.run_id, self.val_score, self.sparsity = run_id, val_score, sparsity


def _in(prefix: str, n: int) -> str:
    return ", ".join(f":{prefix}_{i}" for i in range(n))


def _selection(exp_ids: Sequence[str], where: Where, join: str) -> tuple[str, dict[str, Any]]:
    """The joins that select `where`'s runs, and every parameter of the query (experiments as `e_<i>`). The
    member tag comes first: it turns away the control runs (two in three) in one look-up."""
    member = "!=" if where.controls else "="
    tags = [(S.TAG_MEMBER, member, S.MEMBER_TICKET), (S.KIND, "=", S.TICKET), *((k, "=", v) for k, v in where.tags)]
    joins = [f"{join} tags t_{i} ON t_{i}.run_uuid = r.run_uuid AND t_{i}.key = :tk_{i} AND t_{i}.value {op} :tv_{i}"
             for i, (_, op, _) in enumerate(tags)]
    params: dict[str, Any] = {"t": True, "f": False}
    params |= {f"tk_{i}": k for i, (k, _, _) in enumerate(tags)} | {f"tv_{i}": v for i, (_, _, v) in enumerate(tags)}
    params |= {f"e_{i}": int(e) for i, e in enumerate(exp_ids)}
    bounds = [("density", where.max_density)]
    if not where.controls:
        bounds.append((S.INSTABILITY_METRICS[0], where.max_instability))
    for i, (key, bound) in enumerate(b for b in bounds if b[1] is not None):
        joins.append(f"{join} latest_metrics b_{i} ON b_{i}.run_uuid = r.run_uuid AND b_{i}.key = :bk_{i} "
                     f"AND b_{i}.value <= :bv_{i} AND b_{i}.is_nan = :f")
        params |= {f"bk_{i}": key, f"bv_{i}": float(bound)}  # type: ignore[arg-type]
    return " ".join(joins), params


def _sqlite(path: str) -> Any:
    """Run queries on the sqlite file `path`, read-only (a missing file is `query.client_for`'s error)."""
    import sqlite3

    if not Path(path).is_file():
        raise Unavailable(f"no file {path}")

    def execute(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        con = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    return execute


def _sqlalchemy(uri: str) -> Any:
    """Run queries on a database SQLAlchemy reaches (one connection per query, no pool left behind)."""
    try:
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        engine = sqlalchemy.create_engine(uri, poolclass=NullPool)
    except Exception as e:  # no driver installed, a malformed URL
        raise Unavailable(f"{type(e).__name__}: {e}") from e

    def execute(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        with engine.connect() as con:
            return [tuple(r) for r in con.execute(sqlalchemy.text(sql), params).fetchall()]

    return execute
