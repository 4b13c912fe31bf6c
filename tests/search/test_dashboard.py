"""`ticket-search dashboard NAME` serves the sweep's own Optuna study (found through the sweep's record) over
HTTP on 127.0.0.1, and refuses a sweep it does not know with one line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from search.cli import main
from search.sweep.file import load_sweep
from search.sweep.record import save_record
from tests.helpers.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def _recorded_sweep(tmp_path: Path, trials: int) -> None:
    sweep = load_sweep(ROOT / "sweeps" / "digits.toml", [f"storage.root={tmp_path / 'runs'}"])
    save_record(sweep)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    Path(sweep.optuna_storage).parent.mkdir(parents=True)
    study = optuna.create_study(study_name=sweep.name, direction="maximize",
                                storage=JournalStorage(JournalFileBackend(sweep.optuna_storage)))
    study.optimize(lambda t: t.suggest_float("prune.rate", 0.2, 0.6), n_trials=trials)


def _get(url: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_dashboard_serves_the_sweeps_study(tmp_path: Path) -> None:
    _recorded_sweep(tmp_path, trials=3)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "search", "dashboard", "digits", "--root", str(tmp_path / "runs"),
                             "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        studies = _get(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
        assert [s["study_name"] for s in studies] == ["digits"]
        study = _get(f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}")
        assert len(study["trials"]) == 3
        assert {p["name"] for t in study["trials"] for p in t["params"]} == {"prune.rate"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_dashboard_of_an_unknown_sweep_is_a_one_line_error(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    _recorded_sweep(tmp_path, trials=1)
    assert main(["dashboard", "nosuch", "--root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: dashboard: no sweep named 'nosuch'") and "known sweeps: digits" in err
    assert "\n" not in err
