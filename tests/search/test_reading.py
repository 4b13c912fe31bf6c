"""`best` answers the same from every reader: MLflow's tables read in SQL (sqlite, PostgreSQL), the server's REST
API spoken with urllib, and the MLflow client (the reference). One varied store, written through MLflow's own
client: two sweeps and a stability-bounded one, controls logged beside each ticket (some tickets from before the
control-score metrics, so their margins take a query; one control written twice), scores on a coarse grid with
shared start times (ties everywhere, broken by start time then run id), NaN and missing scores, deleted runs
and a deleted sweep, replicate statistics and a confirmed ticket for `--rank lcb` / `--confirmed`, and a latency
front. And `best` on the fast path imports no MLflow, torch, Ray or SQLAlchemy (sqlite)."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from search.results import query, reading, restread, sqlread
from search.results.query import best_from, best_tickets
from trainables.config import ConfigError

NOW = 1_700_000_000_000
GRID = (0.5, 0.75, 0.8, 0.9)  # val scores: ties are common


def _run(client: MlflowClient, exp: str, start: int, tags: dict[str, str], metrics: dict[str, float],
         params: dict[str, str] | None = None, deleted: bool = False) -> str:
    run_id = client.create_run(exp, start_time=start, tags=tags).info.run_id
    client.log_batch(run_id, metrics=[Metric(k, v, start, 0) for k, v in metrics.items()],
                     params=[Param(k, v) for k, v in (params or {}).items()])
    if deleted:
        client.delete_run(run_id)
    return run_id


def _sweep(client: MlflowClient, name: str, objective: str, rng: random.Random, trials: int,
           extra: dict[str, str] | None = None) -> str:
    exp = client.create_experiment(name)
    _run(client, exp, NOW, {"kind": "sweep", "sweep": name},
         {}, {"objective": objective, "target_density": "0.5", **(extra or {})})
    for t in range(trials):
        scorer, structure = ("magnitude", "snip")[t % 2], ("unstructured", "channel")[t % 3 == 0]
        names = ("reinit", "shuffle") if t == 0 else ("shuffle",)
        params = {"prune.scorer": scorer, "prune.controls": ",".join(names), "prune.rate": str(0.2 + t / 100)}
        describing = {"sweep": name, "trial": f"t{t}", "dataset": "digits", "scorer": scorer, "structure": structure,
                      "score": "accuracy"}
        trial = _run(client, exp, NOW + t, {**describing, "kind": "trial"}, {}, params)
        for level in range(3):
            start = NOW + 10 * (t // 2) + level % 2  # shared start times: ties fall to the run id
            density = 0.8 ** level if t % 4 else 0.5 ** level
            val = rng.choice(GRID) if (t, level) != (1, 2) else math.nan
            controls = {c: val - rng.choice((0.05, 0.1)) for c in names}
            tags = {**describing, "kind": "ticket", "level": str(level), "mlflow.parentRunId": trial}
            metrics = {"density": density, "sparsity": 1 - density, "val_score": val, "test_score": val - 0.01,
                       "level": float(level), "instability_val": rng.choice((0.0, 0.01, 0.05))}
            if (t, level) == (0, 1):
                metrics["instability_val"] = math.nan  # stored as 0 beside a flag: no bound may take it
            if (t, level) == (2, 1):
                del metrics["val_score"]  # a ticket without a score: ranked after NaN
            if t % 3 != 1:  # older writers did not copy the controls' scores onto the ticket run
                metrics |= {f"val_score_{c}": v for c, v in controls.items()}
            if t == 0:
                metrics |= {"val_score_mean": val, "val_score_n": 3.0, "val_score_ci95": 0.01 * (level + 1),
                            "latency_ms": 1.0 + level}
            if (t, level) == (3, 1):
                tags["confirmed"] = "true"
                metrics |= {"confirmed_val_score_mean": 0.7, "confirmed_val_score_n": 4.0}
            _run(client, exp, start, {**tags, "member": "ticket"}, metrics, params)
            if level == 2 and t < 2:  # a deleted run scoring best must never show
                _run(client, exp, start, {**tags, "member": "ticket"}, {**metrics, "val_score": 1.0}, params, True)
            for c, v in controls.items():
                _run(client, exp, start, {**tags, "member": c}, {"val_score": v, "density": density}, params)
            if (t, level) == (4, 1):  # a restarted trial wrote this control twice: the later one counts
                _run(client, exp, start + 5, {**tags, "member": "shuffle"}, {"val_score": 0.01}, params)
    return exp


def write_store(uri: str) -> None:
    client = MlflowClient(uri)
    rng = random.Random(0)
    _sweep(client, "acc", "accuracy_at_density", rng, 7)
    _sweep(client, "front", "pareto", rng, 6)
    _sweep(client, "stable", "accuracy_at_density", rng, 3, {"max_instability": "0.02"})
    _sweep(client, "lat", "latency_pareto", rng, 1)
    client.delete_experiment(_sweep(client, "gone", "pareto", rng, 1))


CASES: list[tuple[str | None, dict[str, Any]]] = [
    ("acc", {"top": 5}), ("acc", {"top": 100}), ("acc", {"max_density": 0.7, "top": 100}),
    ("acc", {"structure": "channel", "scorer": "snip", "top": 100}), ("acc", {"dataset": "cifar10"}),
    (None, {"top": 10}), (None, {"top": 1000, "max_density": 1.0}), ("front", {}), ("front", {"max_density": 0.7}),
    ("stable", {"top": 100}), ("acc", {"rank": "lcb", "top": 3}), ("acc", {"confirmed": True}),
    ("lat", {"top": 100}), ("gone", {}), ("nope", {}),
]


def answer(reader: reading.Reader, sweep: str | None, kw: dict[str, Any]) -> str:
    """best_from's records as JSON (NaN written out, so two answers compare), or the ConfigError it raised."""
    filters = {"max_density": kw.get("max_density"), "dataset": kw.get("dataset"), "scorer": kw.get("scorer"),
               "model": None, "structure": kw.get("structure"), "confirmed": kw.get("confirmed", False)}
    try:
        objective, records = best_from(reader, sweep, filters, kw.get("top", 10), kw.get("rank", "mean"),
                                       kw.get("confirmed", False))
    except ConfigError as e:
        return f"ConfigError: {e}"
    return json.dumps([objective, [r.to_json() for r in records]], sort_keys=True)


