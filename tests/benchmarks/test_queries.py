"""The query benchmark's store filler and what the fast queries answer on it: the Pareto front walked by
narrowing queries is exactly the front of every ticket (scores are quantised, so ties occur) while reading a
fraction of the runs; the best tickets and control margins match a brute-force answer; RESULTS.md keeps one
queries section."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

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


class Held:
    """A client that holds one walk of the front (by its order) after its first search until the other walk has
    ended the search: the two walks finish in a forced order, each in turn first."""

    def __init__(self, client: Any, held: str, meets: list[Any]) -> None:
        self.client, self.held, self.meets = client, held, meets
        self.calls: list[tuple[str, str, str | None, str | None]] = []  # (walk, filter, token in, token out)

    def search_runs(self, ids: list[str], text: str, *, order_by: list[str], page_token: str | None = None,
                    **kwargs: Any) -> Any:
        if self.held and order_by[0].startswith(self.held) and any(c[0] == order_by[0] for c in self.calls):
            assert self.meets[0].done.wait(timeout=60), "the other walk never ended the search"
        page = self.client.search_runs(ids, text, order_by=order_by, page_token=page_token, **kwargs)
        self.calls.append((order_by[0], text, page_token, page.token))
        return page


@pytest.mark.parametrize("page", [3, 20])
@pytest.mark.parametrize(("ends", "held"), [(1, ""), (2, ""), (2, "metrics.val_score"), (2, "metrics.sparsity")])
def test_a_front_walked_from_one_or_both_ends_holds_the_whole_front(uri: str, monkeypatch: pytest.MonkeyPatch,
                                                                   page: int, ends: int, held: str) -> None:
    monkeypatch.setattr(fetch, "FRONT_PAGE", page)
    every = sweep_tickets(uri, "front")
    truth = {r.run_id for r in pareto_front(every)}
    meets: list[Any] = []
    real = fetch.Meet

    def meet() -> Any:
        meets.append(real())
        return meets[-1]

    monkeypatch.setattr(fetch, "Meet", meet)
    client = client_for(uri)
    watched = Held(client, held, meets)
    read = fetch.front_candidates(watched, [experiment_id(client, "front")], ticket_filter(),  # type: ignore[arg-type]
                                  ends=ends)
    ids = [r.info.run_id for r in read]
    assert truth <= set(ids) and len(ids) == len(set(ids)) and len(ids) < len(every) / 3, (len(truth), len(ids))
    points = [(r.data.metrics["val_score"], r.data.metrics["sparsity"]) for r in read]
    assert points == sorted(points, reverse=True)  # MLflow's order: val_score, then sparsity, descending
    for walk in {c[0] for c in watched.calls}:  # a page token goes on the query that issued it, unchanged
        mine = [c for c in watched.calls if c[0] == walk]
        assert all(b[1] == a[1] and b[2] == a[3] for a, b in zip(mine, mine[1:], strict=False) if b[2]), mine
    if held:  # the other walk meets it and ends the search: the held one stops after the query it was in
        assert sum(walk == held for walk, *_ in watched.calls) <= 2, watched.calls


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
