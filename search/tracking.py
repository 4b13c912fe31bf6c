"""MLflow tracking: the driver prepares the store, experiment and parent run; workers log through a sink.

The store, experiment and parent run are created once, by the driver, before any trial starts (several
processes opening a fresh sqlite store at once race on its migrations). Workers get a `MlflowSink`:
a small picklable object holding the tracking URI and run ids, which opens its own `MlflowClient` in
the worker and logs in batches with explicit run ids (no global "active run" in worker code).

Every ticket run carries the tag `ticket_key` = <parent>/<trial>/<level>/<member>, and is set FINISHED
only after its last artifact arrived. A level logged again after a restart finds its finished run and
logs nothing twice; a run left unfinished by a dead process is deleted and logged anew. Workers ride out
a tracking server that is briefly away through `search.retry.Outbox`, which also takes the logging off the
training path: a level's records are sent from a background thread while the next level trains.
"""

from __future__ import annotations

import functools
import json
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from mlflow.entities import Metric, Param, Run
from mlflow.tracking import MlflowClient
from safetensors.torch import save as save_bytes

from search import schema as S
from search.retry import Outbox, TrackingUnavailable, retry_budget_s
from trainables import maskio
from trainables.results import LevelResult

MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limits
MAX_PARAMS_PER_BATCH = 100
REWIND_ARTIFACT = "rewind.safetensors"
TRACKING_SECONDS = "tracking_s"  # trial-run metric: wall seconds the trial spent in tracking calls


