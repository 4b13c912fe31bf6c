"""What every benchmark shares: paired timing, the result row, sizes, the tables, and the machine description.

Each benchmark runs "ours" and "theirs" alternately in the same process, several repetitions, and
reports the median of the per-repetition ratios: a neighbour's load on a shared machine slows both
sides of a pair alike, so the ratio is steadier than either time.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from rich.table import Table


@dataclass
class Row:
    """One benchmark's outcome. `kind` "speedup": ratio = theirs / ours, met when >= target;
    "overhead": ratio = ours / theirs, met when <= target; "report": a measured fraction, no target; "ratio": a
    speed-up theirs / ours reported without a target."""

    number: str  # "1", "2b", ...
    name: str
    ours: str  # what "ours" is, e.g. "device batches"
    theirs: str
    ours_value: float  # seconds unless `unit` says otherwise (medians)
    theirs_value: float
    ratio: float
    kind: str
    target: float
    unit: str = "s"
    note: str = ""
    why: str = ""  # the reason, should the target be missed (written into RESULTS.md only then)

    @property
    def met(self) -> bool:
        if self.kind in ("report", "ratio"):
            return True
        return self.ratio >= self.target if self.kind == "speedup" else self.ratio <= self.target

    @property
    def shortfall(self) -> str:
        """How far a missed target is, e.g. "1.31x against >= 1.5x: 13% short"."""
        off = 1 - self.ratio / self.target if self.kind == "speedup" else self.ratio / self.target - 1
        return f"{_x(self.ratio)} against {self.target_text}: {off:.0%} {'short' if self.kind == 'speedup' else 'over'}"

    @property
    def target_text(self) -> str:
        if self.kind in ("report", "ratio"):
            return "(report)"
        return f">= {self.target:g}x" if self.kind == "speedup" else f"<= {self.target:g}x"


def _x(ratio: float) -> str:
    return f"{ratio:.2f}x"


def paired(ours: Callable[[], object], theirs: Callable[[], object], reps: int, *, inner: int = 1,
           warmup: bool = True, clock: Callable[[], float] = time.perf_counter) -> tuple[float, float, float]:
    """Time both sides in `reps` blocks of `inner` alternating calls each (which side goes first alternates
    too); returns (median seconds per call of ours, of theirs, median over blocks of theirs/ours).

    Alternating small units of work (a training step, an epoch) spreads a neighbour's burst of load over
    both sides; the per-block ratio then cancels it. A first untimed call of each warms caches and kernels.
    """
    if warmup:
        ours()
        theirs()
    per_ours, per_theirs, ratios = [], [], []
    for r in range(reps):
        a = b = 0.0
        for i in range(inner):
            first_ours = (r + i) % 2 == 0
            for fn in (ours, theirs) if first_ours else (theirs, ours):
                start = clock()
                fn()
                took = clock() - start
                if fn is ours:
                    a += took
                else:
                    b += took
        per_ours.append(a / inner)
        per_theirs.append(b / inner)
        ratios.append(b / a)
    return statistics.median(per_ours), statistics.median(per_theirs), statistics.median(ratios)


def speedup(number: str, name: str, ours: tuple[str, Callable[[], object]], theirs: tuple[str, Callable[[], object]],
            target: float, reps: int, *, scale: float = 1.0, note: str = "", why: str = "",
            **timing: Any) -> Row:
    """Row from `paired(..., **timing)`; reported times are per call times `scale` (e.g. iterations per epoch)."""
    a, b, ratio = paired(ours[1], theirs[1], reps, **timing)
    return Row(number, name, ours[0], theirs[0], a * scale, b * scale, ratio, "speedup", target, note=note, why=why)


def overhead(number: str, name: str, ours: tuple[str, Callable[[], object]], theirs: tuple[str, Callable[[], object]],
             target: float, reps: int, *, scale: float = 1.0, note: str = "", why: str = "",
            **timing: Any) -> Row:
    """Row from `paired(..., **timing)`; reported times are per call times `scale` (e.g. iterations per epoch)."""
    a, b, ratio = paired(ours[1], theirs[1], reps, **timing)
    return Row(number, name, ours[0], theirs[0], a * scale, b * scale, 1 / ratio, "overhead", target, note=note,
               why=why)


def cpu_clock() -> float:
    """CPU seconds of this process: for single-threaded work it is the wall time on an idle machine, and a
    neighbour's load on a shared one does not inflate it (other tenants' time slices are not counted)."""
    return time.process_time()


def machine() -> dict[str, str]:
    """Where and when the numbers were taken."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": str(os.cpu_count()), "torch threads": str(torch.get_num_threads()),
            "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
            "load average (1 min, at start)": f"{load:.2f}",
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")}


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run with `n` torch threads (0: leave as is), then restore the previous count."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass(frozen=True)
class Sizes:
    reps: int  # repetitions of the quick engine benchmarks (1-3)
    long_reps: int  # repetitions of the long ones (4-6)
    imp_epochs: int  # epochs per IMP level in 4
    population_epochs: int
    sweep_trials: int  # trials per sweep in 5
    trial_epochs: int  # epochs per level of a sweep's trial
    search_seeds: int  # repetitions of 7 (each is two whole sweeps)
    search_trials: int = 8  # trials per sweep in 7: TPE samples its first 10 at random, so it needs more
    latency_reps: int = 5  # repetitions of each latency row in 8


