"""Making MLflow complete from the durable record, by the driver, at the end of `sweep` and `resume`.

Workers log their trials from a background thread (the fast path), and Ray may stop a trial (ASHA, the
collapse stopper, `max_t`, the sweep's time budget or end), lose its node or its driver while records are
still queued. So once Tune has returned, the driver walks Ray's record of every trial
(record.py: result rows and level checkpoints) and, through the same idempotent writers the
workers use (search/tracking/store.py):

- opens the trial run a trial never got to open;
- logs each finished level's ticket run and its controls' runs that MLflow lacks, replacing half-logged
  ones, so each `ticket_key` ends as exactly one FINISHED run (duplicates are removed);
- logs the per-evaluation rows Ray received that the trial run lacks (none twice: by step);
- logs the rewind weights if they are missing;
- sets each trial run's final status: FINISHED when every level ran, FAILED or KILLED with the reason
  Tune's outcome gives, and nothing RUNNING.

Before it writes, it waits for the trial processes on this node to exit, so a worker's late write cannot
race it. Running it twice changes nothing the second time.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from search.tracking import schema as S
from search.tracking import store
from search.tracking.callbacks import Outcome
from search.tracking.outbox import call_with_retry, retry_budget_s
from search.tracking.store import Tracking
from search.tune.record import TrialRecord, read_experiment

SKIP_ENV = "TICKET_SEARCH_TEST_SKIP_RECONCILE"  # test-only: "1" shows what a sweep records without it
WORKER_EXIT_S = 30.0  # how long to wait for this node's trial processes to be gone
UNSETTLED = ("it stopped without a final status (its sweep was interrupted or its driver died while it "
             "ran); `ticket-search resume` continues it if Ray recorded it")
log = logging.getLogger(__name__)


@dataclass
class Reconciliation:
    """What the record holds and what MLflow now holds: the sweep's closing summary reads it."""

    trials: int = 0
    levels_finished: int = 0  # (trial, level) pairs with a level checkpoint
    levels_recorded: int = 0  # of those, with a FINISHED ticket run (and one per control) in MLflow
    written: int = 0  # ticket runs this reconciliation had to write
    rows_written: int = 0  # per-evaluation rows it had to write
    statuses_set: int = 0  # trial runs whose final status it set
    missing: list[str] = field(default_factory=list)  # what could not be recorded, by name and why


def enabled() -> bool:
    return os.environ.get(SKIP_ENV, "") != "1"


