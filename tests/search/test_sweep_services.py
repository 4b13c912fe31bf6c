"""Sweeps as they run for real: interrupted and resumed, against an `mlflow server` on PostgreSQL, on GPUs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient
from ray import tune

from search.sweep.file import sweep_from_dict
from search.tracking import schema as S
from search.tune.runner import run_sweep
from search.tune.study import optuna_storage
from tests.helpers.servers import MlflowServer, postgres_database
from tests.helpers.sweepcheck import audit, ray_trials
from tests.search.test_sweep import study, sweep_doc, ticket_runs
from trainables.io.stagestore import DELAY_ENV as STAGE_DELAY

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


def write_sweep(path: Path, doc: dict[str, Any]) -> Path:
    """A sweep file as a user writes it."""
    lines = [f'name = "{doc["name"]}"']
    for section in ("base", "space", "objective", "search", "scheduler", "budget", "storage"):
        lines.append(f"[{section}]")
        for key, value in doc[section].items():
            lines.append(f'"{key}" = {_toml(value)}')
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + "}"
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v)


def test_interrupted_sweep_resumes_without_duplicates(tmp_path: Path) -> None:
    doc = sweep_doc(tmp_path, "resumable", budget={"num_samples": 6, "max_concurrent": 2},
                    scheduler={"name": "none"}, base={"train.epochs": 3})
    path = write_sweep(tmp_path / "resumable.toml", doc)
    # every level waits 1 s before it trains (the stage store's test delay): on a fast machine the ~10 s sweep
    # could end before the interrupt below lands (CI saw it finish with all 18 ticket runs logged)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", STAGE_DELAY: "1"}
    cmd = [sys.executable, "-m", "search", "sweep", str(path)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    sweep = sweep_from_dict(doc)
    deadline = time.time() + 240
    while time.time() < deadline:  # interrupt once the first trial's tickets are in, mid-sweep
        time.sleep(0.5)  # the whole sweep takes ~10 s: polling slowly could miss its middle
        try:
            if len(ticket_runs(sweep)) >= 3:
                break
        except Exception:  # noqa: BLE001 - the store may not exist yet, or be locked by a writer
            continue
    assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as a user would
    out, _ = proc.communicate(timeout=120)
    before = len(ticket_runs(sweep))
    assert before >= 3, out

    done = subprocess.run([sys.executable, "-m", "search", "resume", "resumable", "--root",
                           str(tmp_path / "runs")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = ticket_runs(sweep)
    keys = [r.data.tags[S.TAG_KEY] for r in runs]
    assert len(keys) == len(set(keys)), "a ticket run was logged twice"
    assert len(runs) > before
    by_trial: dict[str, set[int]] = {}
    for r in runs:
        if r.data.tags[S.TAG_MEMBER] == "ticket":
            by_trial.setdefault(r.data.tags[S.TAG_TRIAL], set()).add(int(r.data.tags[S.TAG_LEVEL]))
    assert len(by_trial) == 6
    for trial, levels in by_trial.items():  # every trial finished every level, each exactly once
        assert levels == set(range(max(levels) + 1)), (trial, levels)
    client = MlflowClient(sweep.tracking_uri)
    trials = client.search_runs([runs[0].info.experiment_id], f"tags.{S.KIND} = '{S.TRIAL}'")
    assert len(trials) == 6 and all(t.info.status == "FINISHED" for t in trials)
    finished = [t for t in study(sweep).trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) == 6  # no trial counted twice, none lost
    assert not audit(sweep.tracking_uri, sweep.ray_storage, "resumable")  # MLflow against Ray's own files
    summary = " ".join(done.stdout.split())
    levels = sum(len(seen["levels"]) for seen in ray_trials(sweep.ray_storage, "resumable").values())
    assert f"levels finished (Ray's level checkpoints): {levels}; recorded in MLflow: {levels}" in summary, summary


def test_sweep_against_mlflow_server_on_postgresql(tmp_path: Path) -> None:
    with postgres_database("ts_track") as tracking_db, postgres_database("ts_optuna") as optuna_db, \
            MlflowServer(tracking_db, tmp_path / "artifacts") as server:
        doc = sweep_doc(tmp_path, "served", budget={"num_samples": 3, "max_concurrent": 2},
                        scheduler={"name": "none"},
                        storage={"tracking_uri": server.uri, "optuna_storage": optuna_db})
        sweep = sweep_from_dict(doc)
        outcome = run_sweep(sweep)
        assert outcome.errored == 0
        runs = ticket_runs(sweep)
        tickets = [r for r in runs if r.data.tags[S.TAG_MEMBER] == "ticket"]
        assert tickets
        client = MlflowClient(server.uri)
        artifacts = {a.path for a in client.list_artifacts(tickets[0].info.run_id)}
        assert {S.MASK_ARTIFACT, S.DENSITY_ARTIFACT} <= artifacts  # proxied through the server
        st = optuna.load_study(study_name="served", storage=optuna_storage(optuna_db))
        assert len(st.trials) == 3


class MaxRunning(tune.Callback):
    """Records the most trials RUNNING at once."""

    def __init__(self) -> None:
        self.most = 0

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        self.most = max(self.most, sum(t.status == "RUNNING" for t in trials))


@pytest.mark.parametrize(("gpu", "expected"), [(0.25, 4), (0.5, 2)])
def test_fractional_gpus_pack_trials_on_one_device(tmp_path: Path, gpu: float,
                                                   expected: int) -> None:
    doc = sweep_doc(tmp_path, f"packed{int(gpu * 100)}", budget={"num_samples": 4, "max_concurrent": 4},
                    scheduler={"name": "none"}, base={"train.epochs": 4})
    doc["resources"] = {"cpu": 0.5, "gpu": gpu}  # 2 logical CPUs and 1 logical GPU in this Ray
    sweep = sweep_from_dict(doc)
    seen = MaxRunning()
    outcome = run_sweep(sweep, callbacks=[seen])
    assert outcome.errored == 0
    assert seen.most == expected  # 1 GPU / fraction trials share the device at once