def assert_same_answers(fast: reading.Reader, reference: reading.Reader) -> None:
    for sweep, kw in CASES:
        expected = answer(reference, sweep, kw)
        assert answer(fast, sweep, kw) == expected, (sweep, kw)
    for sweep in ("acc", "front"):
        ranked = [r.info.run_id for r in fast.ranked([query.sweep_id(fast, sweep)], reading.Where(), None)]
        assert ranked == [r.info.run_id for r in reference.ranked([query.sweep_id(reference, sweep)],
                                                                  reading.Where(), None)]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # In memory where the system has a RAM disk: each of the ~150 runs is two commits, and an fsync per commit
    # on a busy disk triples the time it takes to write the store.
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(prefix="ts-reading-", dir=shm if shm.is_dir() else None) as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        write_store(uri)
        yield uri


def test_sql_reader_answers_as_the_mlflow_client(store: str) -> None:
    fast = query.open_fast(store)
    assert isinstance(fast, sqlread.SqlReader)
    reference = reading.SearchReader(MlflowClient(store))
    assert_same_answers(fast, reference)
    objective, got = json.loads(answer(fast, "acc", {"top": 100, "max_density": 1.0}))
    assert objective == "accuracy_at_density"
    assert len(got) == 7 * 3 and got[-1]["val_score"] is None  # missing and NaN scores last, none deleted
    assert all(r["val_score"] != 1.0 for r in got)
    assert {tuple(r["controls"]) for r in got} == {("shuffle",), ("reinit", "shuffle")}
    twice = [r for r in got if r["flat"]["prune.rate"].startswith("0.24") and r["level"] == 1]
    assert twice[0]["controls"]["shuffle"] == pytest.approx(twice[0]["val_score"] - 0.01)  # the later control