QUICK = Sizes(reps=5, long_reps=1, imp_epochs=2, population_epochs=1, sweep_trials=8, trial_epochs=2,
              search_seeds=1, search_trials=8, latency_reps=3)
FULL = Sizes(reps=9, long_reps=3, imp_epochs=5, population_epochs=2, sweep_trials=16, trial_epochs=6,
             search_seeds=5, search_trials=32, latency_reps=9)


def table(rows: list[Row]) -> Table:
    t = Table(title="ticket-search benchmarks (ratios measured side by side)")
    for col in ("#", "benchmark", "ours", "theirs", "ratio", "target", "met?"):
        t.add_column(col, justify="right" if col in ("ratio", "target") else "left")
    for r in rows:
        t.add_row(r.number, r.name, f"{r.ours}: {_fmt(r.ours_value, r.unit)}",
                  f"{r.theirs}: {_fmt(r.theirs_value, r.unit)}", _ratio(r), r.target_text,
                  "[green]yes[/]" if r.met else "[red]no[/]")
    return t


def _ratio(r: Row) -> str:
    return f"{r.ratio:.2%}" if r.kind == "report" else f"{r.ratio:.2f}x"


def _fmt(value: float, unit: str) -> str:
    if unit != "s":
        return f"{value:.3g} {unit}"
    return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"


def command_line(module: str, argv: list[str] | None) -> str:
    """How a benchmark was run, for its results file: `python -m <module>` and its arguments."""
    return " ".join(["python -m", module, *(sys.argv[1:] if argv is None else argv)]).strip()


def markdown(rows: list[Row], info: dict[str, str], command: str, quick: bool) -> str:
    lines = ["# Benchmark results", "", f"Command: `{command}`" + (" (quick sizes)" if quick else ""), ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += ["", "Each row times ours and theirs alternately in one process and reports the median of per-repetition "
              "ratios. Rows 1-4 run on one torch thread and are timed in CPU seconds of the process (immune to other "
              "tenants' load on a shared machine); 3a and rows 5-7 are wall time. Per-row notes and the reasons "
              "for missed targets follow the table.", ""]
    lines += ["| # | benchmark | ours | theirs | ratio | target | met? |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.number} | {r.name} | {r.ours}: {_fmt(r.ours_value, r.unit)} | "
                     f"{r.theirs}: {_fmt(r.theirs_value, r.unit)} | {_ratio(r)} | {r.target_text} | "
                     f"{'yes' if r.met else '**no**'} |")
    notes = [f"- {r.number}: {r.note}" for r in rows if r.note]
    if notes:
        lines += ["", "## Notes", "", *notes]
    misses = [f"- {r.number} ({r.shortfall}): {r.why or 'no explanation recorded'}" for r in rows if not r.met]
    if misses:
        lines += ["", "## Targets missed, by how much and why", "", *misses]
    return "\n".join(lines) + "\n"
