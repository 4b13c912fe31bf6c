"""A ticket as MLflow's own views show it: a run name a person can scan, the dataset as a run input, the ticket
as an MLflow 3 LoggedModel (ranked by `mlflow.search_logged_models` and the UI's model view), a picture of its
layer densities, system metrics on trial runs, and the sweep's description on its experiment.

Called by the idempotent writers of search/tracking/store.py (worker sink and driver reconciliation alike), so
whatever writes a ticket run writes these too. Names (tags, artifacts) live in search/tracking/schema.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelOutput
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from search.tracking import schema as S

log = logging.getLogger("search.tracking")

if TYPE_CHECKING:
    from trainables.io.results import LevelResult

MODEL_TYPE = "lottery-ticket"  # LoggedModel.model_type of every ticket
DESCRIPTION_TAG = "mlflow.note.content"  # the UI shows it as the experiment's (and a run's) description
# Seconds between system-metric samples of a trial (`TICKET_SEARCH_SYSTEM_METRICS_S` on the nodes; 0 = none).
# Each sample is a request to the tracking server: 4,000 concurrent trials (1,000 GPUs, four trials each) at
# 30 s make 133 a second, more of the server's CPU than their ticket runs (docs/CLUSTER.md "Capacity").
SYSTEM_METRICS_INTERVAL_S = 30.0
SYSTEM_METRICS_ENV = "TICKET_SEARCH_SYSTEM_METRICS_S"


def ticket_run_name(flat: dict[str, Any], level: int, density: float, member: str) -> str:
    """`snip r0.43 k20 L3 19.3%` (scorer, rate, rewind iteration, level, density), a control's name after it."""
    try:
        rate = f"r{float(flat.get('prune.rate', math.nan)):.2f}"
    except (TypeError, ValueError):
        rate = "r?"
    name = f"{flat.get('prune.scorer', '?')} {rate} k{flat.get('prune.rewind_iter', 0)} L{level} {100 * density:.1f}%"
    return name if member == S.MEMBER_TICKET else f"{name} {member}"


def model_name(run_name: str) -> str:
    """A LoggedModel name from a run name (MLflow refuses / : . % and quotes in model names)."""
    return "".join("_" if ch in "/:.%\"'" else ch for ch in run_name).replace(" ", "-").strip("-_") or "ticket"


def describe_experiment(client: MlflowClient, experiment_id: str, sweep: str, params: dict[str, Any]) -> None:
    """The sweep's description (objective, search, budget, base keys) as the experiment's note."""
    lines = [f"**Lottery-ticket sweep `{sweep}`** (ticket-search).", ""]
    lines += [f"- {k}: `{v}`" for k, v in sorted(params.items())]
    lines += ["", "Ticket runs are nested under trial runs; each ticket is also a logged model (model_type "
              f"`{MODEL_TYPE}`), ranked by `val_score`."]
    client.set_experiment_tag(experiment_id, DESCRIPTION_TAG, "\n".join(lines))


def dataset_of(flat: dict[str, Any], sizes: dict[str, int] | None = None) -> Dataset:
    """The dataset a trial trains on: its name, a digest of every `data.*` key that shapes it (the split seed
    and fraction included) and, when known, its split sizes."""
    keys = {k: str(v) for k, v in sorted(flat.items()) if k.startswith("data.") and k not in ("data.root",)}
    digest = hashlib.sha1(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:8]
    profile = {"splits": sizes} if sizes else {}
    return Dataset(name=str(flat.get("data.name", "?")), digest=digest, source_type="code",
                   source=json.dumps({"config": keys}), profile=json.dumps({**profile, **keys}))


DATASET_TRIES = 3  # log_inputs attempts: two trials inserting one dataset at once collide on its key


def log_dataset(client: MlflowClient, run_id: str, flat: dict[str, Any], sizes: dict[str, int] | None = None) -> None:
    """The trial's dataset as a run input (the UI's "Datasets" column); logging it twice keeps one.

    MLflow's store inserts a dataset it has not seen; two trials of a sweep starting together (say when the
    tracking server comes back) both insert it and one gets a unique-key violation (BAD_REQUEST). The next
    try finds the row and only links it. The input is a view in the UI: if it still fails, the trial goes
    on without it (logged), rather than failing a trial over a label."""
    inputs = [DatasetInput(dataset_of(flat, sizes), [InputTag("mlflow.data.context", "training")])]
    for attempt in range(DATASET_TRIES):
        try:
            client.log_inputs(run_id, inputs)
            return
        except MlflowException as e:
            if e.get_http_status_code() >= 500 or attempt == DATASET_TRIES - 1:
                if e.get_http_status_code() >= 500:
                    raise  # the server is away: the outbox retries the whole step
                log.warning("dataset input of run %s not logged: %s", run_id, str(e).splitlines()[0][:200])
                return
            time.sleep(0.2 * (attempt + 1))


