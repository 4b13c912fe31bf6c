"""Capacity (b): how many ticket runs per second one `mlflow server` on PostgreSQL takes, written the way our
trials write them: N client processes, each running trials through the project's own sink
(`search.tracking.sink.MlflowSink`: the trial run with its params and dataset, per-evaluation metrics flushed
at each level, the rewind weights once, and per level a ticket run with its params, metrics, tags, mask,
trained-weights, density and picture artifacts and its logged model, plus one run per control).

A trial here is lenet300-sized (266,200 prunable weights: a 33 KB bit-packed mask, a 1 MB rewind file) with
the controls `reinit` and `shuffle`: three runs per level. Clients start together (after their imports) and
the cell's rate is all ticket runs over the wall time until the last client finished. Latency is the wall
seconds a client spent in tracking calls (`MlflowSink.seconds`) per ticket run it wrote. CPU seconds of the
server's process tree and of the PostgreSQL backends serving its database in the cell, per ticket run, give
the ceiling each could reach with cores of its own (here clients, server and database share 2 cores).
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LEVELS = 5  # ticket levels per trial (after the dense level 0)
CONTROLS = ("reinit", "shuffle")
SHAPES = {"fc1.weight": (300, 784), "fc2.weight": (100, 300), "fc3.weight": (10, 100)}  # lenet300


@dataclass(frozen=True)
class ServerCell:
    workers: int  # `mlflow server --workers`
    clients: int  # concurrent client processes
    runs: int  # ticket runs written (ticket and control runs)
    wall_s: float
    client_s: float  # wall seconds clients spent in tracking calls, summed
    server_cpu_s: float  # CPU seconds of the server's processes
    db_cpu_s: float  # CPU seconds of the PostgreSQL backends of the server's database

    @property
    def per_s(self) -> float:
        return self.runs / self.wall_s if self.wall_s else 0.0

    @property
    def latency_s(self) -> float:
        return self.client_s / self.runs if self.runs else float("nan")

    @property
    def server_cpu_ms(self) -> float:
        return 1e3 * self.server_cpu_s / self.runs if self.runs else float("nan")

    @property
    def db_cpu_ms(self) -> float:
        return 1e3 * self.db_cpu_s / self.runs if self.runs else float("nan")


def level_result(level: int, seed: int) -> Any:
    """A lenet300 level with two controls, masks at density 0.8^level (what the sink logs; no training)."""
    import torch

    from trainables.io.results import LevelResult

    g = torch.Generator().manual_seed(seed)
    density = 0.8 ** level
    masks = {k: torch.rand(shape, generator=g) < density for k, shape in SHAPES.items()}
    weights = {k: torch.randn(int(m.sum()), generator=g) for k, m in masks.items()}
    controls = {c: {"val_acc": 0.9, "test_acc": 0.9, "val_score": 0.9, "test_score": 0.9} for c in CONTROLS}
    return LevelResult(level=level, density=density, layer_density=dict.fromkeys(SHAPES, density), val_acc=0.95,
                       test_acc=0.94, val_loss=0.2, test_loss=0.21, val_score=0.95, test_score=0.94,
                       best_val_acc=0.95, val_acc_std=0.0, test_acc_std=0.0, early_stop_iter=100, collapsed=False,
                       collapsed_layers=[], epochs=6.0, iterations=120, wall_s=1.0, controls=controls,
                       advantage=dict.fromkeys(CONTROLS, 0.05), masks=[masks], weights=weights)


def client(tracking: Any, index: int, trials: int, flags: str) -> tuple[int, float, float]:
    """One client process: `trials` trials through MlflowSink, once every client is ready (`ready-<index>`
    files, then the `go` file, in the folder `flags`); returns (ticket runs, seconds in tracking calls, the
    time it finished)."""
    import torch

    from search.tracking.sink import MlflowSink
    from trainables.config import Ticket

    flat = Ticket.from_flat({"prune.controls": ",".join(CONTROLS)}).flat()
    results = [level_result(level, index * 100 + level) for level in range(LEVELS + 1)]
    rewind = {k: torch.randn(shape) for k, shape in SHAPES.items()}
    sink = MlflowSink(tracking)
    sink.client.search_experiments(max_results=1)  # imports and the HTTP session before the clock
    Path(flags, f"ready-{index}").touch()
    while not Path(flags, "go").exists():
        time.sleep(0.01)
    runs, seconds = 0, 0.0
    for t in range(trials):
        sink.start(f"c{index:03d}t{t:03d}", flat)
        for result in results:
            for epoch in range(6):
                step = (result.level * 6 + epoch + 1) * 20
                sink.epoch({"val_acc": 0.9, "val_loss": 0.3, "val_score": 0.9, "density": result.density,
                            "epochs_total": step / 20, "level": result.level, "iterations_total": step})
            sink.level(result, rewind if result.level == 0 else None)
            runs += 1 + len(CONTROLS)
        sink.finish("FINISHED")
        seconds += sink.seconds
    return runs, seconds, time.time()


SYSTEM_METRICS = ("cpu_utilization_percentage", "system_memory_usage_megabytes", "system_memory_usage_percentage",
                  "disk_usage_megabytes", "disk_usage_percentage", "disk_available_megabytes",
                  "network_receive_megabytes", "network_transmit_megabytes", "gpu_0_utilization_percentage",
                  "gpu_0_memory_usage_megabytes")  # one sample of MLflow's system metrics on a GPU node


def sampler(tracking: Any, index: int, samples: int, flags: str) -> tuple[int, float, float]:
    """One client process logging `samples` system-metrics samples (one log_batch each, as MLflow's monitor
    sends them) onto a trial run; returns (samples, seconds in those calls, the time it finished)."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri)
    run = client.create_run(tracking.experiment_id, run_name=f"sampler-{index}").info.run_id
    Path(flags, f"ready-{index}").touch()
    while not Path(flags, "go").exists():
        time.sleep(0.01)
    began = time.perf_counter()
    for step in range(samples):
        now = int(time.time() * 1000)
        client.log_batch(run, metrics=[Metric(f"system/{k}", 1.0, now, step) for k in SYSTEM_METRICS])
    return samples, time.perf_counter() - began, time.time()


