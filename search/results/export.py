"""Tickets out of MLflow: export to a folder, ticket transfer (`runs:/` init masks), mask comparison.

Artifacts are only ever downloaded one by name (`mask.safetensors`, `density.json`,
`rewind.safetensors`) into a fresh temporary folder, validated, then copied under fixed names into the
destination: nothing a run recorded ever becomes part of a local path, and in a store on this file
system an artifact that is a symlink (or resolves outside its run's folder) is refused. Run ids must be
MLflow run ids (32 hex characters); `runs:/` URIs are matched whole, so `..`, `%2e%2e` or extra path
parts are refused before anything is looked up. `trainables.ticketio.load_ticket` reads an exported
folder back into a network.

Example:
    >>> export_ticket("3f2a...", "exported/", "sqlite:///runs/mlflow.db")
    >>> resolve_init_mask({"prune.init_mask": "runs:/3f2a..."})["prune.init_mask"]
    '/abs/runs/init_masks/3f2a.../mask.safetensors'
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, overload

from mlflow.tracking import MlflowClient

from search.results.query import (
    PARENT_TAG,
    check_run_id,
    client_for,
    default_tracking_uri,
    get_ticket_run,
    tracking_root,
)
from search.tracking import schema as S
from trainables.config import ConfigError, Ticket
from trainables.io import maskio
from trainables.io.ticketio import load_rewind
from trainables.paths import DENSITY_FILE, MASK_FILE, REWIND_FILE, TICKET_JSON
from trainables.pruning import masks as mk
from trainables.tasks.registry import shapes as task_shapes

PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
RUNS_URI = re.compile(r"runs:/([0-9a-f]{32})(?:/mask\.safetensors)?/?")


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    """MLflow draws a tqdm bar on stderr per download; library code does not print."""
    before = os.environ.get(PROGRESS_BAR_ENV)
    os.environ[PROGRESS_BAR_ENV] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PROGRESS_BAR_ENV, None)
        else:
            os.environ[PROGRESS_BAR_ENV] = before


def _download(client: MlflowClient, run_id: str, name: str, into: Path) -> Path:
    """One top-level artifact `name` of a run, into the empty folder `into`; ConfigError if absent."""
    listed = {Path(f.path).name for f in client.list_artifacts(run_id) if not f.is_dir}
    if name not in listed:
        raise ConfigError(f"run {run_id} has no artifact '{name}'")
    _check_local_artifact(client, run_id, name)
    into.mkdir(parents=True, exist_ok=False)
    with _no_progress_bar():
        path = Path(client.download_artifacts(run_id, name, str(into)))
    if path.is_symlink() or not path.is_file() or path.parent.resolve() != into.resolve():
        raise ConfigError(f"run {run_id}: artifact '{name}' did not download as a plain file")
    return path


def _check_local_artifact(client: MlflowClient, run_id: str, name: str) -> None:
    """In a store on this file system, the artifact must be a plain file inside the run's artifact folder:
    a symlink planted there would make a download copy any file this user can read."""
    uri = client.get_run(run_id).info.artifact_uri or ""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("", "file"):
        return  # served by a tracking server or a bucket, which hand out only what is stored under the run
    root = Path(urllib.parse.unquote(parsed.path))
    path = root / name
    if path.is_symlink() or not path.resolve().is_relative_to(root.resolve()):
        raise ConfigError(f"run {run_id}: artifact '{name}' links outside the run's artifact folder; not read")


def _density_doc(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"artifact {DENSITY_FILE}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"artifact {DENSITY_FILE}: expected a JSON object")
    return doc


def _shape(ticket: Ticket) -> tuple[list[int] | None, int | None]:
    """Input shape and output count (classes, vocabulary, actions), recorded so that loading the ticket
    needs no data."""
    try:
        shape, outputs = task_shapes(ticket)
    except ConfigError:  # data not on this machine: load_ticket will read it where it is
        return None, None
    return list(shape), outputs


def export_ticket(run_id: str, out: str | Path, tracking_uri: str | None = None) -> Path:
    """Write `out/{ticket.json, mask.safetensors, rewind.safetensors, density.json}` for a ticket run."""
    client = client_for(tracking_uri)
    run = get_ticket_run(client, run_id)
    trial = check_run_id(run.data.tags.get(PARENT_TAG, ""), f"run {run_id}: parent trial run id")
    ticket = Ticket.from_flat(run.data.params)
    out = Path(os.path.abspath(out))  # "a/../out" is out: no folder "a" made on the way
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} exists and is not a folder")
    with tempfile.TemporaryDirectory(prefix="ticket-export-") as tmp:
        mask = _download(client, run_id, MASK_FILE, Path(tmp) / "mask")
        density = _download(client, run_id, DENSITY_FILE, Path(tmp) / "density")
        rewind = _download(client, trial, REWIND_FILE, Path(tmp) / "rewind")
        maskio.load(mask)  # validate before anything lands in `out`
        _density_doc(density)
        load_rewind(rewind)
        out.mkdir(parents=True, exist_ok=True)
        for src, name in ((mask, MASK_FILE), (density, DENSITY_FILE), (rewind, REWIND_FILE)):
            shutil.copyfile(src, out / name)
    input_shape, num_classes = _shape(ticket)
    m = run.data.metrics
    doc = {"run_id": run_id, "trial_run_id": trial, "sweep": run.data.tags.get(S.TAG_SWEEP, ""),
           "level": int(m.get("level", run.data.tags.get(S.TAG_LEVEL, -1))), "metrics": dict(m),
           "config": dict(run.data.params), "input_shape": input_shape, "num_classes": num_classes}
    (out / TICKET_JSON).write_text(json.dumps(doc, indent=2))
    return out


def parse_runs_uri(uri: str) -> str:
    """`runs:/RUN_ID` or `runs:/RUN_ID/mask.safetensors` -> RUN_ID; anything else is a ConfigError."""
    match = RUNS_URI.fullmatch(uri.strip())
    if not match:
        raise ConfigError(f"prune.init_mask: {uri[:80]!r} is not runs:/<32-hex run id>[/mask.safetensors]")
    return match.group(1)


def download_mask(run_id: str, tracking_uri: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """A ticket run's mask as a local, validated file `<cache_dir>/<run_id>/mask.safetensors`.

    `cache_dir` defaults to `<tracking root>/init_masks`; pass a shared folder on a cluster."""
    uri = tracking_uri or default_tracking_uri()
    client = client_for(uri)
    get_ticket_run(client, check_run_id(run_id))
    root = Path(cache_dir) if cache_dir else tracking_root(uri) / "init_masks"
    dest = (root / run_id).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ticket-mask-") as tmp:
        path = _download(client, run_id, MASK_FILE, Path(tmp) / "mask")
        maskio.load(path)
        partial = dest / f".{MASK_FILE}.{os.getpid()}.tmp"
        shutil.copyfile(path, partial)
        os.replace(partial, dest / MASK_FILE)  # readers (other trials) never see half a file
    return dest / MASK_FILE


@overload
def resolve_init_mask(flat_or_ticket: Ticket, tracking_uri: str | None = ..., *,
                      cache_dir: str | Path | None = ...) -> Ticket: ...


@overload
def resolve_init_mask(flat_or_ticket: dict[str, Any], tracking_uri: str | None = ..., *,
                      cache_dir: str | Path | None = ...) -> dict[str, Any]: ...


def resolve_init_mask(flat_or_ticket: Ticket | dict[str, Any], tracking_uri: str | None = None, *,
                      cache_dir: str | Path | None = None) -> Ticket | dict[str, Any]:
    """Ticket transfer: replace a `runs:/` `prune.init_mask` by the absolute path of the downloaded mask.

    Takes and returns the same kind (Ticket or flat dict); anything but a `runs:/` URI passes unchanged.
    """
    if isinstance(flat_or_ticket, Ticket):
        value = flat_or_ticket.prune.init_mask
    else:
        value = str(flat_or_ticket.get("prune.init_mask", "") or "")
    if not value.startswith("runs:"):
        return flat_or_ticket
    path = str(download_mask(parse_runs_uri(value), tracking_uri, cache_dir))
    if isinstance(flat_or_ticket, Ticket):
        return flat_or_ticket.replace(**{"prune.init_mask": path})
    return {**flat_or_ticket, "prune.init_mask": path}


@dataclass(frozen=True)
class LayerOverlap:
    """One layer of two masks: densities (None where absent), Hamming distance (None if not comparable)."""

    name: str
    density_a: float | None
    density_b: float | None
    hamming: float | None
    note: str = ""


@dataclass(frozen=True)
class MaskComparison:
    run_a: str
    run_b: str
    density_a: float
    density_b: float
    hamming: float | None  # over the layers both masks have with equal shapes, weighted by size
    layers: list[LayerOverlap]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _shape_text(shape: Any) -> str:
    return "x".join(str(d) for d in shape) or "scalar"


def compare_masks(a: Mapping[str, Any], b: Mapping[str, Any], run_a: str = "a", run_b: str = "b") -> MaskComparison:
    """Per-layer densities and normalised Hamming distance of two masks, tolerating layer mismatches."""
    da, db = mk.layer_density(dict(a)), mk.layer_density(dict(b))
    shared: mk.Mask = {}
    layers = []
    for name in [*a, *(n for n in b if n not in a)]:
        if name not in b or name not in a:
            layers.append(LayerOverlap(name, da.get(name), db.get(name), None,
                                       f"only in {run_a if name in a else run_b}"))
        elif a[name].shape != b[name].shape:
            layers.append(LayerOverlap(name, da[name], db[name], None,
                                       f"shapes differ: {_shape_text(a[name].shape)} vs "
                                       f"{_shape_text(b[name].shape)}"))
        else:
            shared[name] = a[name]
            layers.append(LayerOverlap(name, da[name], db[name], mk.hamming({name: a[name]}, {name: b[name]})))
    overall = mk.hamming(shared, {n: b[n] for n in shared}) if shared else None
    return MaskComparison(run_a, run_b, mk.density(dict(a)), mk.density(dict(b)), overall, layers)


def compare_tickets(run_a: str, run_b: str, tracking_uri: str | None = None) -> MaskComparison:
    """Compare the masks of two ticket runs."""
    client = client_for(tracking_uri)
    loaded = []
    with tempfile.TemporaryDirectory(prefix="ticket-compare-") as tmp:
        for i, run_id in enumerate((run_a, run_b)):
            get_ticket_run(client, run_id)
            loaded.append(maskio.load(_download(client, run_id, MASK_FILE, Path(tmp) / str(i))))
    return compare_masks(loaded[0], loaded[1], run_a, run_b)
