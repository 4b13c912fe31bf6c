"""Load: 64 short trials, 8 at a time on 2 cores, against `mlflow server` on PostgreSQL; nothing may go missing.

Every result Ray saw must be in its trial run's metric history (one entry per evaluation), and every level of
every trial must have its ticket run. The test prints what it measured:

- sustained results per second: results Ray received, over the time from the first to the last;
- tracking time per trial: wall seconds each trial spent inside tracking calls (the sink times every call it
  makes and logs the total as the trial-run metric `tracking_s`), next to the trial's whole wall time.

Why measured inside the trial, not as the difference to a second sweep with tracking off or on sqlite: on a
shared 2-core machine two 64-trial sweeps differ by more than the tracking costs, and a second sweep would
double this test's time. The trial's own clock says exactly how long it waited on the server.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from ray import tune

from search.sweep.file import sweep_from_dict
from search.tracking import schema as S
from search.tracking.schema import TRACKING_SECONDS
from search.tune.runner import run_sweep
from tests.helpers.servers import MlflowServer, postgres_database
from tests.helpers.sweepcheck import (
    assert_nothing_running,
    assert_steps_once,
    assert_tickets_exactly_once,
    runs_of,
    study_states,
)
from tests.search.test_sweep import sweep_doc

TRIALS, CONCURRENT = 64, 8


class Clock(tune.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        self.times.append(time.monotonic())


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_64_trials_8_at_a_time_every_result_and_ticket_arrives(tmp_path: Path) -> None:
    with postgres_database("ts_load") as db, MlflowServer(db, tmp_path / "artifacts") as server:
        doc = sweep_doc(tmp_path, "load", budget={"num_samples": TRIALS, "max_concurrent": CONCURRENT},
                        scheduler={"name": "none"}, search={"sampler": "random"},
                        objective={"target_density": 0.75},  # one prune at rate >= 0.3: levels 0 and 1
                        space={"prune.rate": {"type": "float", "low": 0.3, "high": 0.6}},
                        base={"train.epochs": 1}, storage={"tracking_uri": server.uri})
        doc["resources"] = {"cpu": 2 / CONCURRENT}  # the session's Ray has 2 CPUs: 8 trials at once
        sweep = sweep_from_dict(doc)
        clock = Clock()
        began = time.monotonic()
        outcome = run_sweep(sweep, callbacks=[clock])
        wall = time.monotonic() - began
        assert outcome.trials == TRIALS and outcome.errored == 0

        uri = server.uri
        logged = assert_steps_once(uri, "load")
        reported = {r.metrics["trial_id"]: len(r.metrics_dataframe) for r in outcome.results}
        assert logged == reported  # every result Ray saw arrived in MLflow, once
        levels = assert_tickets_exactly_once(uri, "load", finished=set(reported))
        assert all(sorted(v) == [0, 1] for v in levels.values()), levels
        assert sum(r.data.tags[S.TAG_MEMBER] == "ticket" for r in runs_of(uri, "load", S.TICKET)) == 2 * TRIALS
        assert len(assert_nothing_running(uri, "load").get("FINISHED", [])) == TRIALS
        assert study_states(sweep.optuna_storage, "load")["COMPLETE"] == TRIALS

        client = MlflowClient(uri)
        tracking = [client.get_run(r.info.run_id).data.metrics[TRACKING_SECONDS] for r in runs_of(uri, "load", S.TRIAL)]
        trial_wall = [r.metrics["time_total_s"] for r in outcome.results]
        sustained = (len(clock.times) - 1) / (clock.times[-1] - clock.times[0])
        print(f"\nload: {TRIALS} trials, {CONCURRENT} at a time, {sum(reported.values())} results in {wall:.1f} s; "
              f"sustained {sustained:.1f} results/s; tracking per trial: median "
              f"{statistics.median(tracking):.2f} s (max {max(tracking):.2f} s) of a median trial wall time "
              f"{statistics.median(trial_wall):.2f} s")