@dataclass(frozen=True)
class Tracking:
    """Where a sweep's records live: handed from the driver to every worker."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    sweep: str


def ensure_local_store(tracking_uri: str) -> None:
    """A sqlite store's folder must exist before MLflow opens it."""
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def prepare(tracking_uri: str, sweep: str, artifact_root: str, params: dict[str, Any], *,
            resume: bool = False) -> Tracking:
    """Create (or, resuming, find) the experiment and the sweep's parent run, in the driver."""
    ensure_local_store(tracking_uri)
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(sweep)
    if exp is None:
        location = Path(artifact_root).resolve().as_uri() if artifact_root and "://" not in artifact_root \
            else (artifact_root or None)
        exp_id = client.create_experiment(sweep, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    parent = _find_parent(client, exp_id, sweep) if resume else None
    if parent is None:
        run = client.create_run(exp_id, run_name=f"sweep-{sweep}",
                                tags={S.KIND: S.SWEEP, S.TAG_SWEEP: sweep})
        parent = run.info.run_id
        _log_params(client, parent, params)
    else:
        client.update_run(parent, status="RUNNING")
    return Tracking(tracking_uri, exp_id, parent, sweep)


def _find_parent(client: MlflowClient, exp_id: str, sweep: str) -> str | None:
    runs = client.search_runs([exp_id], f"tags.{S.KIND} = '{S.SWEEP}' and tags.{S.TAG_SWEEP} = '{sweep}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def _log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(k, _param_value(v)) for k, v in params.items()]
    for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[i:i + MAX_PARAMS_PER_BATCH])


def _param_value(v: Any) -> str:
    if isinstance(v, tuple | list):
        return ",".join(str(x) for x in v)
    return str(v)


def find_trial_run(client: MlflowClient, tr: Tracking, trial_id: str) -> str | None:
    runs = client.search_runs([tr.experiment_id],
                              f"tags.{S.KIND} = '{S.TRIAL}' and tags.{S.TAG_TRIAL} = '{trial_id}' and "
                              f"tags.`mlflow.parentRunId` = '{tr.parent_run_id}'", max_results=1)
    return runs[0].info.run_id if runs else None


@dataclass
class MlflowSink:
    """Logs one trial from its worker. Picklable: the client is opened lazily where it runs.

    Every call goes through an `Outbox`, drained in a background thread: training never waits for MLflow,
    and what the server cannot take now (it is restarting) waits while the trial trains on; the outbox is
    tried again at every level end and waited for at the trial's end (`finish`). A
    trial restored from a checkpoint calls `catch_up` with the levels the checkpoint holds, so a level
    whose records were still queued when its process died is logged after all, and exactly once.
    `scratch` is where mask files are staged before upload ("" = the system temp folder).
    """

    tracking: Tracking
    scratch: str = ""
    _client: MlflowClient | None = field(default=None, init=False, repr=False)
    _trial_run: str = field(default="", init=False)
    _trial_id: str = field(default="", init=False)
    _flat: dict[str, Any] = field(default_factory=dict, init=False)
    _buffer: list[Metric] = field(default_factory=list, init=False)  # appended by training, under _lock
    _sending: list[Metric] = field(default_factory=list, init=False)  # taken from _buffer by the draining thread
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _outbox: Outbox = field(default_factory=Outbox, init=False, repr=False)
    _logged_step: int = field(default=-1, init=False)  # metrics up to this step arrived before a restart
    _fresh: bool = field(default=False, init=False)  # this process created the trial run: nothing to dedupe yet
    _tried: set[str] = field(default_factory=set, init=False)  # ticket keys whose logging was attempted

    def __getstate__(self) -> dict[str, Any]:
        return {"tracking": self.tracking, "scratch": self.scratch}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["tracking"], state.get("scratch", ""))  # type: ignore[misc]

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking.tracking_uri)
        return self._client

    @property
    def seconds(self) -> float:
        """Wall seconds this trial has spent in tracking calls so far."""
        return self._outbox.seconds

    def _tags(self, flat: dict[str, Any]) -> dict[str, str]:
        tags = {S.TAG_SWEEP: self.tracking.sweep, S.TAG_TRIAL: self._trial_id,
                "mlflow.parentRunId": self._trial_run or self.tracking.parent_run_id}
        tags.update({tag: str(flat[key]) for tag, key in S.DESCRIBING.items()})
        return tags

    def start(self, trial_id: str, flat: dict[str, Any]) -> None:
        self._outbox.close()  # a reused actor's previous trial: its outbox was drained by `finish`
        self._trial_id, self._flat, self._trial_run, self._logged_step = trial_id, flat, "", -1
        self._buffer, self._sending, self._outbox, self._fresh, self._tried = [], [], Outbox(), False, set()
        self._outbox.put(self._open_trial_run, "trial run")
        self._outbox.drain_soon()

    def _open_trial_run(self) -> None:
        existing = find_trial_run(self.client, self.tracking, self._trial_id)
        if existing:  # a restarted trial keeps its run, and the metrics it logged before
            if S.TAG_STATUS_REASON in self.client.get_run(existing).data.tags:
                self.client.delete_tag(existing, S.TAG_STATUS_REASON)
            self.client.update_run(existing, status="RUNNING")
            history = self.client.get_metric_history(existing, "epochs_total")
            self._logged_step = max((m.step for m in history), default=-1)
            self._trial_run = existing
            return
        tags = {**self._tags(self._flat), S.KIND: S.TRIAL, "mlflow.parentRunId": self.tracking.parent_run_id}
        run = self.client.create_run(self.tracking.experiment_id, run_name=f"trial-{self._trial_id}", tags=tags)
        self._trial_run, self._fresh = run.info.run_id, True
        _log_params(self.client, self._trial_run, self._flat)

    def catch_up(self, results: Sequence[LevelResult], rewind: dict[str, Any] | None) -> None:
        """A trial restored from its checkpoint: log whatever of its finished levels MLflow lacks."""
        if rewind is not None and results:
            self._outbox.put(functools.partial(self._log_rewind, rewind), "rewind weights")
        for result in results:
            self._queue_tickets(result)
        self._outbox.drain_soon()

    def epoch(self, row: dict[str, Any]) -> None:
        now, step = int(time.time() * 1000), int(row.get("iterations_total", row.get("iteration", 0)))
        if step <= self._logged_step:
            return  # logged before this trial restarted; a restart recomputes the same values
        metrics = [Metric(key, float(row[key]), now, step)
                   for key in ("val_acc", "val_loss", "val_score", "density", "epochs_total", "level") if key in row]
        with self._lock:
            self._buffer.extend(metrics)

    def _flush(self) -> None:
        """Send the buffered metrics (fixed timestamps, so a batch sent twice is stored once)."""
        with self._lock:
            self._sending += self._buffer
            self._buffer = []
        self._sending = [m for m in self._sending if m.step > self._logged_step]  # known once the run is open
        while self._sending:
            self.client.log_batch(self._trial_run, metrics=self._sending[:MAX_METRICS_PER_BATCH])
            del self._sending[:MAX_METRICS_PER_BATCH]

    def level(self, result: LevelResult, rewind: dict[str, Any] | None) -> None:
        self._outbox.put(self._flush, "metrics")
        if rewind is not None:
            self._outbox.put(functools.partial(self._log_rewind, rewind), "rewind weights")
        self._queue_tickets(result)
        self._outbox.drain_soon()  # sent while the next level trains; if the server is away, it waits

    def _queue_tickets(self, result: LevelResult) -> None:
        for member in ["ticket", *result.controls]:
            self._outbox.put(functools.partial(self._log_ticket_run, result, member),
                             f"ticket run L{result.level:02d}-{member}")

    def _log_rewind(self, rewind: dict[str, torch.Tensor]) -> None:
        """The weights the ticket restarts from (replicate 0), once per trial: with a mask, the ticket."""
        if not self._fresh and any(a.path == REWIND_ARTIFACT for a in self.client.list_artifacts(self._trial_run)):
            return  # logged before this trial restarted
        with tempfile.TemporaryDirectory(prefix="ticket-rewind-", dir=self.scratch or None) as tmp:
            path = Path(tmp) / REWIND_ARTIFACT
            blob = save_bytes({k: v.detach().cpu().contiguous() for k, v in rewind.items()})
            maskio.write_atomically(path, blob, "rewind weights")  # a full disk: OSError naming the file
            self.client.log_artifact(self._trial_run, str(path))

    def _log_ticket_run(self, result: LevelResult, member: str) -> None:
        key = f"{self.tracking.parent_run_id}/{self._trial_id}/{result.level}/{member}"
        found: list[Run] = []  # a trial run this process created has no ticket runs yet, unless this is a second try
        if not self._fresh or key in self._tried:
            found = self.client.search_runs([self.tracking.experiment_id], f"tags.{S.TAG_KEY} = '{key}'")
        self._tried.add(key)
        if any(run.info.status == "FINISHED" for run in found):
            return  # logged before a restart: exactly once
        # Stage the files before any run exists: a disk error here leaves nothing half-logged behind.
        with tempfile.TemporaryDirectory(prefix="ticket-mask-", dir=self.scratch or None) as tmp:
            if member == "ticket":
                _stage_mask_artifacts(Path(tmp), result)
            for run in found:
                self.client.delete_run(run.info.run_id)  # half-logged when its process died: replace it
            tags = {**self._tags(self._flat), S.KIND: S.TICKET, S.TAG_MEMBER: member,
                    S.TAG_LEVEL: str(result.level), S.TAG_KEY: key, S.TAG_TICKET_ID: self._trial_id}
            run_id = self.client.create_run(self.tracking.experiment_id, run_name=f"L{result.level:02d}-{member}",
                                            tags=tags).info.run_id
            now = int(time.time() * 1000)
            metrics = [Metric(k, float(v), now, result.level) for k, v in ticket_metrics(result, member).items()]
            params = [Param(k, _param_value(v)) for k, v in self._flat.items()]
            self.client.log_batch(run_id, metrics=metrics, params=params[:MAX_PARAMS_PER_BATCH])  # one call
            for i in range(MAX_PARAMS_PER_BATCH, len(params), MAX_PARAMS_PER_BATCH):
                self.client.log_batch(run_id, params=params[i:i + MAX_PARAMS_PER_BATCH])
            if member == "ticket":
                self.client.log_artifacts(run_id, tmp)
            self.client.set_terminated(run_id, "FINISHED")  # last: only a complete ticket run is FINISHED

    def finish(self, status: str, reason: str = "", *, wait_s: float | None = None) -> None:
        """Flush everything and set the trial run's status, retrying for up to `wait_s` seconds
        (default `retry_budget_s()`); raises TrackingUnavailable if the server stayed away that long."""
        if not self._trial_id:
            return
        self._outbox.put(self._flush, "metrics")
        self._outbox.put(functools.partial(self._terminate, status, reason), f"trial status {status}")
        budget = retry_budget_s() if wait_s is None else wait_s
        try:
            sent = self._outbox.drain(budget)  # after the background drain in progress, if any
        finally:
            self._outbox.close()
        if not sent:
            raise TrackingUnavailable(f"{self.tracking.tracking_uri} did not take this trial's records for "
                                      f"{budget:g} s; still queued: {self._outbox.describe()}")

    def _terminate(self, status: str, reason: str) -> None:
        if reason:
            self.client.set_tag(self._trial_run, S.TAG_STATUS_REASON, reason[:4000])
        self.client.log_batch(self._trial_run, metrics=[Metric(TRACKING_SECONDS, self._outbox.seconds,
                                                               int(time.time() * 1000), 0)])
        self.client.set_terminated(self._trial_run, status)


