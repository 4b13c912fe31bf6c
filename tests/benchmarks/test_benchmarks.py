"""The benchmark command keeps working: its table and RESULTS.md layout, and the plain-loop trial it compares
the service against (which must survive a diverging trial, as a sweep does). Speeds are the benchmarks'
business (benchmarks/RESULTS.md), not asserted here."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks import run as bench
from benchmarks import semistructured
from benchmarks.common import Row, markdown
from benchmarks.trial import plain_trial
from trainables.io.results import LevelResult


def test_quick_engine_benchmarks_write_a_table_of_ratios(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--quick", "--only", "1,2", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    text = out.read_text()
    assert text.startswith("# Benchmark results") and "--quick --only 1,2" in text
    rows = re.findall(r"^\| (\w+) \| (.+?) \| .+? \| .+? \| ([\d.]+)x \| ([<>]=) [\d.]+x \| (yes|\*\*no\*\*) \|$",
                      text, re.M)
    assert [r[0] for r in rows] == ["1", "1b", "2", "2b"]
    assert all(float(r[2]) > 0 for r in rows)
    missed = [r[0] for r in rows if r[4] != "yes"]
    for number in missed:  # every missed target is explained, by how much and why (not the placeholder)
        line = re.search(rf"^- {number} \([\d.]+x against [<>]= [\d.]+x: \d+% (short|over)\): (.+)$", text, re.M)
        assert line and line.group(2) != NO_REASON, number


NO_REASON = "no explanation recorded"


def test_a_missed_target_is_listed_with_its_shortfall_and_its_reason() -> None:
    """Forced misses (the quick run above may meet every target, which would check nothing)."""
    rows = [Row("1", "fast", "a", "b", 1.0, 1.2, 1.2, "speedup", 1.5, why="the CPU was shared"),
            Row("2", "lean", "a", "b", 1.3, 1.0, 1.3, "overhead", 1.1, why="mask upkeep"),
            Row("3", "met", "a", "b", 1.0, 2.0, 2.0, "speedup", 1.5, why="never shown"),
            Row("4", "silent", "a", "b", 1.0, 1.0, 1.0, "speedup", 2.0)]
    text = markdown(rows, {}, "cmd", quick=True)
    misses = text.split("## Targets missed, by how much and why")[1].strip().splitlines()
    assert misses == ["- 1 (1.20x against >= 1.5x: 20% short): the CPU was shared",
                      "- 2 (1.30x against <= 1.1x: 18% over): mask upkeep",
                      f"- 4 (1.00x against >= 2x: 50% short): {NO_REASON}"]


def test_unknown_benchmark_numbers_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        bench.main(["--only", "10"])
    assert e.value.code == 2 and "unknown benchmark 10; valid: 1, 2, 3, 4, 5, 6, 7, 8, 9" in capsys.readouterr().err


class Calls:
    """A tracking sink that records what the loop told it."""

    seconds = 0.0

    seconds = 0.0  # wall seconds in tracking calls (the Sink protocol)

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def start(self, trial_id: str, flat: dict[str, Any]) -> None:
        self.calls.append(("start", trial_id))

    def catch_up(self, results: Sequence[LevelResult], rewind: dict[str, Any] | None) -> None:
        self.calls.append(("catch_up",))

    def epoch(self, row: dict[str, Any]) -> None:
        self.calls.append(("epoch",))

    def level(self, result: LevelResult, rewind: dict[str, Any] | None) -> None:
        self.calls.append(("level", result.level))

    def finish(self, status: str, reason: str = "", *, wait_s: float | None = None) -> None:
        self.calls.append(("finish", status, reason))


def test_the_plain_loop_trial_ends_a_diverging_trial_as_failed_and_returns() -> None:
    sink = Calls()
    config = {"data.name": "digits", "model.name": "mlp", "model.widths": "16", "train.epochs": 1,
              "train.lr": 100.0, "train.weight_decay": 1.0, "train.device": "cpu", "prune.levels": 1}
    assert math.isnan(plain_trial(config, sink, "t0"))
    assert sink.calls[0] == ("start", "t0")
    status, reason = sink.calls[-1][1:]
    assert status == "FAILED" and reason.startswith("diverged: ")


def test_the_plain_loop_trial_logs_every_level() -> None:
    sink = Calls()
    config = {"data.name": "digits", "model.name": "mlp", "model.widths": "16", "train.epochs": 1,
              "train.device": "cpu", "prune.levels": 2}
    score = plain_trial(config, sink, "t1")
    assert 0 < score <= 1
    assert [c for c in sink.calls if c[0] == "level"] == [("level", 0), ("level", 1), ("level", 2)]
    assert sink.calls[-1] == ("finish", "FINISHED", "")


@pytest.mark.slow  # the export check runs torch.export: about 10 s on a shared core
def test_the_2_4_gpu_benchmark_dry_runs_on_a_cpu(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Without a GPU: the 2:4 network is built and checked, the GPU-only rows are skipped with one line, and
    the export path's check runs with the layers dense."""
    out = tmp_path / "semi.md"
    assert semistructured.main(["--device", "cpu", "--width", "128", "--layers", "2", "--out", str(out)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert printed.startswith("2 layers of 128x128 qualify for 2:4; GPU-only rows skipped: --device cpu: the 2:4 "
                              "kernels run on CUDA only export check passed: layers 0.weight, 2.weight loaded as "
                              "Parameter, 4.weight dense-masked; max |2:4 float16 - float32 masked| = ")
    assert not out.exists()  # no rows, no table
    with pytest.raises(SystemExit):
        semistructured.main(["--device", "cpu", "--width", "100"])
    assert "--width: 100 is not a multiple of 64" in capsys.readouterr().err
