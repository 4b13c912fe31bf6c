"""Faults injected for real into running sweeps: a lost worker node, a killed driver, a restarted tracking server.

Each test runs real processes and breaks them the way a cluster does: `ray.cluster_utils.Cluster` with a
worker node removed mid-sweep, SIGKILL to a driver's whole process group, `mlflow server` (on PostgreSQL)
stopped and started again while trials log. Afterwards MLflow and Optuna must tell one consistent story
(tests/sweepcheck.py): every finished level's ticket exactly once, nothing left RUNNING, no trial counted
twice. Trial-level faults (divergence, a full disk, a crash mid-write) are in test_faults_trial.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.search import Searcher

from search import cli
from search.sweep.file import sweep_from_dict
from search.tracking import schema as S
from search.tracking.outbox import DELAY_ENV
from search.tracking.store import prepare
from search.tune.recovery import settle_finished
from search.tune.runner import run_sweep
from search.tune.searcher import FAIL_REASON, ORPHAN_REASON, TRIAL_ATTR, TicketOptunaSearch
from search.tune.study import optuna_storage
from tests.helpers import procs
from tests.helpers.servers import MlflowServer, free_port, postgres_database
from tests.helpers.sweepcheck import (
    assert_nothing_running,
    assert_steps_once,
    assert_tickets_exactly_once,
    audit,
    runs_of,
    study_states,
    study_trials,
)
from tests.search.test_sweep import sweep_doc
from tests.search.test_sweep_services import write_sweep

ROOT = Path(__file__).resolve().parents[2]
HELPERS = ROOT / "tests" / "helpers"
LONG = {"scheduler": {"name": "none"}, "base": {"train.epochs": 3}}  # every trial runs every level
SLOW_TRACKING = {DELAY_ENV: "1.0"}  # s before each tracking call in the trials: records are still queued when
# Ray stops a trial or loses it, on every machine (test_complete.py); only the reconciliation saves them.


def to_max_t(doc: dict[str, Any], epochs: int) -> dict[str, Any]:
    """Every trial runs all three levels (no target density: the pareto objective) and Ray stops it at its
    last result (ASHA's max_t = its grace period = 3 levels of `epochs`): the ending where a trial's queued
    records were lost."""
    doc["base"].update({"train.epochs": epochs, "prune.rate": 0.5, "prune.levels": 2})
    doc["space"] = {"train.lr": {"type": "float", "low": 0.01, "high": 0.3, "log": True}}
    doc["objective"] = {"name": "pareto"}
    doc["scheduler"] = {"name": "asha", "grace_period": 3 * epochs, "reduction_factor": 2}
    return doc


@contextlib.contextmanager
def own_ray_tmpdir() -> Iterator[Path]:
    """A short RAY_TMPDIR for a Ray started by a child process (Unix socket paths must stay under 108 bytes);
    afterwards every process still running from it (gcs, raylet, workers of a killed driver) is killed."""
    folder = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    try:
        yield folder
    finally:
        kill_leftovers(folder)


def leftovers(folder: Path) -> list[int]:
    """Processes of a Ray that ran with RAY_TMPDIR=folder (its session paths are on their command lines)."""
    return procs.naming(str(folder))


def kill_leftovers(folder: Path) -> int:
    pids = leftovers(folder)
    procs.kill_all(pids)
    return len(pids)


def child_env(ray_tmp: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, **extra, "PYTHONUNBUFFERED": "1", "RAY_TMPDIR": str(ray_tmp),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def wait_for(predicate: Any, what: str, timeout: float = 240, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended before {what}: {proc.stdout.read() if proc.stdout else ''}")
        with contextlib.suppress(Exception):  # the store may not exist yet, or the server be down
            if predicate():
                return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_worker_node_lost_mid_sweep_trials_restart_from_their_level(tmp_path: Path) -> None:
    # 15 epochs a level (about a second here): the node is killed while the victim trains its next level, not
    # after its whole (fast) trial has ended, whatever a level-0 entry in the stage store saves it.
    doc = to_max_t(sweep_doc(tmp_path, "nodelost", budget={"num_samples": 4, "max_concurrent": 3}), epochs=15)
    doc["resources"] = {"cpu": 1}
    (tmp_path / "sweep.json").write_text(json.dumps(doc))
    with own_ray_tmpdir() as ray_tmp:
        done = subprocess.run([sys.executable, str(HELPERS / "cluster_sweep.py"), str(tmp_path / "sweep.json"),
                               str(tmp_path / "out.json")], env=child_env(ray_tmp, **SLOW_TRACKING),
                              capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["finished"] and out["trials"] == 4 and out["errored"] == 0, out
    recovered = {trial for _, trial in out["recovered"]}
    assert out["victim"] in recovered  # the lost node's trial failed once and came back
    after = [(level, done) for t, trial, _, level, done in out["results"]
             if trial == out["victim"] and t > out["killed_at"]]
    assert after and after[0][0] >= 1, after  # it went on from its level checkpoint, not from level 0

    sweep = sweep_from_dict(doc)
    trials = {r.data.tags[S.TAG_TRIAL] for r in runs_of(sweep.tracking_uri, "nodelost", S.TRIAL)}
    assert len(trials) == 4
    assert_tickets_exactly_once(sweep.tracking_uri, "nodelost", finished=trials)
    statuses = assert_nothing_running(sweep.tracking_uri, "nodelost")
    assert len(statuses.get("FINISHED", [])) == 4, statuses
    assert_steps_once(sweep.tracking_uri, "nodelost")
    problems = audit(sweep.tracking_uri, sweep.ray_storage, "nodelost")  # MLflow against Ray's own files
    assert not problems, problems
    assert study_states(sweep.optuna_storage, "nodelost")["COMPLETE"] == 4


@pytest.mark.slow
def test_driver_killed_mid_sweep_resume_completes_it_consistently(tmp_path: Path) -> None:
    # trials of a few seconds: the kill must land mid-sweep
    doc = to_max_t(sweep_doc(tmp_path, "killed", budget={"num_samples": 5, "max_concurrent": 2}), epochs=20)
    path = write_sweep(tmp_path / "killed.toml", doc)
    sweep = sweep_from_dict(doc)
    with own_ray_tmpdir() as ray_tmp:
        env = child_env(ray_tmp, **SLOW_TRACKING)
        proc = subprocess.Popen([sys.executable, "-m", "search", "sweep", str(path)], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        wait_for(lambda: len(runs_of(sweep.tracking_uri, "killed", S.TICKET)) >= 3, "3 ticket runs", proc=proc)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything in its process group, no goodbyes
        proc.communicate(timeout=30)
        wait_for(lambda: not leftovers(ray_tmp), "the killed driver's Ray processes to exit", timeout=15)
        before = len(runs_of(sweep.tracking_uri, "killed", S.TICKET))
        done = subprocess.run([sys.executable, "-m", "search", "resume", "killed", "--root", str(tmp_path / "runs")],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert len(runs_of(sweep.tracking_uri, "killed", S.TICKET)) > before

    statuses = assert_nothing_running(sweep.tracking_uri, "killed")
    finished = {r.data.tags[S.TAG_TRIAL] for r in statuses.get("FINISHED", [])}
    assert len(finished) == 5, {k: len(v) for k, v in statuses.items()}  # each trial complete exactly once
    for run in statuses.get("KILLED", []):  # a trial the dead driver started but Ray never recorded
        assert run.data.tags.get(S.TAG_STATUS_REASON), run.info.run_id
    assert_tickets_exactly_once(sweep.tracking_uri, "killed", finished=finished)
    assert_steps_once(sweep.tracking_uri, "killed")
    problems = audit(sweep.tracking_uri, sweep.ray_storage, "killed")  # MLflow against Ray's own files
    assert not problems, problems
    trials = study_trials(sweep.optuna_storage, "killed")
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 5 and "RUNNING" not in states, states
    assert all(FAIL_REASON in t.user_attrs for t in trials if t.state.name == "FAIL")
    closed = [line for line in done.stderr.splitlines() if "resume:" in line]
    print(f"\ndriver killed after {before} ticket runs; Optuna {dict(Counter(states))}; "
          f"{len(statuses.get('KILLED', []))} trial run(s) the resumed sweep never ran; {closed}")


class ResultTimes(tune.Callback):
    """When each result was made (Ray's `timestamp`: whole seconds of the trial's clock, which the driver's
    callbacks may see later), and which levels finished, per trial."""

    def __init__(self) -> None:
        self.results: list[tuple[int, str, bool]] = []

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        self.results.append((int(result["timestamp"]), trial.trial_id, bool(result.get("level_done"))))


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_tracking_server_restart_mid_sweep_loses_nothing(tmp_path: Path) -> None:
    with postgres_database("ts_restart") as db, MlflowServer(db, tmp_path / "artifacts") as server:
        doc = sweep_doc(tmp_path, "restarted", budget={"num_samples": 6, "max_concurrent": 2},
                        scheduler={"name": "none"}, base={"train.epochs": 60},  # levels of ~1.5 s
                        storage={"tracking_uri": server.uri})
        sweep = sweep_from_dict(doc)
        seen, outcome = ResultTimes(), {}
        thread = threading.Thread(target=lambda: outcome.update(o=run_sweep(sweep, callbacks=[seen])), daemon=True)
        thread.start()
        # Go down once Ray has seen a level finish: the two trials have 1-2 levels of ~1.5 s to go, which they
        # train while the server is away (a trial starting then waits for it). Not later: their ticket runs
        # reach MLflow from a background thread, and results reach the driver behind the trials.
        wait_for(lambda: any(done for _, _, done in list(seen.results)), "a level finished")
        down = time.time()
        server.restart()  # same port, same database: a head-node restart of the tracking server
        up = time.time()
        thread.join(timeout=400)
        assert "o" in outcome, "the sweep did not finish"
        result = outcome["o"]
        assert result.errored == 0  # no trial crashed because the server was away
        # made within the outage: its whole second lies inside it
        during = [trial for t, trial, level_done in seen.results if math.ceil(down) <= t and t + 1 <= up and level_done]
        assert during, f"no level finished during the {up - down:.1f} s outage: lengthen the sweep"

        uri = server.uri
        trials = {r.data.tags[S.TAG_TRIAL] for r in runs_of(uri, "restarted", S.TRIAL)}
        assert len(trials) == 6
        assert_tickets_exactly_once(uri, "restarted", finished=trials)  # incl. the levels done while down
        statuses = assert_nothing_running(uri, "restarted")
        assert len(statuses.get("FINISHED", [])) == 6
        logged = assert_steps_once(uri, "restarted")
        for r in result.results:  # every result Ray saw is in the trial run's history
            assert logged[r.metrics["trial_id"]] == len(r.metrics_dataframe), r.metrics["trial_id"]
        assert study_states(sweep.optuna_storage, "restarted")["COMPLETE"] == 6
        print(f"\ntracking server restart: down {up - down:.1f} s; {len(during)} level(s) finished meanwhile")


def test_unreachable_tracking_server_is_one_line_before_any_trial(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    path = write_sweep(tmp_path / "s.toml", sweep_doc(tmp_path, "nowhere", storage={"tracking_uri": dead}))

    def no_ray(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("Ray was started")

    monkeypatch.setattr("search.tune.runner.init_ray", no_ray)
    began = time.monotonic()
    assert cli.main(["sweep", str(path)]) == cli.USAGE_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: storage.tracking_uri: cannot reach {dead}"), err
    assert time.monotonic() - began < 30


def explore(trial: optuna.Trial) -> dict[str, Any]:
    return {"x": trial.suggest_float("x", 0.0, 1.0)}


def test_a_restored_searcher_settles_what_its_dead_driver_left_in_the_study(tmp_path: Path) -> None:
    """Ray's snapshot lags the study: trials asked for, or told, after it must neither hang nor count twice."""
    def searcher() -> TicketOptunaSearch:
        return TicketOptunaSearch(space=explore, metric="val_score", mode="max", study_name="s", num_samples=4,
                                  storage=optuna_storage(str(tmp_path / "s.journal")))

    final = {"val_score": 0.5, "final": True}
    live = searcher()
    for trial in ("a", "b"):
        live.suggest(trial)
    live.on_trial_complete("a", final)
    live.save(str(tmp_path / "snapshot.pkl"))  # Ray's last experiment snapshot; then, unknown to it:
    live.suggest("c")
    live.suggest("d")
    live.on_trial_complete("b", final)  # told after the snapshot
    live.on_trial_complete("c", final)  # asked for and ended after it
    # ... and the driver dies with d running.
    restored = searcher()
    restored.restore(str(tmp_path / "snapshot.pkl"))
    study = optuna.load_study(study_name="s", storage=optuna_storage(str(tmp_path / "s.journal")))
    states = {t.user_attrs[TRIAL_ATTR]: t for t in study.trials}
    assert {k: t.state.name for k, t in states.items()} == {"a": "COMPLETE", "b": "COMPLETE", "c": "COMPLETE",
                                                            "d": "FAIL"}
    assert states["d"].user_attrs[FAIL_REASON] == ORPHAN_REASON
    restored.on_trial_result("b", {**final, "training_iteration": 9})  # b runs again on resume: ignored
    restored.on_trial_complete("b", final)  # and is not told twice
    assert restored.suggest("e") is not None  # a, b, c ended, e is the 4th ...
    assert restored.suggest("f") == Searcher.FINISHED  # ... and the last: c counts toward num_samples


def test_settle_finished_tells_optuna_what_mlflow_saw_finish(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracking = prepare(uri, "settle", str(tmp_path / "artifacts"), {})
    client = MlflowClient(uri)
    study = optuna.create_study(study_name="settle", storage=optuna_storage(str(tmp_path / "s.journal")),
                                direction="maximize")
    for ray_id, status in (("done1", "FINISHED"), ("running", "RUNNING")):
        study.ask().set_user_attr(TRIAL_ATTR, ray_id)
        run = client.create_run(tracking.experiment_id, tags={S.KIND: S.TRIAL, S.TAG_TRIAL: ray_id,
                                                              "mlflow.parentRunId": tracking.parent_run_id})
        for level, score in ((0, 0.9), (1, 0.8)):
            ticket = client.create_run(tracking.experiment_id, tags={
                S.KIND: S.TICKET, S.TAG_MEMBER: "ticket", S.TAG_LEVEL: str(level),
                "mlflow.parentRunId": run.info.run_id}).info.run_id
            client.log_metric(ticket, "val_score", score)
        client.set_terminated(run.info.run_id, status)
    assert settle_finished(tracking, study, ["val_score"]) == 1
    assert [(t.state.name, t.value) for t in study.trials] == [("COMPLETE", 0.8), ("RUNNING", None)]
