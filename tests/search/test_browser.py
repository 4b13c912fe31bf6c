"""The MLflow UI, opened in headless Chromium on a store the sweep's writers filled (the `written` fixture,
tests/search/conftest.py: the driver's reconciliation writes exactly what a finished sweep's workers write),
shows a ticket run by its scannable name with its metrics, its mask artifact and its layer-density picture.

Chromium renders each page with `--dump-dom` after a virtual-time budget (the UI is a React app; no driver
needed). Skips with the reason only where no Chromium is installed (.ci/run installs Debian's package).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from search.tracking import schema as S
from tests.helpers.servers import MlflowServer
from tests.helpers.sweepcheck import runs_of

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=15000"]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install -y chromium)")]


def dom(url: str, profile: Path) -> str:
    """The page's DOM once the UI has rendered it."""
    out = subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=90)
    return out.stdout


def test_the_mlflow_ui_shows_a_ticket_run_its_metrics_mask_and_picture(written: dict[str, Any],
                                                                     tmp_path: Path) -> None:
    uri, exp = written["uri"], written["tracking"].experiment_id
    run = next(r for r in runs_of(uri, "sw", S.TICKET)
               if r.data.tags[S.TAG_MEMBER] == S.MEMBER_TICKET and r.data.tags[S.TAG_LEVEL] == "1")
    with MlflowServer(uri, tmp_path / "served") as server:
        page = f"{server.uri}/#/experiments/{exp}/runs/{run.info.run_id}"
        overview = dom(page, tmp_path / "profile")
        assert run.info.run_name in overview  # e.g. "magnitude r0.20 k0 L1 80.0%"
        for metric in ("val_score", "density", "test_acc"):
            assert metric in overview, metric
        artifacts = dom(f"{page}/artifacts/{S.PICTURE_ARTIFACT}", tmp_path / "profile")
        assert S.MASK_ARTIFACT in artifacts and S.PICTURE_ARTIFACT in artifacts
        assert f'<img alt="{S.PICTURE_ARTIFACT}" src="blob:' in artifacts  # the picture itself, rendered
