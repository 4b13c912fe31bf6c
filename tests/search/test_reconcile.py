"""The driver's reconciliation on a hand-made Ray record: what it writes, what it fixes, and that it is idempotent.

The record is what Ray leaves in a trial folder (params.json, result.json, checkpoint_NNNNNN/), written
here from a real ticket search so no Ray is needed; MLflow is a real sqlite store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from search.tracking import schema as S
from search.tracking import store
from search.tracking.callbacks import Outcome
from search.tracking.store import prepare
from search.tune.reconcile import UNSETTLED, reconcile
from search.tune.record import read_experiment
from tests.helpers.sweepcheck import audit, runs_of
from trainables.config import Ticket
from trainables.io import checkpoint
from trainables.lottery import Lottery


def ticket(**flat: Any) -> Ticket:
    return Ticket.from_flat({"data.name": "digits", "model.name": "mlp", "model.widths": "16", "train.epochs": 1,
                             "train.batch_size": 256, "train.device": "cpu", "prune.levels": 2,
                             "prune.controls": "shuffle", **flat})


def write_trial(storage: Path, trial_id: str, t: Ticket, *, levels: int, final: bool = False) -> None:
    """A trial folder as Ray writes it: every row reported, one checkpoint per finished level."""
    folder = storage / "sw" / f"trial_{trial_id}"
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(t.flat(), default=list))
    rows: list[dict[str, Any]] = []
    lottery = Lottery(t, on_epoch=lambda row: rows.append({**row, "level_done": False, "timestamp": 1}))
    for n, result in enumerate(lottery.run()):
        rows[-1] = {**rows[-1], "level": result.level, "val_acc": result.val_acc, "density": result.density,
                    "level_done": True, "final": lottery.state.done}
        checkpoint.save(lottery.state, folder / f"checkpoint_{n:06d}")
        if n + 1 == levels:
            break
    assert rows[-1]["final"] == final
    (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def sweep(tmp_path: Path) -> dict[str, Any]:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracking = prepare(uri, "sw", str(tmp_path / "artifacts"), {})
    MlflowClient(uri).set_terminated(tracking.parent_run_id, "FINISHED")  # the sweep's end closes it, not this
    storage = tmp_path / "ray"
    write_trial(storage, "done", ticket(), levels=3, final=True)
    write_trial(storage, "cut", ticket(**{"train.lr": 0.01}), levels=1)
    return {"uri": uri, "tracking": tracking, "storage": str(storage)}


def test_the_record_is_read_back_with_every_level_and_row(sweep: dict[str, Any]) -> None:
    records = {r.trial_id: r for r in read_experiment(sweep["storage"], "sw")}
    assert set(records) == {"done", "cut"}
    assert records["done"].levels == [0, 1, 2] and records["done"].done
    assert records["cut"].levels == [0] and not records["cut"].done
    assert records["done"].config["prune.controls"] == ["shuffle"]
    assert [r["level"] for r in records["done"].rows if r["level_done"]] == [0, 1, 2]


def test_an_empty_store_is_made_complete_once(sweep: dict[str, Any]) -> None:
    outcomes = {"cut": Outcome("KILLED", "stopped early by the scheduler at epoch 1.0")}
    first = reconcile(sweep["tracking"], sweep["storage"], outcomes)
    assert (first.levels_finished, first.levels_recorded, first.written) == (4, 4, 6)  # + shuffle past level 0
    assert first.rows_written == 4 and first.statuses_set == 2 and not first.missing
    assert audit(sweep["uri"], sweep["storage"], "sw") == []
    by_trial = {r.data.tags[S.TAG_TRIAL]: r for r in runs_of(sweep["uri"], "sw", S.TRIAL)}
    assert by_trial["done"].info.status == "FINISHED"
    assert by_trial["cut"].info.status == "KILLED"
    assert by_trial["cut"].data.tags[S.TAG_STATUS_REASON] == outcomes["cut"].reason
    client = MlflowClient(sweep["uri"])
    assert {a.path for a in client.list_artifacts(by_trial["done"].info.run_id)} == {S.REWIND_ARTIFACT}

    again = reconcile(sweep["tracking"], sweep["storage"], outcomes)  # idempotent
    assert (again.written, again.rows_written, again.statuses_set) == (0, 0, 0)
    assert len(runs_of(sweep["uri"], "sw", S.TICKET)) == 6


def test_duplicates_and_half_logged_runs_end_as_exactly_one(sweep: dict[str, Any]) -> None:
    reconcile(sweep["tracking"], sweep["storage"], {})
    client, tracking = MlflowClient(sweep["uri"]), sweep["tracking"]
    tickets = {(r.data.tags[S.TAG_TRIAL], r.data.tags[S.TAG_LEVEL], r.data.tags[S.TAG_MEMBER]): r
               for r in runs_of(sweep["uri"], "sw", S.TICKET)}
    twice = tickets[("done", "1", "ticket")]
    copy = client.create_run(tracking.experiment_id, tags=twice.data.tags)  # a second, FINISHED copy
    client.set_terminated(copy.info.run_id, "FINISHED")
    half = tickets[("done", "2", "shuffle")]
    client.delete_run(half.info.run_id)
    client.create_run(tracking.experiment_id, tags=half.data.tags)  # what a killed worker leaves: RUNNING
    stray = {**half.data.tags, S.TAG_KEY: store.ticket_key(tracking, "done", 7, "ticket"), S.TAG_LEVEL: "7"}
    client.create_run(tracking.experiment_id, tags=stray)  # half-logged, of a level with no checkpoint

    fixed = reconcile(tracking, sweep["storage"], {})
    assert fixed.written == 1 and fixed.levels_recorded == 4
    assert audit(sweep["uri"], sweep["storage"], "sw") == []
    assert not any(r.data.tags[S.TAG_LEVEL] == "7" for r in runs_of(sweep["uri"], "sw", S.TICKET))


def test_a_trial_with_no_outcome_is_killed_with_a_reason_and_a_finished_one_loses_its_kill(
        sweep: dict[str, Any]) -> None:
    client, tracking = MlflowClient(sweep["uri"]), sweep["tracking"]
    done = store.create_trial_run(client, tracking, "done", ticket().flat())
    client.set_tag(done, S.TAG_STATUS_REASON, "stopped early by the scheduler")  # what a stopped worker said
    client.set_terminated(done, "KILLED")
    lost = store.create_trial_run(client, tracking, "neverran", ticket().flat())  # no folder, left RUNNING
    reconcile(tracking, sweep["storage"], {})
    runs = {r.data.tags[S.TAG_TRIAL]: r for r in runs_of(sweep["uri"], "sw", S.TRIAL)}
    assert runs["done"].info.run_id == done and runs["done"].info.status == "FINISHED"
    assert S.TAG_STATUS_REASON not in runs["done"].data.tags  # it ran every level: not a stopped trial
    assert runs["cut"].info.status == "KILLED" and runs["cut"].data.tags[S.TAG_STATUS_REASON] == UNSETTLED
    assert runs["neverran"].info.run_id == lost and runs["neverran"].info.status == "KILLED"
