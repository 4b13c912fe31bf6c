"""A structured ticket with sanity controls, through a real MLflow store: its margins, its trained weights,
`best --structure`, and `export --format masked|compact|sparse` reloaded by plain torch in another process;
a 2:4 ticket's `sparse` export with PyTorch's semi-structured layers where a GPU allows, a one-line reason
where not."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from search.cli.results import export_command
from search.results.export import export_ticket
from search.results.query import best_tickets
from search.tracking import schema as S
from search.tracking.sink import MlflowSink
from search.tracking.store import prepare
from trainables.config import ConfigError, Ticket
from trainables.io import semistructured as semi
from trainables.io.exported import TOLERANCE
from trainables.io.latency import measure_latency
from trainables.io.packing import unpack
from trainables.lottery import Lottery
from trainables.tasks.registry import build_model

CONFIG = {"model.name": "mlp", "model.widths": "32,16", "train.epochs": 1, "train.device": "cpu",
          "prune.method": "init", "prune.scorer": "snip", "prune.structure": "channel",
          "prune.target_density": 0.3, "prune.controls": "shuffle,invert", "prune.replicates": 2}

RELOAD = """
import sys, torch
x = torch.load(sys.argv[1], weights_only=True)
for path in sys.argv[2:]:
    torch.save(torch.jit.load(path)(x), path + ".out")
assert not any(m.split(".")[0] in ("trainables", "search") for m in sys.modules)
"""


def test_channel_ticket_records_margins_trained_weights_and_exports_three_ways(tmp_path: Path,
                                                                               one_thread: None) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tr = prepare(uri, "structured", str(tmp_path / "artifacts"), {"objective": "latency_pareto"})
    ticket = Ticket.from_flat(CONFIG)
    sink = MlflowSink(tr)
    sink.start("t-chan", ticket.flat())
    lottery = Lottery(ticket)
    for result in lottery.run():  # as a trial of a latency_pareto sweep does (trainables/trial.py)
        result.latency_ms = measure_latency(ticket, lottery.task.input_shape, lottery.task.num_outputs,
                                            result.weights, result.mask)
        sink.level(result, lottery.state.rewind[0])
    sink.finish("FINISHED")

    (record,) = best_tickets(uri, sweep="structured", structure="channel")  # ranked by latency_pareto's front
    assert record.latency_ms == pytest.approx(result.latency_ms) and 0 < record.latency_ms < 50
    assert best_tickets(uri, sweep="structured", structure="2:4") == []
    run = MlflowClient(uri).get_run(record.run_id)
    assert run.data.tags["structure"] == "channel"
    m = run.data.metrics
    assert m["margin_shuffle_test_score_mean"] == pytest.approx(result.margins["shuffle"]["test_score_mean"])
    half = m["margin_invert_test_score_ci95"]  # two replicates: a paired interval (trainables/stats.py)
    assert half > 0 and m["margin_invert_test_score_n"] == 2
    assert m[S.MASK_INFORMATION] in (0.0, 1.0)

    # the masked network as trained: rebuilt from the level's own record of its weights
    model = build_model(ticket, lottery.task.input_shape, lottery.task.num_outputs)
    model.load_state_dict(unpack(result.weights, result.mask))
    x = torch.randn(5, *lottery.task.input_shape)
    with torch.no_grad():
        expected = model.eval()(x)
    torch.save(x, tmp_path / "x.pt")
    models = []
    for fmt in ("masked", "compact", "sparse"):
        out = export_ticket(record.run_id, tmp_path / fmt, uri, fmt=fmt)
        doc = json.loads((out / "ticket.json").read_text())
        assert doc["format"] == fmt and "semistructured" not in doc  # a channel ticket: no 2:4 layers
        models.append(str(out / "model.pt"))
    # plain torch, in a fresh isolated interpreter that cannot import this project
    subprocess.run([sys.executable, "-I", "-c", RELOAD, str(tmp_path / "x.pt"), *models], check=True,
                   cwd=tmp_path, timeout=120)
    for path in models:
        got = torch.load(path + ".out", weights_only=True)
        assert (got - expected).abs().max() <= TOLERANCE, path
    compact = torch.jit.load(models[1])
    assert sum(p.numel() for p in compact.parameters()) < 0.5 * sum(p.numel() for p in model.parameters())
    with pytest.raises(ConfigError, match=r"--format: unknown value 'dense'; valid choices: masked, compact, sparse"):
        export_ticket(record.run_id, tmp_path / "bad", uri, fmt="dense")


@pytest.mark.slow  # a 2:4 search and an export: about 20 s on a shared core
def test_a_2_4_ticket_exports_semi_structured_layers_or_says_why_not(tmp_path: Path, one_thread: None,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tr = prepare(uri, "nm", str(tmp_path / "artifacts"), {})
    ticket = Ticket.from_flat({**CONFIG, "model.widths": "64,32", "prune.structure": "2:4", "prune.controls": "",
                               "prune.replicates": 1, "prune.scorer": "magnitude", "prune.target_density": 0.5})
    sink = MlflowSink(tr)
    sink.start("t-nm", ticket.flat())
    lottery = Lottery(ticket)
    for result in lottery.run():
        sink.level(result, lottery.state.rewind[0])
    sink.finish("FINISHED")
    (record,) = best_tickets(uri, sweep="nm")
    args = argparse.Namespace(run_id=record.run_id, out=str(tmp_path / "out"), tracking_uri=uri, format="sparse")
    assert export_command(args) == 0
    doc = json.loads((tmp_path / "out" / "ticket.json").read_text())["semistructured"]
    printed = " ".join(capsys.readouterr().out.split())
    reason = semi.why_not()
    if reason is not None:  # this machine: model.pt keeps CSR, and the CLI says why in one line
        assert doc == {"used": False, "why": f"2:4 semi-structured format not used: {reason} (model.pt keeps CSR "
                                             "layers)"}
        assert doc["why"] in printed
    else:  # 8x8 digits: fc1 64x64 and fc2 32x64 qualify, the 10x32 output layer does not
        assert doc["used"] and doc["layers"] == ["fc1.weight", "fc2.weight"] and list(doc["dense"]) == ["fc3.weight"]
        assert "2:4 layers fc1.weight, fc2.weight in PyTorch's semi-structured format" in printed
