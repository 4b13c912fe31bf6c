"""The MLflow store: the sweep's experiment and parent run, and the records of one trial, written the same
way by the worker's sink and the driver's reconciliation; and reading runs back, page by page.

The store, experiment and parent run are created once, by the driver, before any trial starts (`prepare`:
several processes opening a fresh sqlite store at once race on its migrations).

A trial run (params = flat ticket keys, per-evaluation metrics, the rewind weights) and, per finished level
and member, a ticket run keyed by `ticket_key` = <parent>/<trial>/<level>/<member>. Every writer here is
idempotent: it looks for what is already there first, so a record written twice (by a restarted trial, or by
the worker and then the driver) is stored once. A ticket run is set FINISHED only after its last artifact,
so a run that is not FINISHED is half-logged (its writer died) and is replaced.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mlflow.entities import Experiment, Metric, Param, Run
from mlflow.store.entities import PagedList
from mlflow.tracking import MlflowClient

from search.tracking import native
from search.tracking import schema as S
from trainables import paths

if TYPE_CHECKING:
    import torch

    from trainables.io.results import LevelResult

# torch (safetensors, the mask writer) is imported inside the writers that store tensors: queries read runs
# through this module too, and a query command should not pay for torch.

# Against a server, MlflowClient.set_terminated first fetches the whole run (GET runs/get: its params, metrics
# and tags) only to print "View run <name> at <url>": one request in nine of a ticket run's, the heaviest read
# among them, and a line per run in every trial's log (benchmarks/capacity.py). Off, unless the environment
# sets it; every process that writes runs imports this module (worker sinks, the driver's callbacks).
SUPPRESS_URL_ENV = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
os.environ.setdefault(SUPPRESS_URL_ENV, "true")

MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limits
MAX_PARAMS_PER_BATCH = 100
T = TypeVar("T")


@dataclass(frozen=True)
class Tracking:
    """Where a sweep's records live: handed from the driver to every worker."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    sweep: str


def param_value(v: Any) -> str:
    if isinstance(v, tuple | list):
        return ",".join(str(x) for x in v)
    return str(v)


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(k, param_value(v)) for k, v in params.items()]
    for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[i:i + MAX_PARAMS_PER_BATCH])


def log_metrics(client: MlflowClient, run_id: str, metrics: Sequence[Metric]) -> None:
    for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=list(metrics[i:i + MAX_METRICS_PER_BATCH]))


def paged(fetch: Callable[[int, str | None], PagedList[T]], limit: int | None = None) -> Iterator[T]:
    """Everything an MLflow search returns, following its page tokens: `fetch(max_results, page_token)`
    is one page; at most `limit` items when given."""
    token, seen = None, 0
    while limit is None or seen < limit:
        page = fetch(S.PAGE if limit is None else min(S.PAGE, limit - seen), token)
        yield from page
        seen += len(page)
        token = page.token
        if not token:
            return


def search_all(client: MlflowClient, experiment_ids: str | list[str], filter_string: str, *,
               order_by: list[str] | None = None, limit: int | None = None) -> list[Run]:
    """Every run of the experiment(s) matching `filter_string` (up to `limit`), page by page."""
    ids = [experiment_ids] if isinstance(experiment_ids, str) else list(experiment_ids)
    return list(paged(lambda size, token: client.search_runs(ids, filter_string, max_results=size,
                                                              order_by=order_by, page_token=token), limit))


def experiments(client: MlflowClient) -> Iterator[Experiment]:
    """Every active experiment of the store (one per sweep), page by page."""
    return paged(lambda size, token: client.search_experiments(max_results=size, page_token=token))


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
        log_params(client, parent, params)
    else:
        client.update_run(parent, status="RUNNING")
    native.describe_experiment(client, exp_id, sweep, params)
    return Tracking(tracking_uri, exp_id, parent, sweep)


