"""MLflow tracking from the workers: a trial logs through a sink.

The store, experiment and parent run are created once, by the driver, before any trial starts
(store.prepare). Workers get a `MlflowSink`:
a small picklable object holding the tracking URI and run ids, which opens its own `MlflowClient` in
the worker and logs in batches with explicit run ids (no global "active run" in worker code).

Every ticket run carries the tag `ticket_key` = <parent>/<trial>/<level>/<member>, and is set FINISHED
only after its last artifact arrived. A level logged again after a restart finds its finished run and
logs nothing twice; a run left unfinished by a dead process is deleted and logged anew. Workers ride out
a tracking server that is briefly away through `outbox.Outbox`, which also takes the logging off the
training path: a level's records are sent from a background thread while the next level trains (outbox.py).

This is the fast path. Ray can stop a trial (ASHA, a stopper, `max_t`, the sweep's end) while its records
are still queued, and a node can vanish with them: the guarantee is the driver's reconciliation against
Ray's level checkpoints at the end of `sweep` and `resume` (search/tune/reconcile.py), which writes through
the same idempotent functions (store.py).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from search.tracking import native, store
from search.tracking import schema as S
from search.tracking.outbox import Outbox, TrackingUnavailable, retry_budget_s
from search.tracking.store import Tracking, find_trial_run
from trainables.io.results import LevelResult


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
    delay_s: float = 0.0  # test-only: slept before each tracking call (outbox.DELAY_ENV)
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
    _monitor: Any = field(default=None, init=False, repr=False)  # MLflow's system metrics onto the trial run

    def __getstate__(self) -> dict[str, Any]:
        return {"tracking": self.tracking, "scratch": self.scratch, "delay_s": self.delay_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["tracking"], state.get("scratch", ""), state.get("delay_s", 0.0))  # type: ignore[misc]

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking.tracking_uri)
        return self._client

    @property
    def seconds(self) -> float:
        """Wall seconds this trial has spent in tracking calls so far."""
        return self._outbox.seconds

    def start(self, trial_id: str, flat: dict[str, Any]) -> None:
        self._outbox.close()  # a reused actor's previous trial: its outbox was drained by `finish`
        self._trial_id, self._flat, self._trial_run, self._logged_step = trial_id, flat, "", -1
        self._buffer, self._sending, self._fresh, self._tried = [], [], False, set()
        self._outbox = Outbox(delay_s=self.delay_s)
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
            self._monitor = native.start_system_metrics(existing, self.tracking.tracking_uri)
            return
        self._trial_run = store.create_trial_run(self.client, self.tracking, self._trial_id, self._flat)
        self._fresh = True
        self._monitor = native.start_system_metrics(self._trial_run, self.tracking.tracking_uri)

    def catch_up(self, results: Sequence[LevelResult], rewind: dict[str, Any] | None) -> None:
        """A trial restored from its checkpoint: log whatever of its finished levels MLflow lacks."""
        if rewind is not None and results:
            self._outbox.put(functools.partial(self._log_rewind, rewind), "rewind weights")
        for result in results:
            self._queue_tickets(result)
        self._outbox.drain_soon()

    def epoch(self, row: dict[str, Any]) -> None:
        metrics = store.epoch_metrics(row, int(time.time() * 1000))
        if not metrics or metrics[0].step <= self._logged_step:
            return  # logged before this trial restarted; a restart recomputes the same values
        with self._lock:
            self._buffer.extend(metrics)

    def _flush(self) -> None:
        """Send the buffered metrics (fixed timestamps, so a batch sent twice is stored once)."""
        with self._lock:
            self._sending += self._buffer
            self._buffer = []
        self._sending = [m for m in self._sending if m.step > self._logged_step]  # known once the run is open
        while self._sending:
            batch = self._sending[:store.MAX_METRICS_PER_BATCH]
            store.log_metrics(self.client, self._trial_run, batch)
            del self._sending[:len(batch)]

    def level(self, result: LevelResult, rewind: dict[str, Any] | None) -> None:
        self._outbox.put(self._flush, "metrics")
        if rewind is not None:
            self._outbox.put(functools.partial(self._log_rewind, rewind), "rewind weights")
        self._queue_tickets(result)
        self._outbox.drain_soon()  # sent while the next level trains; if the server is away, it waits

    def _queue_tickets(self, result: LevelResult) -> None:
        for member in store.members_of(result):
            self._outbox.put(functools.partial(self._log_ticket_run, result, member),
                             f"ticket run L{result.level:02d}-{member}")

    def _log_rewind(self, rewind: dict[str, Any]) -> None:
        """The weights the ticket restarts from (replicate 0), once per trial: with a mask, the ticket."""
        if not self._fresh and store.has_rewind(self.client, self._trial_run):
            return  # logged before this trial restarted
        store.log_rewind(self.client, self._trial_run, rewind, self.scratch)

    def _log_ticket_run(self, result: LevelResult, member: str) -> None:
        key = store.ticket_key(self.tracking, self._trial_id, result.level, member)
        found: list[Any] = []  # a trial run this process created has no ticket runs yet, unless this is a second try
        if not self._fresh or key in self._tried:
            found = self.client.search_runs([self.tracking.experiment_id], f"tags.{S.TAG_KEY} = '{key}'")
        self._tried.add(key)
        store.log_ticket_run(self.client, self.tracking, trial_id=self._trial_id, trial_run=self._trial_run,
                              flat=self._flat, result=result, member=member, found=found, scratch=self.scratch)

    def finish(self, status: str, reason: str = "", *, wait_s: float | None = None) -> None:
        """Flush everything and set the trial run's status, retrying for up to `wait_s` seconds
        (default `retry_budget_s()`); raises TrackingUnavailable if the server stayed away that long.
        An explicit `wait_s` is a hard limit: a stopped trial must let Tune have its thread back in time
        (what is still queued then is the driver's reconciliation's to log)."""
        if not self._trial_id:
            return
        self._outbox.put(self._flush, "metrics")
        self._outbox.put(functools.partial(self._terminate, status, reason), f"trial status {status}")
        budget = retry_budget_s() if wait_s is None else wait_s
        try:
            sent = self._outbox.drain(budget, strict=wait_s is not None)  # after a background drain in progress
        finally:
            self._outbox.close()
            monitor, self._monitor = self._monitor, None
            if monitor is not None:
                monitor.finish()  # its last samples; it logs and swallows its own errors
        if not sent:
            raise TrackingUnavailable(f"{self.tracking.tracking_uri} did not take this trial's records for "
                                      f"{budget:g} s; still queued: {self._outbox.describe()}")

    def _terminate(self, status: str, reason: str) -> None:
        if reason:
            self.client.set_tag(self._trial_run, S.TAG_STATUS_REASON, reason[:4000])
        self.client.log_batch(self._trial_run, metrics=[Metric(S.TRACKING_SECONDS, self._outbox.seconds,
                                                               int(time.time() * 1000), 0)])
        self.client.set_terminated(self._trial_run, status)