def test_the_fast_path_falls_back_to_the_client_on_a_store_it_cannot_read(store: str, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: sqlread.SqlReader, sql: str, params: Any = None) -> list[Any]:
        raise reading.Unavailable("no such table: runs")

    expected = best_tickets(store, sweep="front")
    monkeypatch.setattr(sqlread.SqlReader, "rows", broken)
    assert best_tickets(store, sweep="front") == expected  # answered by MLflow, silently
    monkeypatch.setenv(reading.READ_ENV, "mlflow")
    assert query.open_fast(store) is None


PROBE = """
import sys
from search.cli import main
assert main(["best", "--sweep", "acc", "--tracking-uri", sys.argv[1]]) == 0
assert main(["best", "--sweep", "front", "--json", "--tracking-uri", sys.argv[1]]) == 0
heavy = ("mlflow", "torch", "ray", "optuna", "sqlalchemy", "pandas", "numpy", "requests")
print("IMPORTED", ",".join(m for m in heavy if m in sys.modules))
"""


def test_best_on_a_sqlite_store_imports_no_heavy_library(store: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != reading.READ_ENV}
    out = subprocess.run([sys.executable, "-c", PROBE, store], capture_output=True, text=True, timeout=120,
                         check=True, env=env).stdout
    assert "Best tickets of 'acc'" in out and "Pareto front" not in out  # --json prints no title
    assert out.splitlines()[-1] == "IMPORTED ", out.splitlines()[-1]


@pytest.mark.slow
def test_postgres_and_server_readers_answer_as_the_mlflow_client(tmp_path: Path) -> None:
    from tests.helpers.servers import MlflowServer, postgres_database

    with postgres_database("ts_reading") as pg:
        write_store(pg)
        fast = query.open_fast(pg)
        assert isinstance(fast, sqlread.SqlReader)
        assert_same_answers(fast, reading.SearchReader(MlflowClient(pg)))
        with MlflowServer(pg, tmp_path / "artifacts") as server:
            rest = query.open_fast(server.uri)
            assert isinstance(rest, reading.SearchReader) and isinstance(rest.client, restread.RestClient)
            assert_same_answers(rest, reading.SearchReader(MlflowClient(server.uri)))
            env = {k: v for k, v in os.environ.items() if k != reading.READ_ENV}
            out = subprocess.run([sys.executable, "-c", PROBE, server.uri], capture_output=True, text=True,
                                 timeout=120, check=True, env=env).stdout
            assert out.splitlines()[-1] == "IMPORTED ", out.splitlines()[-1]


def test_the_rest_client_sends_the_credentials_mlflow_would(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", *reading.FAST_OFF):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert "Authorization" not in restread.RestClient.open("http://127.0.0.1:5000").headers
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok")
    assert restread.RestClient.open("http://h:5000/").headers["Authorization"] == "Bearer tok"
    (tmp_path / ".mlflow").mkdir()
    (tmp_path / ".mlflow" / "credentials").write_text("[mlflow]\nmlflow_tracking_username = ann\n"
                                                     "mlflow_tracking_password = pw\n")
    client = restread.RestClient.open("https://h/prefix/")
    assert client.headers["Authorization"] == "Basic YW5uOnB3"  # ann:pw, before the token, as MLflow does
    assert client.host == "https://h/prefix" and client.context is not None
    monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "my-plugin")  # an auth plugin signs requests: MLflow's job
    assert query.open_fast("http://h:5000") is None
    assert restread.RestClient.open("http://user:pw@h:5000") is None  # credentials in the URI: left to MLflow


def test_an_unreachable_server_leaves_the_answer_to_the_mlflow_client() -> None:
    from tests.helpers.servers import free_port

    client = restread.RestClient.open(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(reading.Unavailable, match="experiments/get-by-name"):
        client.get_experiment_by_name("acc")
