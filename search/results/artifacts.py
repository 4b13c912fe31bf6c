"""Downloading a run's artifacts safely: one top-level file by name, into a fresh folder, never a symlink.

Artifacts are only ever downloaded one by name (`mask.safetensors`, `density.json`, `rewind.safetensors`)
into a fresh temporary folder and validated by the caller before anything is copied under a fixed name:
nothing a run recorded ever becomes part of a local path, and in a store on this file system an artifact
that is a symlink (or resolves outside its run's folder) is refused.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from mlflow.tracking import MlflowClient

from trainables.typed import ConfigError

PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


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


def download(client: MlflowClient, run_id: str, name: str, into: Path) -> Path:
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
