"""Tickets native to MLflow: what the idempotent writers leave for MLflow's own views (run names, the dataset
input, one LoggedModel per ticket with its metrics linked, the layer-density picture, the experiment's
description), `best --register`, and system metrics. The store is written by the driver's reconciliation from a
hand-made Ray record (the `written` fixture, tests/search/conftest.py), so no Ray is needed; MLflow is a real
sqlite store."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import mlflow
import pytest
from mlflow.entities import LoggedModelStatus

from search.cli import main
from search.results.query import best_tickets
from search.tracking import native
from search.tracking import schema as S
from tests.helpers.sweepcheck import runs_of

NAME = re.compile(r"magnitude r0\.20 k0 L[01] \d{1,3}\.\d%( shuffle)?")


def test_ticket_runs_have_names_a_person_can_scan(written: dict[str, Any]) -> None:
    names = sorted(r.info.run_name for r in runs_of(written["uri"], "sw", S.TICKET))
    assert len(names) == 3 and all(NAME.fullmatch(n) for n in names), names  # levels 0-1; shuffle from level 1
    assert sum(n.endswith(" shuffle") for n in names) == 1


def test_the_dataset_and_the_sweep_description_are_logged(written: dict[str, Any]) -> None:
    client = written["client"]
    for trial in runs_of(written["uri"], "sw", S.TRIAL):
        inputs = client.get_run(trial.info.run_id).inputs.dataset_inputs
        assert [(i.dataset.name, len(i.dataset.digest)) for i in inputs] == [("digits", 8)]
    note = client.get_experiment(written["tracking"].experiment_id).tags[native.DESCRIPTION_TAG]
    assert "sw" in note and "objective" in note and "accuracy_at_density" in note


def test_each_ticket_is_one_logged_model_ranked_like_best(written: dict[str, Any]) -> None:
    client, exp = written["client"], written["tracking"].experiment_id
    mlflow.set_tracking_uri(written["uri"])
    models = mlflow.search_logged_models(experiment_ids=[exp], output_format="list",
                                         order_by=[{"field_name": "metrics.val_score", "ascending": False}])
    tickets = [r for r in runs_of(written["uri"], "sw", S.TICKET) if r.data.tags[S.TAG_MEMBER] == S.MEMBER_TICKET]
    assert sorted(m.source_run_id for m in models) == sorted(r.info.run_id for r in tickets)  # exactly one each
    assert all(m.status == LoggedModelStatus.READY and m.model_type == native.MODEL_TYPE for m in models)
    scores = [next(x.value for x in m.metrics if x.key == "val_score") for m in models]
    assert scores == sorted(scores, reverse=True)
    best = best_tickets(written["uri"], sweep="sw", max_density=1.0, top=1)[0]
    assert models[0].source_run_id == best.run_id or scores[0] == best.val_score
    assert models[0].tags[S.TAG_REWIND].startswith("runs:/") and models[0].params["prune.controls"] == "shuffle"
    files = {a.path for a in client.list_logged_model_artifacts(models[0].model_id)}
    assert {S.MASK_ARTIFACT, S.PICTURE_ARTIFACT, S.DENSITY_ARTIFACT} <= files


def test_the_layer_density_picture_is_an_svg_with_a_bar_per_layer(written: dict[str, Any], tmp_path: Path) -> None:
    client = written["client"]
    run = next(r for r in runs_of(written["uri"], "sw", S.TICKET) if r.data.tags[S.TAG_MEMBER] == S.MEMBER_TICKET
               and r.data.tags[S.TAG_LEVEL] == "1")
    svg = Path(client.download_artifacts(run.info.run_id, S.PICTURE_ARTIFACT, str(tmp_path))).read_text()
    ElementTree.fromstring(svg)  # well-formed
    density = json.loads(Path(client.download_artifacts(run.info.run_id, S.DENSITY_ARTIFACT, str(tmp_path)))
                         .read_text())["layer_density"]
    for name, kept in density.items():  # one labelled bar per layer, as wide as its kept share
        assert f">{name}<" in svg and f'width="{300 * kept:.1f}"' in svg and f">{100 * kept:.1f}%<" in svg


def test_best_register_makes_a_model_version_with_the_alias(written: dict[str, Any],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    uri = written["uri"]
    assert main(["best", "--sweep", "sw", "--max-density", "1", "--top", "1", "--tracking-uri", uri,
                 "--register", "sw-best"]) == 0
    assert "registered ticket" in capsys.readouterr().err
    version = written["client"].get_model_version_by_alias("sw-best", "best")
    best = best_tickets(uri, sweep="sw", max_density=1.0, top=1)[0]
    assert version.run_id == best.run_id and version.source.startswith("models:/m-")
    assert main(["best", "--sweep", "sw", "--max-density", "1", "--tracking-uri", uri, "--register", "a/b"]) == 2
    assert "--register" in capsys.readouterr().err


def test_system_metrics_are_sampled_onto_a_run(written: dict[str, Any]) -> None:
    client = written["client"]
    run = client.create_run(written["tracking"].experiment_id).info.run_id
    monitor = native.start_system_metrics(run, written["uri"], interval_s=0.2)
    assert monitor is not None
    wanted = {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"}
    deadline = time.monotonic() + 60  # an event, not a duration: the monitor's first logged samples
    while not wanted <= set(client.get_run(run).data.metrics) and time.monotonic() < deadline:
        time.sleep(0.1)
    monitor.finish()
    keys = set(client.get_run(run).data.metrics)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= keys
