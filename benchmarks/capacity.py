"""Capacity at cluster scale: what one sweep driver and one `mlflow server` on PostgreSQL can serve, and what
saturates first for a sweep of TARGET concurrent trials (1,000 GPUs, four trials each).

    python -m benchmarks.capacity                 # both measurements (about 15 minutes on 2 shared cores);
                                                  # writes its section of benchmarks/RESULTS.md
    python -m benchmarks.capacity --dry-run       # tiny sizes, prints only: the plumbing (tests run this)

(a) the driver (benchmarks/capacity_driver.py): results per second and driver CPU per result on a simulated
multi-node Ray cluster, bare Tune against our Tuner, before and after the capacity fixes;
(b) the server (benchmarks/capacity_server.py): ticket runs per second, client latency and server/database
CPU per ticket run through our sink, against `--workers`, clients, and before/after.
Then the demand of TARGET trials (one result per `--result-s` seconds each, a level per `--level-results`
results, `1 + --controls` ticket runs per level, a system-metrics sample per trial every 30 s) is set against
the CPU each part needs (docs/CLUSTER.md "Capacity" reads these figures).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from benchmarks import capacity_driver as drv
from benchmarks import capacity_server as srv
from benchmarks import capacity_study as stu
from benchmarks.common import command_line, machine

RESULTS = Path(__file__).with_name("RESULTS.md")
START, END = "<!-- capacity:start -->", "<!-- capacity:end -->"  # the section of RESULTS.md this module owns
TARGET = 4000  # concurrent trials: 1,000 GPUs x 4
SAMPLE_S = 30.0  # search/tracking/native.py SYSTEM_METRICS_INTERVAL_S


@contextlib.contextmanager
def urls_printed() -> Iterator[None]:
    """The sink as it was before the fix: MLflow fetches every run it sets terminated, to print its URL."""
    from search.tracking.store import SUPPRESS_URL_ENV

    saved = os.environ.get(SUPPRESS_URL_ENV)
    os.environ[SUPPRESS_URL_ENV] = "false"  # inherited by the spawned client processes
    try:
        yield
    finally:
        os.environ[SUPPRESS_URL_ENV] = saved if saved is not None else "true"


def driver_cells(args: argparse.Namespace, pg: str, tmp: Path) -> list[drv.DriverCell]:
    cluster = drv.start_cluster(args.nodes, args.cpus)
    cells = []
    try:
        for n in args.trials:
            cells.append(drv.measure("bare", n, tmp, window_s=args.window))
            for storage in ("", pg) if pg else ("",):
                for before in (True, False) if args.before else (False,):
                    cells.append(drv.measure("ours", n, tmp, optuna_storage=storage, window_s=args.window,
                                             before=before))
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()
    return cells


def server_cells(args: argparse.Namespace, tmp: Path) -> list[tuple[str, srv.ServerCell]]:
    cells = []
    if args.before:
        with urls_printed():
            cells.append(("ticket runs, before", srv.measure(max(args.workers), max(args.clients),
                                                             args.client_trials, tmp)))
    for w in args.workers:
        for c in args.clients:
            cells.append(("ticket runs", srv.measure(w, c, args.client_trials, tmp)))
    if args.samples:
        cells.append(("system-metrics samples", srv.measure(max(args.workers), max(args.clients), 0, tmp,
                                                            samples=args.samples)))
    return cells


def study_cells(args: argparse.Namespace, pg: str) -> list[stu.StudyCell]:
    return [stu.measure(pg, trials, values) for trials, values in args.study]


def study_table(cells: list[stu.StudyCell]) -> list[str]:
    lines = ["| finished trials in the study | intermediate values per trial | one ask + suggestions |",
             "|---|---|---|"]
    return lines + [f"| {c.trials:,} | {c.values} | {c.ask_s * 1e3:.0f} ms |" for c in cells]


def driver_table(cells: list[drv.DriverCell]) -> list[str]:
    lines = ["| path | concurrent trials | results/s (wall) | driver CPU per result | one driver core's ceiling |",
             "|---|---|---|---|---|"]
    lines += [f"| {c.path} | {c.trials} | {c.per_s:.0f} | {c.cpu_ms:.2f} ms | {c.ceiling:.0f} results/s |"
              for c in cells]
    return lines


def server_table(cells: list[tuple[str, srv.ServerCell]]) -> list[str]:
    lines = ["| what | `--workers` | clients | per s (wall) | client latency | server CPU | PostgreSQL CPU |",
             "|---|---|---|---|---|---|---|"]
    for what, c in cells:
        lines.append(f"| {what} | {c.workers} | {c.clients} | {c.per_s:.1f} | {1e3 * c.latency_s:.0f} ms | "
                     f"{c.server_cpu_ms:.1f} ms | {c.db_cpu_ms:.1f} ms |")
    return lines


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (a, b) of y = a + b x; a flat line through the mean with fewer than two distinct x."""
    xs = [x for x, _ in points]
    if len(set(xs)) < 2:
        return (sum(y for _, y in points) / len(points), 0.0) if points else (float("nan"), 0.0)
    mx, my = sum(xs) / len(xs), sum(y for _, y in points) / len(points)
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, max(b, 0.0)  # a cost per result never falls with more trials: no negative slope