def reconcile(tracking: Tracking, ray_storage: str, outcomes: dict[str, Outcome]) -> Reconciliation:
    """Make the sweep's MLflow records complete from Ray's record (see the module doc)."""
    records = read_experiment(ray_storage, tracking.sweep)
    wait_for_workers(records)
    client = MlflowClient(tracking.tracking_uri)
    budget = retry_budget_s()
    by_key = call_with_retry(lambda: store.ticket_runs_by_key(client, tracking), "find ticket runs", budget)
    trial_runs = call_with_retry(lambda: _trial_runs(client, tracking), "find trial runs", budget)
    summary = Reconciliation(trials=len(records))
    seen_keys: set[str] = set()
    for record in records:
        one = functools.partial(_trial, client, tracking, record, trial_runs, by_key, seen_keys,
                                outcomes.get(record.trial_id), summary)
        try:
            call_with_retry(one, f"reconcile trial {record.trial_id}", budget)
        except Exception as e:  # noqa: BLE001 - one trial's failure must not cost the others their records
            summary.missing.append(f"trial {record.trial_id}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    known = {r.trial_id for r in records}
    call_with_retry(lambda: _leftovers(client, tracking, by_key, seen_keys, trial_runs, known, outcomes, summary),
                    "close leftover runs", budget)
    if summary.written or summary.rows_written:
        log.warning("reconcile: %d ticket run(s) and %d evaluation row(s) were missing from MLflow and are "
                    "logged now from Ray's level checkpoints", summary.written, summary.rows_written)
    return summary


def _trial_runs(client: MlflowClient, tracking: Tracking) -> dict[str, Run]:
    runs = store.search_all(client, tracking.experiment_id,
                             f"tags.{S.KIND} = '{S.TRIAL}' and tags.`{S.PARENT_TAG}` = '{tracking.parent_run_id}'")
    return {r.data.tags.get(S.TAG_TRIAL, ""): r for r in runs}


def _trial(client: MlflowClient, tracking: Tracking, record: TrialRecord, trial_runs: dict[str, Run],
           by_key: dict[str, list[Run]], seen_keys: set[str], outcome: Outcome | None,
           summary: Reconciliation) -> None:
    run = trial_runs.get(record.trial_id)
    if run is None and not record.results and not record.rows:
        return  # never trained: nothing of it to record
    flat = record.config
    trial_run = run.info.run_id if run is not None else store.create_trial_run(client, tracking, record.trial_id,
                                                                                   flat)
    if record.state is not None and record.state.rewind and record.results and not store.has_rewind(client,
                                                                                                   trial_run):
        store.log_rewind(client, trial_run, record.state.rewind[0])
    for result in record.results:
        recorded = True
        for member in store.members_of(result):
            key = store.ticket_key(tracking, record.trial_id, result.level, member)
            seen_keys.add(key)
            found = by_key.get(key, [])
            wrote = store.log_ticket_run(client, tracking, trial_id=record.trial_id, trial_run=trial_run,
                                          flat=flat, result=result, member=member, found=found)
            summary.written += wrote
            if wrote or len(found) != 1:  # written now, or not exactly one run: make it exactly one
                by_key[key] = _exactly_one(client, tracking, key)
            recorded = recorded and len(by_key[key]) == 1
        summary.levels_finished += 1
        summary.levels_recorded += recorded
    summary.rows_written += _rows(client, trial_run, record.rows)
    summary.statuses_set += _settle(client, trial_run, _final(record, outcome))


def _exactly_one(client: MlflowClient, tracking: Tracking, key: str) -> list[Run]:
    """Keep one FINISHED run of `key` (the oldest) and delete every other run carrying it."""
    runs = client.search_runs([tracking.experiment_id], f"tags.{S.TAG_KEY} = '{key}'",
                              order_by=["attributes.start_time ASC"])
    keep = next((r for r in runs if r.info.status == "FINISHED"), None)
    for run in runs:
        if run is not keep:
            client.delete_run(run.info.run_id)
    return [keep] if keep is not None else []


def _rows(client: MlflowClient, trial_run: str, rows: Iterable[dict[str, Any]]) -> int:
    """Log the evaluation rows Ray received that the trial run lacks (a step is logged once, all its keys)."""
    logged = {m.step for m in client.get_metric_history(trial_run, "epochs_total")}
    missing: dict[int, list[Any]] = {}
    for row in rows:
        if "iterations_total" not in row or "epochs_total" not in row:
            continue
        metrics = store.epoch_metrics(row, int(1000 * float(row.get("timestamp", time.time()))))
        step = metrics[0].step
        if step not in logged and step not in missing:
            missing[step] = metrics
    store.log_metrics(client, trial_run, [m for ms in missing.values() for m in ms])
    return len(missing)


def _final(record: TrialRecord, outcome: Outcome | None) -> Outcome:
    """A trial run's final status: the record says whether every level ran; Tune says why it ended if not."""
    if record.done:
        return Outcome("FINISHED")
    last = record.last_row
    if last.get("diverged") or last.get("invalid"):
        return Outcome("FAILED", str(last.get("status_reason") or "diverged"))
    if outcome is not None and outcome.status != "FINISHED":
        return outcome
    return Outcome("KILLED", UNSETTLED)


def _settle(client: MlflowClient, trial_run: str, final: Outcome) -> int:
    """Set the trial run's status and reason unless they are already so; 1 if anything changed."""
    run = client.get_run(trial_run)
    reason = run.data.tags.get(S.TAG_STATUS_REASON, "")
    if run.info.status == final.status and bool(reason) == bool(final.reason):
        return 0  # already so (a reason the driver's callback or `resume` wrote first is kept)
    if final.reason:
        client.set_tag(trial_run, S.TAG_STATUS_REASON, final.reason[:4000])
    elif reason:
        client.delete_tag(trial_run, S.TAG_STATUS_REASON)  # a trial that ran every level was not stopped
    client.set_terminated(trial_run, final.status)
    return 1


def _leftovers(client: MlflowClient, tracking: Tracking, by_key: dict[str, list[Run]], seen_keys: set[str],
               trial_runs: dict[str, Run], known: set[str], outcomes: dict[str, Outcome],
               summary: Reconciliation) -> None:
    """Runs the record cannot complete: half-logged ticket runs of levels with no checkpoint are deleted
    (their level never finished for Ray), and trial runs of trials with no folder are closed."""
    for key, runs in by_key.items():
        if key not in seen_keys and not any(r.info.status == "FINISHED" for r in runs):
            for run in runs:
                client.delete_run(run.info.run_id)
    for trial_id, run in trial_runs.items():
        if trial_id in known or run.info.status != "RUNNING":
            continue
        outcome = outcomes.get(trial_id)
        final = outcome if outcome is not None and outcome.status != "FINISHED" else Outcome("KILLED", UNSETTLED)
        summary.statuses_set += _settle(client, run.info.run_id, final)


def wait_for_workers(records: Iterable[TrialRecord], timeout_s: float = WORKER_EXIT_S) -> None:
    """Wait until the processes that ran these trials on this machine are gone (Tune kills them when it
    returns), so none of their background writes can land after the reconciliation has looked."""
    host = socket.gethostname()
    pids = {int(row["pid"]) for r in records for row in r.rows if row.get("hostname") == host and "pid" in row}
    pids.discard(os.getpid())
    deadline = time.monotonic() + timeout_s
    while pids and time.monotonic() < deadline:
        pids = {pid for pid in pids if _alive(pid)}
        if pids:
            time.sleep(0.1)
    if pids:
        log.warning("reconcile: trial process(es) %s still alive after %.0f s; reconciling anyway",
                    sorted(pids), timeout_s)


def _alive(pid: int) -> bool:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, 0)
        return not _zombie(pid)
    return False


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