def _find_parent(client: MlflowClient, exp_id: str, sweep: str) -> str | None:
    runs = client.search_runs([exp_id], f"tags.{S.KIND} = '{S.SWEEP}' and tags.{S.TAG_SWEEP} = '{sweep}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def describing_tags(tracking: Tracking, trial_id: str, flat: dict[str, Any]) -> dict[str, str]:
    from trainables.tasks.registry import score_meaning  # the writers run beside the engine: torch is loaded

    tags = {S.TAG_SWEEP: tracking.sweep, S.TAG_TRIAL: trial_id}
    tags.update({tag: str(flat[key]) for tag, key in S.DESCRIBING.items() if key in flat})
    tags[S.TAG_SCORE] = score_meaning(str(flat.get("data.name", "")))
    return tags


def find_trial_run(client: MlflowClient, tr: Tracking, trial_id: str) -> str | None:
    runs = client.search_runs([tr.experiment_id],
                              f"tags.{S.KIND} = '{S.TRIAL}' and tags.{S.TAG_TRIAL} = '{trial_id}' and "
                              f"tags.`{S.PARENT_TAG}` = '{tr.parent_run_id}'", max_results=1)
    return runs[0].info.run_id if runs else None


def create_trial_run(client: MlflowClient, tracking: Tracking, trial_id: str, flat: dict[str, Any]) -> str:
    tags = {**describing_tags(tracking, trial_id, flat), S.KIND: S.TRIAL, S.PARENT_TAG: tracking.parent_run_id}
    run_id: str = client.create_run(tracking.experiment_id, run_name=f"trial-{trial_id}", tags=tags).info.run_id
    log_params(client, run_id, flat)
    native.log_dataset(client, run_id, flat)
    return run_id


def ticket_key(tracking: Tracking, trial_id: str, level: int, member: str) -> str:
    return f"{tracking.parent_run_id}/{trial_id}/{level}/{member}"


def ticket_runs_by_key(client: MlflowClient, tracking: Tracking) -> dict[str, list[Run]]:
    """Every ticket run of the sweep (any status), grouped by `ticket_key`: one query, paged."""
    found: dict[str, list[Run]] = {}
    for run in search_all(client, tracking.experiment_id,
                          f"tags.{S.KIND} = '{S.TICKET}' and tags.{S.TAG_KEY} LIKE '{tracking.parent_run_id}/%'"):
        found.setdefault(run.data.tags.get(S.TAG_KEY, ""), []).append(run)
    return found


def has_rewind(client: MlflowClient, trial_run: str) -> bool:
    return any(a.path == S.REWIND_ARTIFACT for a in client.list_artifacts(trial_run))


def log_rewind(client: MlflowClient, trial_run: str, rewind: dict[str, torch.Tensor], scratch: str = "") -> None:
    """The weights the ticket restarts from (replicate 0): with a mask, the ticket."""
    from safetensors.torch import save as save_bytes

    from trainables.io import maskio

    with tempfile.TemporaryDirectory(prefix="ticket-rewind-", dir=scratch or None) as tmp:
        path = Path(tmp) / S.REWIND_ARTIFACT
        blob = save_bytes({k: v.detach().cpu().contiguous() for k, v in rewind.items()})
        maskio.write_atomically(path, blob, "rewind weights")  # a full disk: OSError naming the file
        client.log_artifact(trial_run, str(path))


def members_of(result: LevelResult) -> list[str]:
    """The members of a level that get a ticket run: the ticket and each control."""
    return [S.MEMBER_TICKET, *result.controls]


def log_ticket_run(client: MlflowClient, tracking: Tracking, *, trial_id: str, trial_run: str,
                   flat: dict[str, Any], result: LevelResult, member: str, found: Iterable[Run] = (),
                   scratch: str = "") -> bool:
    """Make sure the ticket run of (`result.level`, `member`) exists exactly once and FINISHED.

    `found` are the runs already carrying its key: one FINISHED means nothing to do (False is returned);
    runs that are not FINISHED are half-logged and replaced. Returns True when a run was written."""
    found = list(found)
    if any(run.info.status == "FINISHED" for run in found):
        return False
    key = ticket_key(tracking, trial_id, result.level, member)
    # Stage the files before any run exists: a disk error here leaves nothing half-logged behind.
    with tempfile.TemporaryDirectory(prefix="ticket-mask-", dir=scratch or None) as tmp:
        if member == S.MEMBER_TICKET:
            stage_mask_artifacts(Path(tmp), result)
            native.stage_picture(Path(tmp), result)
        for run in found:  # half-logged when its writer died: replace it, and its logged model
            native.drop_models(client, tracking.experiment_id, run.info.run_id)
            client.delete_run(run.info.run_id)
        tags = {**describing_tags(tracking, trial_id, flat), S.PARENT_TAG: trial_run, S.KIND: S.TICKET,
                S.TAG_MEMBER: member, S.TAG_LEVEL: str(result.level), S.TAG_KEY: key, S.TAG_TICKET_ID: trial_id}
        name = native.ticket_run_name(flat, result.level, result.density, member)
        run_id = client.create_run(tracking.experiment_id, run_name=name, tags=tags).info.run_id
        params = {k: param_value(v) for k, v in flat.items()}
        model = native.create_model(client, tracking.experiment_id, run_id, name, key, params,
                                    f"runs:/{trial_run}/{S.REWIND_ARTIFACT}") if member == S.MEMBER_TICKET else None
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, result.level, model_id=model, run_id=run_id)
                   for k, v in ticket_metrics(result, member).items()]  # linked to the ticket's logged model
        items = [Param(k, v) for k, v in params.items()]
        client.log_batch(run_id, metrics=metrics, params=items[:MAX_PARAMS_PER_BATCH])  # one call
        for i in range(MAX_PARAMS_PER_BATCH, len(items), MAX_PARAMS_PER_BATCH):
            client.log_batch(run_id, params=items[i:i + MAX_PARAMS_PER_BATCH])
        if model is not None:
            client.log_artifacts(run_id, tmp)
            native.finish_model(client, run_id, model, Path(tmp), result.level)
        client.set_terminated(run_id, "FINISHED")  # last: only a complete ticket run is FINISHED
    return True