def _stage_mask_artifacts(folder: Path, result: LevelResult) -> None:
    """mask.safetensors (+ one per further replicate) and density.json, written into `folder`."""
    for r, mask in enumerate(result.masks):
        name = S.MASK_ARTIFACT if r == 0 else f"mask_rep{r}.safetensors"
        maskio.save(mask, folder / name, {"level": str(result.level), "replicate": str(r)})
    (folder / S.DENSITY_ARTIFACT).write_text(json.dumps(
        {"density": result.density, "layer_density": result.layer_density,
         "collapsed_layers": result.collapsed_layers}, indent=2))


def ticket_metrics(result: LevelResult, member: str) -> dict[str, float]:
    """The metric row of a ticket run; a control's run carries the control's own accuracy."""
    m = {k: float(getattr(result, k)) for k in S.TICKET_METRICS
         if k not in ("sparsity", "collapsed") and hasattr(result, k)}
    m["collapsed"] = float(result.collapsed)
    if member != "ticket":
        c = result.controls[member]
        m.update({k: float(v) for k, v in c.items()})
        m["advantage"] = result.advantage[member]
        for k in ("val_loss", "test_loss", "best_val_acc", "val_acc_std", "test_acc_std"):
            m.pop(k, None)
    m["sparsity"] = 1.0 - m["density"]
    return m
