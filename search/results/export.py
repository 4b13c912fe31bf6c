"""Exporting a ticket run to a folder: its mask, density, rewind weights and config, to rebuild it anywhere;
with `--format masked|compact|sparse` also its trained weights and the trained network as TorchScript; for a
2:4 ticket on a machine with a GPU of compute capability 8.0 or more, `sparse` also writes the network for
PyTorch's 2:4 semi-structured kernels (trainables/io/semistructured.py), and ticket.json's `semistructured`
says which layers use them, or why none do.

The files are downloaded one by name and validated (artifacts.py), then copied under the fixed names of
trainables/paths.py into the destination; run ids must be MLflow run ids (32 hex characters).
`trainables.io.ticketio.load_ticket` reads an exported folder back into a network.

Example:
    >>> export_ticket("3f2a...", "exported/", "sqlite:///runs/mlflow.db")
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from search.results.artifacts import download
from search.results.query import check_run_id, client_for, get_ticket_run
from search.tracking import schema as S
from trainables.config import ConfigError, Ticket
from trainables.io import maskio, semistructured
from trainables.io.exported import FORMATS, TOLERANCE, convert, load_trained, save_torchscript
from trainables.io.packing import unpack
from trainables.io.ticketio import load_rewind
from trainables.paths import DENSITY_FILE, MASK_FILE, MODEL_FILE, REWIND_FILE, TICKET_JSON, TRAINED_FILE
from trainables.pruning.structure import parse
from trainables.tasks.registry import shapes as task_shapes
from trainables.typed import choice


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


def export_ticket(run_id: str, out: str | Path, tracking_uri: str | None = None, *, fmt: str | None = None) -> Path:
    """Write `out/{ticket.json, mask.safetensors, rewind.safetensors, density.json}` for a ticket run; with
    `fmt` (masked, compact, sparse) also its trained weights and `model.pt`, the trained network in TorchScript
    (trainables/io/exported.py)."""
    if fmt is not None:
        choice("--format", fmt, FORMATS)
    client = client_for(tracking_uri)
    run = get_ticket_run(client, run_id)
    trial = check_run_id(run.data.tags.get(S.PARENT_TAG, ""), f"run {run_id}: parent trial run id")
    ticket = Ticket.from_flat(run.data.params)
    out = Path(os.path.abspath(out))  # "a/../out" is out: no folder "a" made on the way
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} exists and is not a folder")
    with tempfile.TemporaryDirectory(prefix="ticket-export-") as tmp:
        mask = download(client, run_id, MASK_FILE, Path(tmp) / "mask")
        density = download(client, run_id, DENSITY_FILE, Path(tmp) / "density")
        rewind = download(client, trial, REWIND_FILE, Path(tmp) / "rewind")
        files = [(mask, MASK_FILE), (density, DENSITY_FILE), (rewind, REWIND_FILE)]
        if fmt is not None:
            trained = download(client, run_id, TRAINED_FILE, Path(tmp) / "trained")
            unpack(load_rewind(trained), maskio.load(mask))  # the packed values fit the mask
            files.append((trained, TRAINED_FILE))
        maskio.load(mask)  # validate before anything lands in `out`
        _density_doc(density)
        load_rewind(rewind)
        out.mkdir(parents=True, exist_ok=True)
        for src, name in files:
            shutil.copyfile(src, out / name)
    input_shape, num_classes = _shape(ticket)
    m = run.data.metrics
    doc = {"run_id": run_id, "trial_run_id": trial, "sweep": run.data.tags.get(S.TAG_SWEEP, ""),
           "level": int(m.get("level", run.data.tags.get(S.TAG_LEVEL, -1))), "metrics": dict(m),
           "config": dict(run.data.params), "input_shape": input_shape, "num_classes": num_classes}
    if fmt is not None:
        doc.update({"format": fmt, "model": MODEL_FILE, "tolerance": TOLERANCE})
    (out / TICKET_JSON).write_text(json.dumps(doc, indent=2))
    if fmt is not None:
        _, model, mask_t, shape = load_trained(out)
        save_torchscript(convert(model, mask_t, fmt, shape), shape, out / MODEL_FILE)
        if fmt == "sparse" and parse(ticket.prune.structure).kind == "n:m":  # and a GPU: 2:4 layers for it too
            doc["semistructured"] = semistructured.export(model, mask_t, out, shape)
            (out / TICKET_JSON).write_text(json.dumps(doc, indent=2))
    return out