def _cpu(procs: list[Any]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except Exception:  # noqa: BLE001 - a process that ended meanwhile
            continue
    return total


def _server_procs(pid: int) -> list[Any]:
    import psutil

    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _db_cpu(url: str) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend serving the database at `url` (the server's pooled connections;
    other databases' work on the same PostgreSQL is not counted)."""
    import psutil
    import psycopg2
    from sqlalchemy.engine import make_url

    u = make_url(url)
    with psycopg2.connect(host=u.host, port=u.port, user=u.username, dbname="postgres") as conn, \
            conn.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (u.database,))
        pids = [row[0] for row in cur.fetchall()]
    conn.close()
    out = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:  # a backend that ended meanwhile
            continue
        out[pid] = t.user + t.system
    return out


def measure(workers: int, clients: int, trials: int, tmp: Path, *, samples: int = 0) -> ServerCell:
    """One cell: a fresh database and server with `workers` workers, `clients` processes writing at once:
    `trials` trials each, or (`samples` > 0) that many system-metrics samples each (`runs` then counts samples)."""
    from search.tracking.store import prepare
    from tests.helpers.servers import MlflowServer, postgres_database

    folder = tmp / f"artifacts-{workers}-{clients}-{time.monotonic_ns()}"
    with postgres_database("ts_bench_capacity") as pg, \
            MlflowServer(pg, folder, extra_args=["--workers", str(workers)]) as server:
        tracking = prepare(server.uri, "capacity", "", {})
        assert server._proc is not None  # noqa: SLF001
        procs = _server_procs(server._proc.pid)  # noqa: SLF001
        flags = tmp / f"flags-{workers}-{clients}-{time.monotonic_ns()}"
        flags.mkdir()
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=clients, mp_context=ctx) as pool:
            job, count = (sampler, samples) if samples else (client, trials)
            futures = [pool.submit(job, tracking, i, count, str(flags)) for i in range(clients)]
            while len(list(flags.glob("ready-*"))) < clients:  # spawned interpreters import torch and MLflow
                if any(f.done() for f in futures):
                    futures[[f.done() for f in futures].index(True)].result()  # a client failed: say why
                time.sleep(0.05)
            server0, db0, start_at = _cpu(procs), _db_cpu(pg), time.time()
            (flags / "go").touch()
            done = [f.result() for f in futures]
            server1, db1 = _cpu(procs), _db_cpu(pg)
        db = sum(cpu - db0.get(pid, 0.0) for pid, cpu in db1.items())  # a backend opened meanwhile: all of it
        return ServerCell(workers, clients, sum(d[0] for d in done), max(d[2] for d in done) - start_at,
                          sum(d[1] for d in done), server1 - server0, db)
