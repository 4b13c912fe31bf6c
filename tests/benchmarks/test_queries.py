"""The query benchmark's store filler and what the fast queries answer on it: the Pareto front walked by
narrowing queries is exactly the front of every ticket (scores are quantised, so ties occur) while reading a
fraction of the runs; the best tickets and control margins match a brute-force answer; RESULTS.md keeps one
queries section."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks.fill import CONTROLS, fill
from benchmarks.queries import END, START, write_section
from search.results import fetch
from search.results.query import best_tickets, client_for, experiment_id, sweep_tickets
from search.results.reading import ticket_filter
from search.sweep.objectives import pareto_front


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("queries")
    uri = f"sqlite:///{tmp}/mlflow.db"
    fill(uri, str(tmp / "artifacts"), sweep="acc", objective="accuracy_at_density", tickets=100, seed=0)
    fill(uri, str(tmp / "artifacts"), sweep="front", objective="pareto", tickets=150, seed=1)
    return uri


def test_the_walked_front_is_the_whole_front_from_a_fraction_of_the_runs(uri: str) -> None:
    every = sweep_tickets(uri, "front")
    assert len(every) == 150
    truth = pareto_front(every)
    got = best_tickets(uri, sweep="front")
    assert [r.run_id for r in got] == [r.run_id for r in truth]
    client = client_for(uri)
    read = fetch.front_candidates(client, [experiment_id(client, "front")], ticket_filter())
    assert len(read) < len(every) / 4, len(read)


def test_best_and_its_control_margins_match_brute_force(uri: str) -> None:
    every = [r for r in sweep_tickets(uri, "acc") if r.density <= 0.2 + 1e-9]
    got = best_tickets(uri, sweep="acc", top=5)
    assert [r.val_score for r in got] == sorted((r.val_score for r in every), reverse=True)[:5]
    client = client_for(uri)
    for r in got:
        assert set(r.controls) == set(CONTROLS)
        controls = fetch.controls_of(client, client.get_run(r.run_id))  # the control runs themselves
        for name, margin in r.controls.items():
            assert math.isclose(margin, r.val_score - controls[name])


def test_the_results_file_keeps_one_queries_section(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\n| a | b |\n")
    write_section(f"{START}\nfirst\n{END}\n", path)
    write_section(f"{START}\nsecond\n{END}\n", path)
    text = path.read_text()
    assert text.startswith("# Benchmark results") and text.count(START) == 1 and "second" in text