def stage_picture(folder: Path, result: LevelResult) -> None:
    """A bar chart of the ticket's per-layer density, `folder/<S.PICTURE_ARTIFACT>`: SVG written directly (a
    fraction of a millisecond a level, where a plotting library would take a tenth of a second), which the
    MLflow UI shows as an image."""
    bar, label, width, row = 300, 180, 560, 22  # pixels
    names = list(result.layer_density)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{row * (len(names) + 2)}" '
           'font-family="sans-serif" font-size="12">',
           f'<text x="4" y="16" font-weight="bold">level {result.level}: density {100 * result.density:.2f}% '
           '(weights kept per layer)</text>']
    for i, name in enumerate(names):
        y, kept = row * (i + 1) + 4, result.layer_density[name]
        out += [f'<text x="4" y="{y + 14}">{escape(name)}</text>',
                f'<rect x="{label}" y="{y}" width="{bar}" height="{row - 6}" fill="#eee"/>',
                f'<rect x="{label}" y="{y}" width="{bar * kept:.1f}" height="{row - 6}" fill="#2a9d4b"/>',
                f'<text x="{label + bar + 6}" y="{y + 14}">{100 * kept:.1f}%</text>']
    (folder / S.PICTURE_ARTIFACT).write_text("\n".join([*out, "</svg>"]) + "\n")


def drop_models(client: MlflowClient, experiment_id: str, run_id: str) -> None:
    """Delete the logged models of a half-logged ticket run before it is replaced (no orphan models)."""
    for model in client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'"):
        client.delete_logged_model(model.model_id)


def create_model(client: MlflowClient, experiment_id: str, run_id: str, run_name: str, key: str,
                 flat: dict[str, str], rewind_uri: str) -> str:
    """The ticket's LoggedModel (params = the ticket's config; a tag points at its rewind weights, stored once
    per trial on the trial run), pending until `finish_model`."""
    model = client.create_logged_model(experiment_id, name=model_name(run_name), source_run_id=run_id,
                                       tags={S.TAG_KEY: key, S.TAG_REWIND: rewind_uri}, params=flat,
                                       model_type=MODEL_TYPE)
    return str(model.model_id)


def finish_model(client: MlflowClient, run_id: str, model_id: str, folder: Path, level: int) -> None:
    """Its artifacts (mask, density, picture, config), the run's output link, then READY."""
    client.log_model_artifacts(model_id, str(folder))
    client.log_outputs(run_id, [LoggedModelOutput(model_id, level)])
    client.finalize_logged_model(model_id, "READY")


def system_metrics_interval_s() -> float:
    """Seconds between a trial's system-metric samples: `TICKET_SEARCH_SYSTEM_METRICS_S` where set to a number
    (0 or less: none), else SYSTEM_METRICS_INTERVAL_S."""
    text = os.environ.get(SYSTEM_METRICS_ENV, "").strip()
    try:
        return max(0.0, float(text)) if text else SYSTEM_METRICS_INTERVAL_S
    except ValueError:
        log.warning("%s=%r is not a number of seconds; sampling every %g s", SYSTEM_METRICS_ENV, text,
                    SYSTEM_METRICS_INTERVAL_S)
        return SYSTEM_METRICS_INTERVAL_S


def start_system_metrics(run_id: str, tracking_uri: str, interval_s: float | None = None) -> Any:
    """MLflow's system metrics (CPU, memory; GPU where present) sampled every `interval_s` (default
    `system_metrics_interval_s()`) onto the trial run; None where psutil is missing or the interval is 0.
    The caller stops it with `.finish()`."""
    interval_s = system_metrics_interval_s() if interval_s is None else interval_s
    if interval_s <= 0:
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError:  # psutil missing: tracking goes on without
        return None
    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, tracking_uri=tracking_uri)
    monitor.start()
    return monitor
