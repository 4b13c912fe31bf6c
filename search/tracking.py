"""MLflow tracking: the driver prepares the store, experiment and parent run; workers log through a sink.

The store, experiment and parent run are created once, by the driver, before any trial starts (several
processes opening a fresh sqlite store at once race on its migrations). Workers get a `MlflowSink`:
a small picklable object holding the tracking URI and run ids, which opens its own `MlflowClient` in
the worker and logs in batches with explicit run ids (no global "active run" in worker code).

Every ticket run carries the tag `ticket_key` = <parent>/<trial>/<level>/<member>. A level logged
again after a restart finds its finished run and logs nothing twice.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from safetensors.torch import save_file

from search import schema as S
from trainables import maskio
from trainables.results import LevelResult

MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limits
MAX_PARAMS_PER_BATCH = 100


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
    """Logs one trial from its worker. Picklable: the client is opened lazily where it runs."""

    tracking: Tracking
    _client: MlflowClient | None = field(default=None, init=False, repr=False)
    _trial_run: str = field(default="", init=False)
    _trial_id: str = field(default="", init=False)
    _flat: dict[str, Any] = field(default_factory=dict, init=False)
    _buffer: list[Metric] = field(default_factory=list, init=False)

    def __getstate__(self) -> dict[str, Any]:
        return {"tracking": self.tracking}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["tracking"])  # type: ignore[misc]

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking.tracking_uri)
        return self._client

    def _tags(self, flat: dict[str, Any]) -> dict[str, str]:
        tags = {S.TAG_SWEEP: self.tracking.sweep, S.TAG_TRIAL: self._trial_id,
                "mlflow.parentRunId": self._trial_run or self.tracking.parent_run_id}
        tags.update({tag: str(flat[key]) for tag, key in S.DESCRIBING.items()})
        return tags

    def start(self, trial_id: str, flat: dict[str, Any]) -> None:
        self._trial_id, self._flat = trial_id, flat
        existing = find_trial_run(self.client, self.tracking, trial_id)
        if existing:  # a restarted trial keeps its run
            self._trial_run = existing
            self.client.update_run(existing, status="RUNNING")
            return
        tags = {**self._tags(flat), S.KIND: S.TRIAL, "mlflow.parentRunId": self.tracking.parent_run_id}
        run = self.client.create_run(self.tracking.experiment_id, run_name=f"trial-{trial_id}", tags=tags)
        self._trial_run = run.info.run_id
        _log_params(self.client, self._trial_run, flat)

    def epoch(self, row: dict[str, Any]) -> None:
        now, step = int(time.time() * 1000), int(row.get("iterations_total", row.get("iteration", 0)))
        for key in ("val_acc", "val_loss", "val_score", "density", "epochs_total", "level"):
            if key in row:
                self._buffer.append(Metric(key, float(row[key]), now, step))

    def flush(self) -> None:
        while self._buffer:
            chunk, self._buffer = self._buffer[:MAX_METRICS_PER_BATCH], self._buffer[MAX_METRICS_PER_BATCH:]
            self.client.log_batch(self._trial_run, metrics=chunk)

    def level(self, result: LevelResult, rewind: dict[str, Any] | None) -> None:
        self.flush()
        if rewind is not None:
            self._log_rewind(rewind)
        for member in ["ticket", *result.controls]:
            self._log_ticket_run(result, member)

    def _log_rewind(self, rewind: dict[str, torch.Tensor]) -> None:
        """The weights the ticket restarts from (replicate 0), once per trial: with a mask, the ticket."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "rewind.safetensors"
            save_file({k: v.detach().cpu().contiguous() for k, v in rewind.items()}, str(path))
            self.client.log_artifact(self._trial_run, str(path))

    def _log_ticket_run(self, result: LevelResult, member: str) -> None:
        key = f"{self.tracking.parent_run_id}/{self._trial_id}/{result.level}/{member}"
        found = self.client.search_runs([self.tracking.experiment_id], f"tags.{S.TAG_KEY} = '{key}'")
        for run in found:
            if run.info.status == "FINISHED":
                return  # logged before a restart: exactly once
            self.client.delete_run(run.info.run_id)  # a half-logged run from a crash: replace it
        tags = {**self._tags(self._flat), S.KIND: S.TICKET, S.TAG_MEMBER: member,
                S.TAG_LEVEL: str(result.level), S.TAG_KEY: key, S.TAG_TICKET_ID: self._trial_id}
        run = self.client.create_run(self.tracking.experiment_id, run_name=f"L{result.level:02d}-{member}",
                                     tags=tags)
        run_id = run.info.run_id
        _log_params(self.client, run_id, self._flat)
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, result.level)
                                               for k, v in ticket_metrics(result, member).items()])
        if member == "ticket":
            self._log_mask_artifacts(run_id, result)
        self.client.set_terminated(run_id, "FINISHED")

    def _log_mask_artifacts(self, run_id: str, result: LevelResult) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            for r, mask in enumerate(result.masks):
                name = S.MASK_ARTIFACT if r == 0 else f"mask_rep{r}.safetensors"
                maskio.save(mask, folder / name, {"level": str(result.level), "replicate": str(r)})
            (folder / S.DENSITY_ARTIFACT).write_text(json.dumps(
                {"density": result.density, "layer_density": result.layer_density,
                 "collapsed_layers": result.collapsed_layers}, indent=2))
            self.client.log_artifacts(run_id, str(folder))

    def finish(self, status: str, reason: str = "") -> None:
        if not self._trial_run:
            return
        self.flush()
        if reason:
            self.client.set_tag(self._trial_run, S.TAG_STATUS_REASON, reason[:4000])
        self.client.set_terminated(self._trial_run, status)


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