def verdict(drivers: list[drv.DriverCell], servers: list[tuple[str, srv.ServerCell]],
            args: argparse.Namespace) -> list[str]:
    """What TARGET trials ask of each part, in cores, from the measured CPU costs."""
    lines, rate = [], args.target / args.result_s
    runs = args.target * (1 + args.controls) / (args.result_s * args.level_results)
    samples = args.target / SAMPLE_S
    lines.append(f"Demand of {args.target:,} concurrent trials, one result every {args.result_s:g} s each, a level "
                 f"every {args.level_results} results with {1 + args.controls} ticket run(s): {rate:.0f} results/s "
                 f"at the driver; {runs:.1f} ticket runs/s and {samples:.0f} system-metrics samples/s at the server.")
    for label in sorted({c.path for c in drivers if c.path.startswith("ours")}):
        a, b = fit_line([(c.trials, c.cpu_ms) for c in drivers if c.path == label])
        at = a + b * args.target
        lines.append(f"- driver, {label}: {a:.2f} + {b * 1e3:.2f} us x trials ms of CPU per result (fit over "
                     f"{', '.join(str(c.trials) for c in drivers if c.path == label)} trials) -> {at:.2f} ms at "
                     f"{args.target:,}: {rate * at / 1e3:.2f} of one core ({rate * at / 10:.0f}% busy)")
    after = [c for what, c in servers if what == "ticket runs"]
    sampled = [c for what, c in servers if what.startswith("system")]
    if after:
        ms = sorted(c.server_cpu_ms for c in after)[len(after) // 2]
        db = sorted(c.db_cpu_ms for c in after)[len(after) // 2]
        sample_ms = sampled[0].server_cpu_ms if sampled else 0.0
        sample_db = sampled[0].db_cpu_ms if sampled else 0.0
        cores = (runs * ms + samples * sample_ms) / 1e3
        db_cores = (runs * db + samples * sample_db) / 1e3
        lines.append(f"- server: {ms:.0f} ms of CPU per ticket run (median of {len(after)} cells) and "
                     f"{sample_ms:.1f} ms per sample -> {cores:.2f} cores of `mlflow server` workers; PostgreSQL "
                     f"{db:.1f} ms per ticket run and {sample_db:.1f} ms per sample -> {db_cores:.2f} cores")
    return lines


def section(drivers: list[drv.DriverCell], servers: list[tuple[str, srv.ServerCell]], args: argparse.Namespace,
            info: dict[str, str], command: str, studies: list[stu.StudyCell] | None = None) -> str:
    lines = [START, "## Capacity at cluster scale (`python -m benchmarks.capacity`)", "",
             f"Command: `{command}`; {info['date']}; load average (1 min) at start {info['load']}, at end "
             f"{info['load_end']} on {info['cpus']} shared vCPUs (other work ran beside it). Method: "
             "benchmarks/capacity.py and docs/CLUSTER.md \"Capacity\".", ""]
    if drivers:
        lines += [f"Driver: {args.nodes} worker nodes x {args.cpus} logical CPUs (`ray.cluster_utils.Cluster`), "
                  f"light trials reporting as fast as the driver takes results, a checkpoint every "
                  f"{drv.LEVEL_EVERY}; {args.window:g} s of steady state per row.", "", *driver_table(drivers), ""]
    if servers:
        lines += [f"Server: `mlflow server` on PostgreSQL, artifacts proxied; each client runs {args.client_trials} "
                  f"trial(s) of {srv.LEVELS + 1} levels x {1 + len(srv.CONTROLS)} runs through MlflowSink "
                  "(latency: client seconds in tracking calls per ticket run).", "", *server_table(servers), ""]
    if studies:
        lines += ["Searcher: one Optuna suggestion on the driver (the sweep's TPE sampler and space), the study in "
                  "PostgreSQL.", "", *study_table(studies), ""]
    lines += verdict(drivers, servers, args) + [END]
    return "\n".join(lines) + "\n"


def write_section(text: str, path: Path = RESULTS) -> None:
    """Replace this module's section of `path` (or append it)."""
    old = path.read_text() if path.is_file() else "# Benchmark results\n"
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END) + r"\n?", re.S)
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    path.write_text(new)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _cells(text: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in (x.split("x") for x in text.split(",") if x.strip())]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.capacity", description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="tiny sizes, no before/after, prints only")
    p.add_argument("--parts", default="driver,server,study", help="driver, server, study: any of them (default all)")
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--cpus", type=int, default=16, help="logical CPUs per simulated node")
    p.add_argument("--trials", type=_ints, default=[8, 32, 64], help="concurrent trials, comma list")
    p.add_argument("--window", type=float, default=drv.WINDOW_S, help="seconds of steady state per driver row")
    p.add_argument("--workers", type=_ints, default=[1, 2, 4], help="mlflow server --workers, comma list")
    p.add_argument("--clients", type=_ints, default=[1, 4, 16], help="client processes, comma list")
    p.add_argument("--client-trials", type=int, default=1)
    p.add_argument("--samples", type=int, default=50, help="system-metrics samples per client (0: none)")
    p.add_argument("--study", type=_cells, default=_cells("100x1,100x30,1000x1,1000x30"),
                   help="searcher rows, TRIALSxVALUES comma list (finished trials x intermediate values each)")
    p.add_argument("--target", type=int, default=TARGET, help="concurrent trials of the sweep to size for")
    p.add_argument("--result-s", type=float, default=30.0, help="seconds between a trial's results (an epoch)")
    p.add_argument("--level-results", type=int, default=30, help="results per level (epochs per level)")
    p.add_argument("--controls", type=int, default=0, help="controls per level (ticket runs = 1 + controls)")
    p.add_argument("--out", default=None, help=f"markdown file for the section (default {RESULTS.name}; '' = none)")
    args = p.parse_args(argv)
    args.before = not args.dry_run
    if args.dry_run:
        args.nodes, args.cpus, args.trials, args.window = 1, 2, [2], 1.0
        args.workers, args.clients, args.client_trials, args.samples = [1], [1], 1, 5
        args.study = [(3, 2)]
        args.out = "" if args.out is None else args.out
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    parts = {x.strip() for x in args.parts.split(",")}
    info = {**machine(), "load": f"{os.getloadavg()[0]:.1f}"}
    drivers: list[drv.DriverCell] = []
    servers: list[tuple[str, srv.ServerCell]] = []
    studies: list[stu.StudyCell] = []
    with tempfile.TemporaryDirectory(prefix="bench-capacity-") as folder:
        tmp = Path(folder)
        if "driver" in parts:
            from tests.helpers.servers import postgres_database

            with postgres_database("ts_bench_capacity") if not args.dry_run else contextlib.nullcontext("") as pg:
                drivers = driver_cells(args, pg, tmp)
        if "server" in parts:
            servers = server_cells(args, tmp)
        if "study" in parts:
            from tests.helpers.servers import postgres_database

            with postgres_database("ts_bench_capacity") as pg:
                studies = study_cells(args, pg)
    info["load_end"] = f"{os.getloadavg()[0]:.1f}"
    command = command_line("benchmarks.capacity", argv)
    text = section(drivers, servers, args, info, command, studies)
    print(text)
    out = RESULTS if args.out is None else (Path(args.out) if args.out else None)
    if out is not None:
        write_section(text, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
