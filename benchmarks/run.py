"""Run the side-by-side benchmarks, print a table of ratios and write benchmarks/RESULTS.md.

    python -m benchmarks.run                 # every benchmark, full sizes (about 12 minutes on 2 idle cores);
                                             # writes benchmarks/RESULTS.md
    python -m benchmarks.run --quick         # smaller sizes, fewer repetitions: a few minutes (`make bench`);
                                             # prints the table only, unless --out names a file
    python -m benchmarks.run --only 1,3      # some of them (numbers as in the issue: 1-7; 8 = inference latency;
                                             # 9 = stage reuse with benchmark 7 rerun as 7r, benchmarks/reuse.py)

Each benchmark times "ours" and "theirs" alternately in this one process and reports the median of the
per-repetition ratios (benchmarks/common.py). Benchmarks 5-7 start a local Ray, an MLflow sqlite store and
an Optuna journal under a temporary folder, deleted afterwards. The GPU script is benchmarks/gpu.py; the query
latency table (`python -m benchmarks.queries`) and the capacity figures (`python -m benchmarks.capacity`) are
sections of RESULTS.md of their own, kept by a rewrite here.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console

from benchmarks import engine, latency
from benchmarks.common import FULL, QUICK, Row, Sizes, command_line, machine, markdown, table

RESULTS = Path(__file__).with_name("RESULTS.md")
# The sections other commands own: benchmarks/queries.py's and benchmarks/capacity.py's
SECTIONS = re.compile(r"\n*<!-- (queries|capacity):start -->.*?<!-- \1:end -->\n?", re.S)


def kept_queries(path: Path) -> str:
    """The sections of `path` written by `python -m benchmarks.queries` and `python -m benchmarks.capacity`,
    kept on a rewrite."""
    found = list(SECTIONS.finditer(path.read_text())) if path.is_file() else []
    return "".join("\n" + m.group(0).lstrip("\n") for m in found)


def benchmarks(s: Sizes) -> dict[str, Callable[[], list[Row]]]:
    counts = tuple(sorted({1, min(2, os.cpu_count() or 1)}))  # 3 on one core, and on two
    def service(name: str) -> Callable[[], list[Row]]:
        def run() -> list[Row]:
            from benchmarks import service as svc  # imported late: Ray, MLflow and Optuna are slow to import

            return getattr(svc, name)(s)
        return run

    def reuse() -> list[Row]:
        from benchmarks import reuse as rs  # Ray, MLflow and Optuna, like the service benchmarks

        return rs.reuse_rows(s, quick=s == QUICK)

    return {
        "1": lambda: engine.data_path(s.reps),
        "2": lambda: engine.mask_cost(s.reps),
        "3": lambda: engine.population_speed(s.reps, epochs=s.population_epochs, thread_counts=counts),
        "4": lambda: engine.imp_run(s.long_reps, epochs=s.imp_epochs),
        "5": service("orchestration"),
        "6": service("tracking"),
        "7": service("search_efficiency"),
        "8": lambda: latency.latency(s.latency_reps),
        "9": reuse,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions (a few minutes)")
    parser.add_argument("--only", default="", help="comma list of benchmark numbers, e.g. 1,3 (default: all)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: a sweep gives each 1-CPU trial one thread; 0 = torch's "
                             "choice); benchmark 3 also runs on 2 threads")
    parser.add_argument("--out", default=None,
                        help=f"markdown file to write ('' = none; default {RESULTS.name} for a full run of all "
                             "benchmarks, none otherwise, so a quick run never replaces the full table)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    chosen = benchmarks(sizes)
    wanted = [n.strip() for n in args.only.split(",") if n.strip()] or list(chosen)
    unknown = [n for n in wanted if n not in chosen]
    if unknown:
        parser.error(f"--only: unknown benchmark {', '.join(unknown)}; valid: {', '.join(chosen)}")
    console = Console() if sys.stdout.isatty() else Console(width=150)  # a log file gets whole rows
    info = machine()
    rows: list[Row] = []
    for n in wanted:
        with console.status(f"benchmark {n} ..."):
            new = chosen[n]()
        rows += new
        for r in new:
            console.print(f"[dim]{r.number}: {r.name}: {r.ratio:.2f}x (target {r.target_text})[/]")
    console.print(table(rows))
    out = args.out if args.out is not None else ("" if args.quick or args.only else str(RESULTS))
    if out:
        command = command_line("benchmarks.run", argv)
        Path(out).write_text(markdown(rows, info, command, args.quick) + kept_queries(Path(out)))
        console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