def stage_mask_artifacts(folder: Path, result: LevelResult) -> None:
    """mask.safetensors (+ one per further replicate), trained.safetensors and density.json, into `folder`."""
    from trainables.io import maskio

    for r, mask in enumerate(result.masks):
        name = paths.replicate_mask(r)
        maskio.save(mask, folder / name, {"level": str(result.level), "replicate": str(r)})
    if result.weights:  # the trained ticket (replicate 0): what `export --format` turns into a network
        from safetensors.torch import save as save_bytes

        blob = save_bytes({k: v.contiguous() for k, v in result.weights.items()},
                          {"level": str(result.level), "packed": "kept positions of mask.safetensors"})
        maskio.write_atomically(folder / S.TRAINED_ARTIFACT, blob, "trained weights")
    (folder / S.DENSITY_ARTIFACT).write_text(json.dumps(
        {"density": result.density, "layer_density": result.layer_density,
         "collapsed_layers": result.collapsed_layers}, indent=2))


def ticket_metrics(result: LevelResult, member: str) -> dict[str, float]:
    """The metric row of a ticket run (with its statistics over replicates, its paired margins over each
    control, the sanity-check verdict, instability and latency where measured); a control's run carries the
    control's own scores and its paired margin."""
    from trainables.io.results import instability_metrics, mask_information  # torch: not at import

    m = {k: float(getattr(result, k)) for k in S.TICKET_METRICS
         if k not in ("sparsity", "collapsed") and hasattr(result, k)}
    m["collapsed"] = float(result.collapsed)
    if member == S.MEMBER_TICKET:
        m.update(instability_metrics(result))
        m.update(result.stats)  # <score>_mean/_std/_n/_ci95 over replicates (trainables/stats.py)
        for control, margin in result.margins.items():
            m.update({S.margin_metric(control, k): v for k, v in margin.items()})
        # the controls' scores beside the ticket's: a query reads margins off one run
        m.update({S.CONTROL_SCORE.format(control=c): float(v["val_score"]) for c, v in result.controls.items()
                  if "val_score" in v})
        verdict = mask_information(result)  # NaN (no shuffle control, one replicate): MLflow has no missing value
        if math.isfinite(verdict):
            m[S.MASK_INFORMATION] = verdict
        if math.isfinite(result.latency_ms):
            m[S.LATENCY] = result.latency_ms
    else:
        c = result.controls[member]
        m.update({k: float(v) for k, v in c.items()})
        m["advantage"] = result.advantage[member]
        m.update({S.margin_metric("", k): v for k, v in result.margins.get(member, {}).items()})
        for k in ("val_loss", "test_loss", "best_val_acc", "val_acc_std", "test_acc_std"):
            m.pop(k, None)
    m["sparsity"] = 1.0 - m["density"]
    return m


def epoch_metrics(row: dict[str, Any], timestamp_ms: int) -> list[Metric]:
    """The trial run's metrics of one evaluation row, at step = the trial's cumulative iteration."""
    step = int(row.get("iterations_total", row.get("iteration", 0)))
    return [Metric(key, float(row[key]), timestamp_ms, step) for key in S.EPOCH_METRICS if key in row]
