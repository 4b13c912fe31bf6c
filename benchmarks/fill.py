"""Filling an MLflow store with a sweep's worth of ticket runs, fast: direct SQL inserts through MLflow's own
SQLAlchemy store (its schema, its models), for the query benchmarks (benchmarks/queries.py).

MLflow's client is too slow for this: a ticket run through it is create_run + log_batch + set_terminated,
about 25 ms on sqlite, so 30,000 runs (10,000 tickets and two controls each) would take 12 minutes, and a
server more. Here the store is created by `SqlAlchemyStore` (migrations included), the experiments and parent
runs through its API, and the trial, ticket and control runs as rows of its own tables in bulk inserts: the
same rows the writers of search/tracking/store.py leave (tags, params, latest metrics), without artifacts and
without the per-evaluation metric history of trial runs, which no query reads.

    >>> fill("sqlite:////tmp/q/mlflow.db", "/tmp/q/artifacts", sweep="acc", objective="accuracy_at_density",
    ...      tickets=1000)                                                          # doctest: +SKIP
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

from mlflow.entities import Param
from mlflow.store.tracking.dbmodels import models as m
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from sqlalchemy import insert, text

from search.tracking import schema as S
from trainables.config import DEFAULTS

LEVELS = 5  # ticket runs per trial: IMP levels 1..5
CONTROLS = ("reinit", "shuffle")  # a control run of each beside every ticket run
VAL_EXAMPLES = 180  # val_score is a fraction of this many examples: ties, as in a real sweep
CHUNK = 20_000  # rows per INSERT


def _metrics(run_id: str, values: dict[str, float], now: int, step: int) -> Iterator[dict[str, Any]]:
    for key, value in values.items():
        yield {"key": key, "value": value, "timestamp": now, "step": step, "is_nan": False, "run_uuid": run_id}


class _Rows:
    """Rows per table, inserted in chunks of CHUNK."""

    def __init__(self, store: SqlAlchemyStore) -> None:
        self.store = store
        self.rows: dict[Any, list[dict[str, Any]]] = {t: [] for t in (m.SqlRun, m.SqlTag, m.SqlParam,
                                                                      m.SqlLatestMetric, m.SqlMetric)}
        self.count = 0

    def add(self, model: Any, rows: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> None:
        self.rows[model].extend(rows)
        if sum(len(r) for r in self.rows.values()) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        with self.store.ManagedSessionMaker() as session:
            if session.bind.dialect.name == "sqlite":  # a big page cache: the indexes of 100,000 runs stay in it
                session.execute(text("PRAGMA cache_size = -1000000"))  # KiB; changes speed, not what is written
            for model, rows in self.rows.items():  # runs first: the others refer to them
                if rows:
                    session.execute(insert(model.__table__), rows)
                    self.count += len(rows)
                    rows.clear()


def _run(rows: _Rows, exp_id: str, run_id: str, name: str, tags: dict[str, str], params: dict[str, str],
         metrics: dict[str, float], now: int, step: int, artifact_root: str) -> None:
    rows.add(m.SqlRun, [{"run_uuid": run_id, "name": name, "source_type": "LOCAL", "source_name": "",
                         "entry_point_name": "", "user_id": "bench", "status": "FINISHED", "start_time": now,
                         "end_time": now, "source_version": "", "lifecycle_stage": "active",
                         "artifact_uri": f"{artifact_root}/{exp_id}/{run_id}/artifacts", "experiment_id": int(exp_id)}])
    tags = {**tags, "mlflow.runName": name}
    rows.add(m.SqlTag, [{"key": k, "value": v, "run_uuid": run_id} for k, v in tags.items()])
    rows.add(m.SqlParam, [{"key": k, "value": v, "run_uuid": run_id} for k, v in params.items()])
    rows.add(m.SqlLatestMetric, _metrics(run_id, metrics, now, step))
    rows.add(m.SqlMetric, _metrics(run_id, metrics, now, step))


def fill(uri: str, artifact_root: str, *, sweep: str, objective: str, tickets: int, seed: int = 0,
         target_density: float = 0.2) -> int:
    """A sweep `sweep` of `tickets` ticket runs (LEVELS per trial) with CONTROLS beside each, in the store at
    `uri`; returns the number of rows inserted. The scores follow a plausible shape (a ticket loses accuracy
    as its density falls, more at a high learning rate) so that fronts and rankings are realistic."""
    store = SqlAlchemyStore(uri, artifact_root)
    exp_id = store.create_experiment(sweep, artifact_location=f"{artifact_root}/{sweep}")
    parent = store.create_run(exp_id, user_id="bench", start_time=int(time.time() * 1000),
                              tags=[], run_name=f"sweep-{sweep}").info.run_id
    store.set_tag(parent, m.SqlTag(key=S.KIND, value=S.SWEEP).to_mlflow_entity())
    store.set_tag(parent, m.SqlTag(key=S.TAG_SWEEP, value=sweep).to_mlflow_entity())
    store.log_batch(parent, metrics=[], params=[Param(S.PARAM_OBJECTIVE, objective),
                                                Param(S.PARAM_TARGET, str(target_density))], tags=[])
    rng = random.Random(seed)
    rows, now = _Rows(store), int(time.time() * 1000)
    base = {k: ",".join(map(str, v)) if isinstance(v, tuple) else str(v) for k, v in DEFAULTS.items()}
    for t in range(-(-tickets // LEVELS)):
        rate, lr = rng.uniform(0.2, 0.6), 10 ** rng.uniform(-2, -0.5)
        scorer = rng.choice(["magnitude", "snip"])
        params = {**base, "prune.rate": repr(rate), "train.lr": repr(lr), "prune.scorer": scorer,
                  "prune.controls": ",".join(CONTROLS), "prune.target_density": str(target_density)}
        trial_id, trial_run = f"t{t:06d}", uuid.uuid4().hex
        describing = {S.TAG_SWEEP: sweep, S.TAG_TRIAL: trial_id, "dataset": "digits", "model": "lenet300",
                      "scorer": scorer, "method": "imp", S.TAG_SCORE: "accuracy"}
        _run(rows, exp_id, trial_run, f"trial-{trial_id}", {**describing, S.KIND: S.TRIAL, S.PARENT_TAG: parent},
             params, {"val_score": 0.0}, now + t, 0, artifact_root)
        skill = 0.97 - 0.05 * abs(lr - 0.05) + rng.gauss(0, 0.01)
        for level in range(1, min(LEVELS, tickets - t * LEVELS) + 1):
            density = (1 - rate) ** level
            score = round(VAL_EXAMPLES * min(1.0, skill - 0.15 * (1 - density) ** 6 + rng.gauss(0, 0.01)))
            vals = {c: score / VAL_EXAMPLES - rng.uniform(0, 0.1) for c in CONTROLS}
            vals[S.MEMBER_TICKET] = score / VAL_EXAMPLES
            for member in (S.MEMBER_TICKET, *CONTROLS):
                val = vals[member]
                tags = {**describing, S.KIND: S.TICKET, S.TAG_MEMBER: member, S.TAG_LEVEL: str(level),
                        S.PARENT_TAG: trial_run, S.TAG_KEY: f"{parent}/{trial_id}/{level}/{member}",
                        S.TAG_TICKET_ID: trial_id}
                metrics = {"density": density, "sparsity": 1 - density, "val_acc": val, "val_score": val,
                           "test_acc": val - 0.01, "test_score": val - 0.01, "level": float(level),
                           "collapsed": 0.0, "epochs": 6.0}
                if member == S.MEMBER_TICKET:
                    metrics.update({S.CONTROL_SCORE.format(control=c): vals[c] for c in CONTROLS})
                _run(rows, exp_id, uuid.uuid4().hex, f"L{level:02d}-{member}", tags, params, metrics,
                     now + t, level, artifact_root)
    rows.flush()
    return rows.count
