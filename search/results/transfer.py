"""Ticket transfer: a `runs:/<run id>` `prune.init_mask` made a local, validated mask file before training.

`runs:/` URIs are matched whole, so `..`, `%2e%2e` or extra path parts are refused before anything is
looked up; the mask lands atomically under `<cache>/<run id>/mask.safetensors` (other trials may read it).

Example:
    >>> resolve_init_mask({"prune.init_mask": "runs:/3f2a..."})["prune.init_mask"]
    '/abs/runs/init_masks/3f2a.../mask.safetensors'
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any, overload

from search.results.artifacts import download
from search.results.query import check_run_id, client_for, default_tracking_uri, get_ticket_run, tracking_root
from trainables.config import ConfigError, Ticket
from trainables.io import maskio
from trainables.paths import MASK_FILE

RUNS_URI = re.compile(r"runs:/([0-9a-f]{32})(?:/mask\.safetensors)?/?")
INIT_MASKS_DIR = "init_masks"  # under the tracking root (or a sweep's storage root): downloaded masks


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
    root = Path(cache_dir) if cache_dir else tracking_root(uri) / INIT_MASKS_DIR
    dest = (root / run_id).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ticket-mask-") as tmp:
        path = download(client, run_id, MASK_FILE, Path(tmp) / "mask")
        maskio.load(path)
        maskio.write_atomically(dest / MASK_FILE, path.read_bytes())  # readers (other trials) never see half a file
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
