"""Querying tickets out of a real MLflow sqlite store: best tickets, filters, controls, Pareto fronts, CLI.

`build_record` writes two small but real sweeps once per session (without Ray): the tracking module's
`prepare` and `MlflowSink`, driven by hand around real `Lottery` searches on digits. test_export.py
reuses it through `record()`.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from search.cli import results as querycmd
from search.results import query
from search.results.query import TicketRecord, best_tickets
from search.sweep import objectives
from search.sweep.objectives import pareto_front
from search.tracking.sink import MlflowSink
from search.tracking.store import prepare
from trainables.config import ConfigError, Ticket
from trainables.lottery import Lottery

BASE = {"train.epochs": 1, "prune.levels": 2, "model.name": "mlp", "model.widths": "16",
        "prune.controls": "shuffle", "train.device": "cpu"}
DEMO = {"t-mag": {"prune.scorer": "magnitude", "prune.rate": 0.5},
        "t-rand": {"prune.scorer": "random", "prune.rate": 0.5},
        "t-mag3": {"prune.scorer": "magnitude", "prune.rate": 0.3, "train.seed": 1}}
FRONT = {"f-a": {"prune.rate": 0.5, "prune.controls": ""}, "f-b": {"prune.rate": 0.3, "prune.controls": ""}}


@dataclass
class Record:
    uri: str
    root: Path
    tickets: dict[str, Ticket]  # Ray-style trial id -> the ticket searched
    rewinds: dict[str, dict[str, torch.Tensor]]  # trial id -> weights the ticket restarts from


def _run_sweep(uri: str, root: Path, name: str, objective: str, trials: dict, out: Record) -> None:
    tr = prepare(uri, name, str(root / "artifacts"), {"objective": objective})
    for trial_id, overrides in trials.items():
        ticket = Ticket.from_flat({**BASE, **overrides})
        sink = MlflowSink(tr)
        sink.start(trial_id, ticket.flat())
        lottery = Lottery(ticket, on_epoch=sink.epoch)
        for result in lottery.run():
            sink.level(result, lottery.state.rewind[0] if result.level == 0 else None)
        sink.finish("FINISHED")
        out.tickets[trial_id] = ticket
        out.rewinds[trial_id] = {k: v.clone() for k, v in lottery.state.rewind[0].items()}


_CACHE: dict[str, Record] = {}


def build_record(tmp_path_factory: pytest.TempPathFactory) -> Record:
    """Sweeps `demo` (accuracy_at_density, 3 trials with shuffle controls) and `front` (pareto, 2 trials)."""
    if "record" not in _CACHE:
        root = tmp_path_factory.mktemp("store")
        rec = Record(f"sqlite:///{root}/mlflow.db", root, {}, {})
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a 16-unit MLP trains fastest on one thread, above all on a busy box
        try:
            _run_sweep(rec.uri, root, "demo", "accuracy_at_density", DEMO, rec)
            _run_sweep(rec.uri, root, "front", "pareto", FRONT, rec)
        finally:
            torch.set_num_threads(threads)
        _CACHE["record"] = rec
    return _CACHE["record"]


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> Record:
    return build_record(tmp_path_factory)


def trial_id_of(rec: Record, r: TicketRecord) -> str:
    return MlflowClient(rec.uri).get_run(r.run_id).data.tags["trial"]


# -- best ----------------------------------------------------------------------------------------------

def test_best_ranks_ticket_runs_by_val_score(record):
    records = best_tickets(record.uri, sweep="demo", top=100)
    assert len(records) == 3 * 3  # 3 trials x levels 0..2; control runs are not tickets
    scores = [r.val_score for r in records]
    assert scores == sorted(scores, reverse=True)
    client = MlflowClient(record.uri)
    for r in records:
        tags = client.get_run(r.run_id).data.tags
        assert (tags["kind"], tags["member"], r.sweep) == ("ticket", "ticket", "demo")
        assert r.trial_run_id == tags["mlflow.parentRunId"] and math.isclose(r.sparsity, 1 - r.density)
    assert [r.run_id for r in best_tickets(record.uri, sweep="demo", top=4)] == [r.run_id for r in records[:4]]


def test_best_across_all_sweeps_ranks_everything(record):
    records = best_tickets(record.uri, top=100)
    assert {r.sweep for r in records} == {"demo", "front"} and len(records) == 9 + 6
    assert [r.val_score for r in records] == sorted((r.val_score for r in records), reverse=True)


def test_max_density_filter(record):
    everything = best_tickets(record.uri, sweep="demo", top=100)
    capped = best_tickets(record.uri, sweep="demo", max_density=0.5, top=100)
    assert capped and all(r.density <= 0.5 for r in capped)
    assert {r.run_id for r in capped} == {r.run_id for r in everything if r.density <= 0.5}
    assert len(capped) < len(everything)


def test_dataset_scorer_and_model_filters(record):
    random_scored = best_tickets(record.uri, sweep="demo", scorer="random", top=100)
    assert len(random_scored) == 3 and {r.scorer for r in random_scored} == {"random"}
    assert len(best_tickets(record.uri, sweep="demo", dataset="digits", model="mlp", top=100)) == 9
    assert best_tickets(record.uri, sweep="demo", dataset="mnist") == []
    with pytest.raises(ConfigError, match="--scorer: .* is not a valid name"):
        best_tickets(record.uri, scorer="x' or tags.kind = 'trial")


def test_records_rebuild_the_searched_ticket(record):
    for r in best_tickets(record.uri, sweep="demo", top=100):
        assert r.ticket() == record.tickets[trial_id_of(record, r)]
        assert Ticket.from_flat(r.flat) == r.ticket()


def test_control_margins_are_ticket_minus_control(record):
    client = MlflowClient(record.uri)
    for r in best_tickets(record.uri, sweep="demo", top=100):
        controls = client.search_runs(
            [client.get_experiment_by_name("demo").experiment_id],
            f"tags.member = 'shuffle' and tags.`mlflow.parentRunId` = '{r.trial_run_id}' and "
            f"tags.level = '{r.level}'")
        if r.level == 0:  # the dense level has nothing to control for
            assert controls == [] and r.controls == {}
            continue
        assert len(controls) == 1
        assert r.controls == {"shuffle": pytest.approx(r.val_score - controls[0].data.metrics["val_score"])}
    assert all(r.controls == {} for r in best_tickets(record.uri, sweep="front"))


def test_default_tracking_uri_comes_from_the_environment(record, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", record.uri)
    assert len(best_tickets(sweep="demo", top=2)) == 2
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    assert query.default_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/runs/mlflow.db"
    with pytest.raises(ConfigError, match="no MLflow store at .*runs/mlflow.db"):
        best_tickets()


def test_unknown_sweep_and_bad_arguments(record):
    with pytest.raises(ConfigError, match="unknown sweep 'nope'; known sweeps: .*demo"):
        best_tickets(record.uri, sweep="nope")
    with pytest.raises(ConfigError, match=r"--max-density: 1.5 is outside \(0, 1\]"):
        best_tickets(record.uri, max_density=1.5)
    with pytest.raises(ConfigError, match="--top: need a positive count"):
        best_tickets(record.uri, top=0)


# -- Pareto fronts -------------------------------------------------------------------------------------

def assert_is_front(front: list[TicketRecord], pool: list[TicketRecord]) -> None:
    ids = {id(r) for r in front}
    assert all(not objectives.dominates(q, r) for r in front for q in pool)
    assert all(any(objectives.dominates(f, r) for f in front) for r in pool if id(r) not in ids)
    assert [r.sparsity for r in front] == sorted(r.sparsity for r in front)


def synthetic(points: list[tuple[float, float]]) -> list[TicketRecord]:
    return [TicketRecord(f"{i:032x}", "", "s", 0, 1 - s, s, v, v, v, False) for i, (v, s) in enumerate(points)]


grid = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])  # a coarse grid makes ties common


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(grid, grid), max_size=12))
def test_pareto_front_is_exactly_the_non_dominated_set(points):
    pool = synthetic(points)
    assert_is_front(pareto_front(pool), pool)


def test_pareto_front_on_a_known_example():
    pool = synthetic([(0.9, 0.1), (0.8, 0.5), (0.85, 0.4), (0.7, 0.5), (0.5, 0.9), (0.9, 0.05),
                      (math.nan, 0.99)])
    assert [(r.val_score, r.sparsity) for r in pareto_front(pool)] == [(0.9, 0.1), (0.85, 0.4), (0.8, 0.5),
                                                                      (0.5, 0.9)]
    assert pool[-1].to_json()["val_score"] is None and len({*pool}) == len(pool)  # JSON-safe, hashable
    shuffled = pool[:]
    random.Random(0).shuffle(shuffled)
    assert pareto_front(shuffled) == pareto_front(pool)


def test_pareto_sweep_best_is_its_front(record):
    front = best_tickets(record.uri, sweep="front", top=1)  # top caps ranked lists, not a front
    pool = query.sweep_tickets(record.uri, "front")
    assert len(pool) == 6 and front == pareto_front(pool)
    by_id = {r.run_id: r for r in pool}
    assert_is_front([by_id[r.run_id] for r in front], pool)


# -- CLI -----------------------------------------------------------------------------------------------

def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    querycmd.add_parsers(parser.add_subparsers(dest="verb", required=True))
    return parser.parse_args(argv)


def test_best_command_prints_a_table_and_json(record, capsys):
    args = parse("best", "--sweep", "demo", "--top", "3", "--tracking-uri", record.uri)
    assert args.handler(args) == 0
    assert "Best tickets of 'demo'" in capsys.readouterr().out
    args = parse("best", "--sweep", "demo", "--json", "--max-density", "0.5", "--tracking-uri", record.uri)
    assert args.handler(args) == 0
    doc = json.loads(capsys.readouterr().out)
    expected = best_tickets(record.uri, sweep="demo", max_density=0.5)
    assert [d["run_id"] for d in doc] == [r.run_id for r in expected]
    assert TicketRecord(**doc[0]) == replace(expected[0])
    args = parse("best", "--sweep", "front", "--tracking-uri", record.uri)
    assert args.handler(args) == 0 and "Pareto front of 'front'" in capsys.readouterr().out


def test_best_command_empty_result_and_errors(record, capsys):
    args = parse("best", "--sweep", "demo", "--dataset", "cifar10", "--tracking-uri", record.uri)
    assert args.handler(args) == 0
    assert "No ticket runs in sweep 'demo' match" in capsys.readouterr().out
    args = parse("best", "--sweep", "missing", "--tracking-uri", record.uri)
    with pytest.raises(ConfigError, match="unknown sweep 'missing'"):
        args.handler(args)
