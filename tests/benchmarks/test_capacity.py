"""The capacity benchmark keeps working: its arithmetic (the fitted cost per result, the demand of a sweep set
against the measured costs), its RESULTS.md section, and a dry run of the whole command on tiny sizes (a real
simulated Ray cluster and a real `mlflow server` on PostgreSQL). Speeds are RESULTS.md's business."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import capacity
from benchmarks import run as bench
from benchmarks.capacity_driver import DriverCell
from benchmarks.capacity_server import ServerCell

ROOT = Path(__file__).resolve().parents[2]


def test_the_cost_per_result_is_fitted_as_a_line_and_never_falls_with_more_trials() -> None:
    a, b = capacity.fit_line([(8, 1.0), (32, 1.24), (64, 1.56)])
    assert math.isclose(b, 0.01, rel_tol=1e-9) and math.isclose(a, 0.92, rel_tol=1e-9)
    assert capacity.fit_line([(8, 2.0), (64, 1.0)])[1] == 0.0  # noise that falls: flat, not a negative cost
    assert capacity.fit_line([(8, 2.0), (8, 4.0)]) == (3.0, 0.0)


def test_the_verdict_sets_the_sweeps_demand_against_the_measured_costs() -> None:
    args = capacity.parse(["--target", "4000", "--result-s", "30", "--level-results", "30", "--controls", "2"])
    drivers = [DriverCell("ours, PostgreSQL study", n, 1000, 10.0, cpu) for n, cpu in ((8, 1.0), (64, 1.56))]
    servers = [("ticket runs", ServerCell(4, 16, 100, 10.0, 50.0, 8.0, 1.0)),
               ("system-metrics samples", ServerCell(4, 16, 1000, 10.0, 20.0, 10.0, 2.0))]
    lines = capacity.verdict(drivers, servers, args)
    assert "133 results/s at the driver; 13.3 ticket runs/s and 133 system-metrics samples/s" in lines[0]
    # 1.0 ms at 8 trials, +0.01 ms per trial: 40.92 ms at 4,000 trials, x 133.3 results/s = 5.46 cores
    assert re.search(r"-> 40\.92 ms at 4,000: 5\.46 of one core", lines[1]), lines[1]
    # server: 13.33 runs/s x 80 ms + 133.3 samples/s x 10 ms = 2.40 cores; database 13.33 x 10 + 133.3 x 2 ms
    assert "80 ms of CPU per ticket run" in lines[2] and "-> 2.40 cores of `mlflow server`" in lines[2]
    assert lines[2].endswith("-> 0.40 cores")


def test_the_results_file_keeps_one_capacity_section_and_a_benchmark_rewrite_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\n| a | b |\n")
    capacity.write_section(f"{capacity.START}\nfirst\n{capacity.END}\n", path)
    capacity.write_section(f"{capacity.START}\nsecond\n{capacity.END}\n", path)
    text = path.read_text()
    assert text.count(capacity.START) == 1 and "second" in text and "first" not in text
    assert bench.kept_queries(path).strip() == f"{capacity.START}\nsecond\n{capacity.END}"


@pytest.mark.slow
def test_a_dry_run_measures_both_sides_on_tiny_sizes(tmp_path: Path) -> None:
    """About 90 s on 2 shared cores: a one-node Ray cluster, two 2-trial Tuners, one server, one client."""
    from tests.helpers.servers import postgres_database

    with postgres_database("ts_cap_probe"):  # skips here when PostgreSQL is not there, as the server needs it
        pass
    out = tmp_path / "RESULTS.md"
    done = subprocess.run([sys.executable, "-m", "benchmarks.capacity", "--dry-run", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    rows = re.findall(r"^\| (bare Tune|ours, journal study) \| 2 \| (\d+) \| ([\d.]+) ms \|", text, re.M)
    assert [r[0] for r in rows] == ["bare Tune", "ours, journal study"] and all(float(r[2]) > 0 for r in rows)
    served = re.findall(r"^\| (ticket runs|system-metrics samples) \| 1 \| 1 \| ([\d.]+) \| (\d+) ms \|", text, re.M)
    assert [s[0] for s in served] == ["ticket runs", "system-metrics samples"]
    assert all(float(s[1]) > 0 for s in served)
    assert re.search(r"^\| 3 \| 2 \| \d+ ms \|$", text, re.M)  # the searcher row
    assert "Demand of 4,000 concurrent trials" in text and "cores of `mlflow server` workers" in text
