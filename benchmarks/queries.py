"""Queries at scale: whole-command wall time of `ticket-search` on a store holding N ticket runs and their
controls, on the local sqlite store and against `mlflow server` on PostgreSQL.

    python -m benchmarks.queries                                  # 10,000 ticket runs: both stores; writes
                                                                  # its section of benchmarks/RESULTS.md
    python -m benchmarks.queries --tickets 100000 --stores sqlite --out ''   # print only
    python -m benchmarks.queries --before /tmp/old                 # also time an older source tree (checked out
                                                                  # there, e.g. `git archive REV | tar -x -C DIR`)

Two sweeps of N/2 ticket runs each (5 levels per trial, 2 controls beside every ticket: 3N runs plus N/5
trial runs): `acc` (accuracy_at_density, target 0.2) and `front` (pareto). The stores are filled by direct
SQL inserts through MLflow's own store (benchmarks/fill.py: the client would take about 25 ms a run). Each
command runs as a user runs it, a new `python -m search` process (start-up and imports included), REPS
times; the table gives the median wall time and the median CPU seconds of that process (user + system),
which a loaded shared machine inflates less than wall time. With `--before DIR` each command also runs from
the source tree DIR, alternately with ours on the same store, so the two columns share one machine load.
PostgreSQL is the service on 127.0.0.1:5432
(trust auth, user postgres); a scratch database is created and dropped.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import command_line
from benchmarks.fill import fill

RESULTS = Path(__file__).with_name("RESULTS.md")
START, END = "<!-- queries:start -->", "<!-- queries:end -->"  # the section of RESULTS.md this module owns
REPS = 3
TARGETS = {"sqlite": 1.5, "server": 2.5}  # seconds, whole command, for the queries (help: 0.5 s)
HELP_TARGET = 0.5
SERVER_START_S = 600  # a server on a machine shared by busy neighbours can take minutes to answer /health
FLOOR = ["-c", "import os; from mlflow.tracking import MlflowClient; "
                "MlflowClient(os.environ['MLFLOW_TRACKING_URI']).search_experiments(max_results=1)"]
COMMANDS = [  # (label, argv after `python -m search`, or a FLOOR script; target kind)
    ("floor: python imports MLflow, opens the store, one call", FLOOR, "floor"),
    ("--help", ["--help"], "help"),
    ("best --help", ["best", "--help"], "help"),
    ("best --sweep acc (top 10 + control margins)", ["best", "--sweep", "acc"], "query"),
    ("best, all sweeps (top 10 + control margins)", ["best"], "query"),
    ("best --sweep front (Pareto front + control margins)", ["best", "--sweep", "front"], "query"),
]


@dataclass(frozen=True)
class Timing:
    store: str
    tickets: int
    command: str
    wall: float  # seconds, median
    cpu: float  # seconds, median
    target: float  # seconds of wall time
    before: tuple[float, float] | None = None  # (wall, CPU) of the --before source tree, medians

    def row(self) -> str:
        met = "yes" if self.wall <= self.target else "**no**"
        old = "-" if self.before is None else f"{self.before[0]:.2f} s ({self.before[1]:.2f} s)"
        return (f"| {self.store} | {self.tickets:,} | `{self.command}` | {old} | {self.wall:.2f} s | "
                f"{self.cpu:.2f} s | < {self.target} s | {met} |")


def timed(argv: list[str], env: dict[str, str], cwd: str | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one `python -m search ARGV` process (the package found in `cwd`)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    command = [sys.executable, *argv] if argv[0] == "-c" else [sys.executable, "-m", "search", *argv]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, cwd=cwd)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _medians(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def measure(store: str, uri: str, tickets: int, reps: int, before: str | None = None) -> list[Timing]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    env.pop("PYTHONPATH", None)  # the package comes from the working folder: ours, or the --before tree
    rows = []
    for label, argv, kind in COMMANDS:
        ours, theirs = [], []
        for _ in range(reps):  # alternately, so both see the same load
            ours.append(timed(argv, env))
            if before is not None and kind != "floor":
                theirs.append(timed(argv, env, cwd=before))
        wall, cpu = _medians(ours)
        target = HELP_TARGET if kind == "help" else TARGETS[store]  # the floor: what any MLflow query pays
        rows.append(Timing(store, tickets, label, wall, cpu, target, _medians(theirs) if theirs else None))
    return rows


def fill_both(uri: str, artifacts: str, tickets: int) -> float:
    """Both sweeps into the store at `uri`; returns the seconds it took."""
    began = time.perf_counter()
    fill(uri, artifacts, sweep="acc", objective="accuracy_at_density", tickets=tickets // 2, seed=0)
    fill(uri, artifacts, sweep="front", objective="pareto", tickets=tickets - tickets // 2, seed=1)
    return time.perf_counter() - began


def sqlite_rows(tickets: int, reps: int, tmp: Path, before: str | None) -> tuple[list[Timing], float]:
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    seconds = fill_both(uri, str(tmp / "artifacts"), tickets)
    return measure("sqlite", uri, tickets, reps, before), seconds


def server_rows(tickets: int, reps: int, tmp: Path, before: str | None) -> tuple[list[Timing], float]:
    from tests.helpers.servers import MlflowServer, postgres_database

    with postgres_database("ts_bench_queries") as pg:
        seconds = fill_both(pg, str(tmp / "server-artifacts"), tickets)
        server = MlflowServer(pg, tmp / "server-artifacts", extra_args=["--workers", "2"])
        server.start(timeout=SERVER_START_S)
        try:
            return measure("server", server.uri, tickets, reps, before), seconds
        finally:
            server.stop()


def section(rows: list[Timing], fills: dict[str, float], load: str, command: str, reps: int) -> str:
    lines = [START, "## Queries at scale (`python -m benchmarks.queries`)", "",
             f"Command: `{command}`; load average (1 min) at start and end: {load}. Whole-command times: a new "
             "`python -m search` process per run (start-up, imports and queries), median of "
             f"{reps} runs; CPU = user + system seconds of that process (what a loaded, shared machine inflates "
             "least). Each store holds the ticket runs, 2 controls per ticket and a trial run per 5 tickets. "
             "Before: the same command from the source tree given as `--before`, run alternately with ours "
             "(wall, CPU in brackets); the floor is timed once.", "",
             "| store | ticket runs | command | before: wall (CPU) | wall | CPU | target (wall) | met? |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [r.row() for r in rows]
    lines += ["", "Filling (direct SQL inserts through MLflow's SqlAlchemyStore, benchmarks/fill.py): " +
              "; ".join(f"{k}: {v:.0f} s" for k, v in fills.items()) + ". Extrapolated, not measured: at these "
              "rates 100,000 ticket runs take " + "; ".join(
                  f"{k.split()[0]} about {v * 100_000 / int(k.split()[1].replace(',', '')) / 60:.0f} min"
                  for k, v in fills.items()) + " to fill.", END]
    return "\n".join(lines) + "\n"


def write_section(text: str, path: Path = RESULTS) -> None:
    """Put `text` in place of this module's section of `path` (appended when there is none)."""
    old = path.read_text() if path.is_file() else ""
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END) + "\n?", re.S)
    path.write_text(pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.queries", description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, nargs="+", default=[10_000], help="ticket runs per store")
    parser.add_argument("--stores", default="sqlite,server", help="comma list of sqlite, server")
    parser.add_argument("--reps", type=int, default=REPS)
    parser.add_argument("--before", help="a source tree of another version: its commands are timed alongside")
    parser.add_argument("--out", default=str(RESULTS), help="markdown file whose queries section is replaced "
                                                             "('' = print only)")
    args = parser.parse_args(argv)
    makers = {"sqlite": sqlite_rows, "server": server_rows}
    stores = [s for s in args.stores.split(",") if s]
    if unknown := [s for s in stores if s not in makers]:
        parser.error(f"--stores: unknown {', '.join(unknown)}; valid: sqlite, server")
    load0 = os.getloadavg()[0]
    rows: list[Timing] = []
    fills: dict[str, float] = {}
    for n in args.tickets:
        for store in stores:
            with tempfile.TemporaryDirectory(prefix="ts-bench-queries-") as tmp:
                new, fills[f"{store} {n:,}"] = makers[store](n, args.reps, Path(tmp), args.before)
            rows += new
            for r in new:
                print(f"{r.store} {n}: {r.command}: {r.wall:.2f} s wall, {r.cpu:.2f} s CPU", flush=True)
    command = command_line("benchmarks.queries", argv)
    text = section(rows, fills, f"{load0:.1f} / {os.getloadavg()[0]:.1f}", command, args.reps)
    print(text)
    if args.out:
        write_section(text, Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
