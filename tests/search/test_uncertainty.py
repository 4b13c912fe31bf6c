"""Uncertainty over replicates end to end: results.json, Ray and MLflow carry it; `best` shows and ranks by
it; `confirm` retrains a ticket on new seeds; `plot` draws the level curves with interval bars.

One tiny real sweep record (no Ray: the tracking module's `prepare` and `MlflowSink` around a real
`Lottery`, as in test_query.py): digits, a 16-unit MLP, 1 epoch per level, 2 replicates, a shuffle control.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from search.cli import main
from search.results.confirm import confirm_ticket
from search.results.plot import control_scores, draw
from search.results.query import best_tickets, sweep_tickets
from search.tracking import schema as S
from search.tracking.sink import MlflowSink
from search.tracking.store import prepare
from tests.search.test_query import parse
from trainables import stats
from trainables.config import ConfigError, Ticket
from trainables.io.results import write_results
from trainables.lottery import Lottery
from trainables.trial import level_metrics

FLAT = {"train.epochs": 1, "prune.levels": 2, "prune.rate": 0.5, "model.name": "mlp", "model.widths": "16",
        "prune.controls": "shuffle", "prune.replicates": 2, "train.device": "cpu"}


@pytest.fixture(scope="module")
def reps(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("reps")
    uri = f"sqlite:///{root}/mlflow.db"
    tr = prepare(uri, "reps", str(root / "artifacts"), {"objective": "accuracy_at_density"})
    ticket = Ticket.from_flat(FLAT)
    sink = MlflowSink(tr)
    sink.start("t-reps", ticket.flat())
    lottery = Lottery(ticket, on_epoch=sink.epoch)
    results = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 16-unit MLP trains fastest on one thread, above all on a busy box
    try:
        for result in lottery.run():
            sink.level(result, lottery.state.rewind[0] if result.level == 0 else None)
            results.append((result, level_metrics(result, lottery.state)))
    finally:
        torch.set_num_threads(threads)
    sink.finish("FINISHED")
    write_results(root / "out", ticket.flat(), [r for r, _ in results], None)
    return uri, root, results


def test_every_score_carries_mean_std_n_interval_and_paired_margins(reps):
    uri, root, results = reps
    last, ray = results[-1]
    tickets = sorted((m for m in last.members if m.member == "ticket"), key=lambda m: m.replicate)
    shuffles = sorted((m for m in last.members if m.member == "shuffle"), key=lambda m: m.replicate)
    for key in stats.SCORES:
        s = stats.summary(getattr(m, key) for m in tickets)
        assert s.n == 2 and last.stats[f"{key}_ci95"] == pytest.approx(s.ci95) and s.ci95 > 0
    margin = stats.paired([m.val_score for m in tickets], [m.val_score for m in shuffles])
    assert last.margins["shuffle"]["val_score_mean"] == pytest.approx(margin.mean)
    assert last.margins["shuffle"]["val_score_ci95"] == pytest.approx(margin.ci95)
    # Ray results
    assert ray["val_score_std"] == last.stats["val_score_std"] and ray["test_loss_n"] == 2
    assert ray["margin_shuffle_val_score_ci95"] == pytest.approx(margin.ci95)
    # results.json
    doc = json.loads((root / "out" / "results.json").read_text())["levels"][-1]
    assert doc["stats"]["val_acc_mean"] == pytest.approx(statistics.fmean(m.val_acc for m in tickets))
    assert doc["margins"]["shuffle"]["test_score_n"] == 2
    # MLflow: the ticket run and the control's own run
    rec = [r for r in sweep_tickets(uri, "reps") if r.level == last.level][0]
    assert rec.stats["val_score_mean"] == pytest.approx(rec.val_score)
    assert rec.stats["test_acc_ci95"] == pytest.approx(last.stats["test_acc_ci95"])
    assert rec.margins["shuffle"]["val_score_ci95"] == pytest.approx(margin.ci95)
    control = control_scores(uri, MlflowClient(uri).get_experiment_by_name("reps").experiment_id)
    assert control[(rec.trial_run_id, last.level)]["shuffle"]["val_score_ci95"] == \
        pytest.approx(stats.summary(m.val_score for m in shuffles).ci95)


def _synthetic(uri: str, tmp_path: Path) -> dict[str, str]:
    """Sweep `syn` (in the reps store: a fresh store costs seconds): three ticket runs whose mean and
    lower-bound orders differ, a wide, a narrow and an unreplicated one."""
    tr = prepare(uri, "syn", str(tmp_path / "a"), {"objective": "accuracy_at_density", "target_density": 0.5})
    client, ids = MlflowClient(uri), {}
    for name, mean, ci, n in (("wide", 0.90, 0.08, 3), ("narrow", 0.88, 0.01, 3), ("single", 0.91, None, 1)):
        tags = {S.KIND: S.TICKET, S.TAG_MEMBER: S.MEMBER_TICKET, S.TAG_SWEEP: "syn", S.TAG_LEVEL: "1",
                S.PARENT_TAG: tr.parent_run_id}
        run_id = client.create_run(tr.experiment_id, tags=tags).info.run_id
        flat = stats.Summary(mean, 0.01 if ci else None, n, ci).flat("val_score")
        for k, v in {**flat, "val_score": mean, "density": 0.25, "sparsity": 0.75, "level": 1.0}.items():
            client.log_metric(run_id, k, v)
        client.log_param(run_id, "data.name", "digits")
        ids[run_id] = name
    return ids


def test_best_shows_intervals_and_ranks_by_mean_or_lower_bound(reps, tmp_path, capsys):
    uri = reps[0]
    ids = _synthetic(uri, tmp_path)
    by_mean = [ids[r.run_id] for r in best_tickets(uri, sweep="syn")]
    assert by_mean == ["single", "wide", "narrow"]
    by_lcb = [ids[r.run_id] for r in best_tickets(uri, sweep="syn", rank="lcb")]
    assert by_lcb == ["narrow", "wide", "single"]  # 0.87 > 0.82 > no lower bound
    assert [ids[r.run_id] for r in best_tickets(uri, sweep="syn", rank="lcb", top=1)] == ["narrow"]
    args = parse("best", "--sweep", "syn", "--rank", "lcb", "--tracking-uri", uri)
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "88.0 ± 1.0%" in out and "90.0 ± 8.0%" in out and "lower end" in out
    assert "intervals: 0 of 2 neighbouring pairs in the top 3 do not overlap" in out
    assert out.index("88.0 ± 1.0%") < out.index("90.0 ± 8.0%")
    args = parse("best", "--sweep", "syn", "--json", "--tracking-uri", uri)
    assert args.handler(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc[1]["stats"] == {"val_score_mean": 0.9, "val_score_std": 0.01, "val_score_n": 3.0,
                               "val_score_ci95": 0.08}
    with pytest.raises(ConfigError, match="--rank: 'max' is not a ranking; valid: mean, lcb"):
        best_tickets(uri, sweep="syn", rank="max")


def test_confirm_retrains_on_new_seeds_and_best_lists_it(reps, capsys):
    uri, _, results = reps
    rec = [r for r in sweep_tickets(uri, "reps") if r.level == 1][0]  # IMP stops at the ticket's level
    c = confirm_ticket(rec.run_id, 2, uri)
    client = MlflowClient(uri)
    children = client.search_runs([client.get_run(rec.run_id).info.experiment_id],
                                  f"tags.`{S.PARENT_TAG}` = '{rec.run_id}'")
    assert sorted(r.data.params["train.seed"] for r in children) == ["1", "2"] == sorted(map(str, c.seeds))
    assert {r.data.tags[S.KIND] for r in children} == {S.CONFIRM_KIND}
    assert all(r.data.metrics["level"] == 1 and r.data.params["prune.replicates"] == "1" for r in children)
    vals = [r.data.metrics["val_score"] for r in children]
    diffs = [r.data.metrics["val_score"] - r.data.metrics["shuffle_val_score"] for r in children]
    run = client.get_run(rec.run_id)
    assert run.data.tags[S.CONFIRMED] == "true" and run.data.tags[S.TAG_SEEDS] == "1,2"
    m = run.data.metrics
    assert m["confirmed_val_score_n"] == 2
    assert m["confirmed_val_score_ci95"] == pytest.approx(stats.summary(vals).ci95)
    assert m["confirmed_margin_shuffle_val_score_mean"] == pytest.approx(statistics.fmean(diffs))
    assert m["confirmed_density_mean"] == pytest.approx(results[1][0].density, abs=0.01)
    confirmed = best_tickets(uri, sweep="reps", confirmed=True, max_density=1.0)
    assert [r.run_id for r in confirmed] == [rec.run_id]
    assert confirmed[0].confirmed["val_score_mean"] == pytest.approx(statistics.fmean(vals))
    args = parse("best", "--sweep", "reps", "--confirmed", "--max-density", "1", "--tracking-uri", uri)
    capsys.readouterr()
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    shown = stats.summary(vals)
    assert "confirmed val" in out and f"{100 * shown.mean:.1f} ± {100 * shown.ci95:.1f}%" in out


def test_confirm_refuses_a_bad_run_id_or_a_run_that_is_not_a_ticket(reps, capsys):
    uri, _, _ = reps
    trial = [r for r in sweep_tickets(uri, "reps")][0].trial_run_id
    assert main(["confirm", "nope", "--seeds", "2", "--tracking-uri", uri]) == 2
    assert capsys.readouterr().err.strip() == "error: run id: 'nope' is not an MLflow run id (32 hex characters)"
    assert main(["confirm", trial, "--tracking-uri", uri]) == 2
    assert f"run {trial} is not a ticket run: it is a trial run" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--seeds: need a count from 1 to 100, got 0"):
        confirm_ticket(trial, 0, uri)


def test_plot_draws_ticket_and_control_against_weights_remaining(reps, tmp_path):
    uri, _, results = reps
    records = sweep_tickets(uri, "reps")
    exp = MlflowClient(uri).get_experiment_by_name("reps").experiment_id
    series = draw(records, "reps", tmp_path / "p.png", control_scores(uri, exp))
    assert (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")
    ticket, shuffle = series
    assert (ticket.member, shuffle.member) == ("ticket", "shuffle")
    assert ticket.remaining == pytest.approx(tuple(100 * r.density for r, _ in results))
    assert ticket.score == pytest.approx(tuple(100 * r.stats["val_score_mean"] for r, _ in results))
    assert ticket.ci95 == pytest.approx(tuple(100 * r.stats["val_score_ci95"] for r, _ in results))
    assert len(shuffle.remaining) == 2  # the pruned levels; the dense level has no control
    assert shuffle.ci95[-1] == pytest.approx(100 * results[-1][0].controls["shuffle"]["val_score_ci95"])
    assert all(math.isfinite(x) for x in shuffle.score)
