"""The GPU benchmarks as one prepared script: population training, bf16, matrix throughput, fractional packing.

    python -m benchmarks.gpu                                   # all of it on cuda:0 (about 5 minutes on an H200)
    python -m benchmarks.gpu --only population --members 64,256 --bf16
    python -m benchmarks.gpu --device cpu --members 4 --only population --epochs 1   # dry run of the code path

- population: M lenet300 members on digits trained together (`train_members`, batched) vs one after another
  (target at 64 members: 20x), for each M in --members; with --bf16 also together under bf16 autocast;
- throughput: the batched training step alone on MNIST-shaped data (synthetic 1x28x28, batch 512), FLOPs per
  member-step counted by `torch.utils.flop_counter`, reported as a fraction of --peak-tflops (790: an H200's
  dense bf16 matrix throughput; its tf32 figure is half that);
- packing: the same sweep with `resources.gpu` 1 (one trial at a time) vs 0.25 (four trials share the
  device), each trial itself training 8 members batched: both levers at once.
Writes the table to --out (default benchmarks/RESULTS_GPU.md) with the machine, date and command.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import Row, Sizes, command_line, machine, markdown, table
from benchmarks.engine import path
from trainables.config import Ticket
from trainables.lottery import Lottery
from trainables.training.loop import train_members, train_population
from trainables.training.members import Member
from trainables.training.population import Population

PEAK_TFLOPS = 790.0  # dense bf16 matrix throughput of an H200, TFLOP/s (the brief's figure)
OUT = Path(__file__).with_name("RESULTS_GPU.md")
WHY_FEW = ("lenet300 on digits is a tiny step: 64 members batched reach 1.6% of the device's peak (T64), so the "
           "batched step is still bound by kernel launches and Python; the ratio grows with members (G256)")
WHY_BF16 = ("autocast casts every member's weights and activations each step; at lenet300's sizes (300x64, 100x300 and "
            "10x100 per member on digits) the casts cost more than bf16's matrix speed saves (the step alone at batch "
            "512: T64b below T64, T256b 1.6x T256): bf16 pays for wider members and larger batches")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def population(device: torch.device, counts: list[int], epochs: int, bf16: bool) -> list[Row]:
    """Together vs one by one (and together in bf16) for each member count; one warm-up run first."""
    lot = Lottery(Ticket.from_flat({"data.name": "digits", "model.name": "lenet300", "train.epochs": epochs}),
                  device=device)
    rows = []
    for m in counts:
        runs = _population_runs(lot, [lot.new_model(i) for i in range(m)])
        runs["together"]()  # warm-up: kernels, allocator, cuBLAS handles
        t_pop, t_solo = _timed(runs["together"], device), _timed(runs["one by one"], device)
        rows.append(Row(f"G{m}", f"population: {m} members, lenet300 digits, {epochs} epoch(s)", "together",
                        "one by one", t_pop, t_solo, t_solo / t_pop, "speedup", 20.0 if m >= 64 else 1.0, why=WHY_FEW))
        if bf16:
            t_bf16 = _timed(runs["bf16"], device)
            rows.append(Row(f"G{m}b", f"population: {m} members, bf16 autocast vs float32", "bf16", "float32",
                            t_bf16, t_pop, t_pop / t_bf16, "speedup", 1.0, why=WHY_BF16))
    return rows


def _population_runs(lot: Lottery, templates: list[torch.nn.Module]) -> dict[str, Callable[[], object]]:
    """Each way of training fresh copies of `templates` for the whole of `lot`'s training."""
    task, cfg = lot.task, lot.ticket.train

    def fresh() -> list[Member]:
        return [Member("m", i, copy.deepcopy(t)) for i, t in enumerate(templates)]

    def one_by_one() -> None:
        with path("0"):
            train_members(fresh(), task, cfg, start=0, stop=lot.total)

    return {"together": lambda: train_population(fresh(), task, cfg, start=0, stop=lot.total),
            "bf16": lambda: train_population(fresh(), task, cfg, start=0, stop=lot.total, autocast=torch.bfloat16),
            "one by one": one_by_one}


def throughput(device: torch.device, counts: list[int], bf16: bool, peak_tflops: float, steps: int) -> list[Row]:
    """TFLOP/s of the batched training step alone (FLOPs counted on one member's forward and backward)."""
    flat = {"data.name": "synthetic", "data.input_shape": "1x28x28", "data.size": 20_000, "model.name": "lenet300",
            "train.batch_size": 512}
    lot = Lottery(Ticket.from_flat(flat), device=device)
    task, cfg = lot.task, lot.ticket.train
    probe = lot.new_model(0)
    with FlopCounterMode(display=False) as counter:
        task.loss(probe, task.batch(0)).backward()
    per_member = counter.get_total_flops()  # multiply-adds count 2: forward plus both backward products
    rows = []
    for m in counts:
        for dtype in [None, torch.bfloat16] if bf16 else [None]:
            pop = Population([Member("m", i, lot.new_model(i)) for i in range(m)], task, cfg, autocast=dtype)

            def run(pop: Population = pop) -> None:
                for it in range(steps):
                    pop.step(it, cfg.lr)

            run()  # warm-up
            seconds = _timed(run, device)
            tflops = per_member * m * steps / seconds / 1e12
            label = "bf16" if dtype else "fp32/tf32"
            rows.append(Row(f"T{m}{'b' if dtype else ''}", f"matrix throughput: {m} members, {label}, batch 512",
                            "achieved", "device peak", tflops, peak_tflops, tflops / peak_tflops, "report", 0.0,
                            unit="TFLOP/s", note=f"{per_member / 1e6:.0f} MFLOP per member-step; the ratio is the "
                                                 "fraction of the peak reached by the batched step"))
    return rows


def packing(trials: int, epochs: int) -> list[Row]:
    """The same trials at resources.gpu 1 vs 0.25; each trial trains 8 members (4 replicates + reinit) batched.

    Through the whole service (`ticket-search sweep`: Optuna, MLflow) where those are installed, else through
    Ray Tune alone with the project's trainable, which is what places trials on a fractional GPU either way."""
    try:
        import mlflow  # noqa: F401
        import optuna  # noqa: F401
    except ImportError:
        return _packing_tune(trials, epochs)
    import ray

    from benchmarks.service import sweep_doc, timed_sweep  # imported late: Ray and MLflow only here

    sizes = Sizes(reps=1, long_reps=1, imp_epochs=epochs, population_epochs=epochs, sweep_trials=trials,
                  trial_epochs=epochs, search_seeds=1)
    times = {}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        for gpu, concurrent in ((1.0, 1), (0.25, 4)):
            doc = sweep_doc(Path(tmp), f"pack{int(gpu * 100)}", sizes, sampler="tpe", scheduler="none")
            doc["base"].update({"train.device": "cuda", "prune.replicates": 4, "prune.controls": "reinit"})
            doc["budget"]["max_concurrent"] = concurrent
            doc["resources"] = {"cpu": 2, "gpu": gpu}
            times[gpu] = timed_sweep(doc)[0]
    ray.shutdown()
    return [Row("GP", f"fractional packing: {trials} trials x 8 members, gpu 0.25 (4 at once) vs 1", "gpu=0.25",
                "gpu=1", times[0.25], times[1.0], times[1.0] / times[0.25], "speedup", 2.0)]


def _packing_tune(trials: int, epochs: int, device: str = "cuda") -> list[Row]:
    """Ray Tune alone: `ticket_trial` with {"gpu": 1} vs {"gpu": 0.25}, the trials' overlap read from their
    results (start = end - time_total_s), so the row shows that four trials did share the one GPU."""
    import ray
    from ray import tune

    from trainables.trainable import ticket_trial

    flat = {"data.name": "digits", "model.name": "lenet300", "train.epochs": epochs, "train.batch_size": 64,
            "train.device": device, "prune.replicates": 4, "prune.controls": "reinit", "prune.levels": 2,
            "prune.rate": 0.5, "train.seed": tune.grid_search(list(range(trials)))}
    ray.init(num_cpus=16, num_gpus=1, include_dashboard=False, log_to_driver=False)
    times, overlap = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        for gpu in (1.0, 0.25):
            tuner = tune.Tuner(tune.with_resources(ticket_trial, {"cpu": 2, "gpu": gpu}), param_space=flat,
                               run_config=tune.RunConfig(storage_path=tmp, name=f"pack{int(gpu * 100)}", verbose=0))
            start = time.perf_counter()
            fitted = tuner.fit()
            times[gpu] = time.perf_counter() - start
            grid = [fitted[i] for i in range(len(fitted))]
            errors = [r.error for r in grid if r.error]
            if errors:
                raise RuntimeError(f"packing at gpu={gpu}: {len(errors)} trial(s) failed: {errors[0]}")
            ends = [r.metrics or {} for r in grid]
            spans = [(m["timestamp"] - m["time_total_s"], m["timestamp"]) for m in ends]
            overlap[gpu] = max(sum(a <= t < b for a, b in spans) for t, _ in spans)
    ray.shutdown()
    note = (f"Ray Tune alone (no MLflow/Optuna here); trials seen running at once: {overlap[0.25]} at gpu=0.25, "
            f"{overlap[1.0]} at gpu=1")
    return [Row("GP", f"fractional packing: {trials} trials x 8 members, gpu 0.25 vs 1 (Tune)", "gpu=0.25",
                "gpu=1", times[0.25], times[1.0], times[1.0] / times[0.25], "speedup", 2.0, note=note)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run of the code path")
    parser.add_argument("--members", default="64,256", help="member counts of the population benchmarks")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per population run (digits: 21 steps each)")
    parser.add_argument("--bf16", action="store_true", help="also time the batched path under bf16 autocast")
    parser.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS, help="the device's matrix TFLOP/s")
    parser.add_argument("--only", default="population,throughput,packing", help="comma list of parts to run")
    parser.add_argument("--steps", type=int, default=50, help="timed steps of the throughput benchmark")
    parser.add_argument("--trials", type=int, default=8, help="trials per packing sweep")
    parser.add_argument("--out", default=str(OUT), help="markdown file to write ('' = none)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no GPU is visible; use --device cpu for a dry run of the code path")
    counts = [int(m) for m in args.members.split(",") if m.strip()]
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    info = machine()
    rows: list[Row] = []
    if "population" in parts:
        rows += population(device, counts, args.epochs, args.bf16)
    if "throughput" in parts:
        rows += throughput(device, counts, args.bf16, args.peak_tflops, args.steps)
    if "packing" in parts and device.type == "cuda":
        rows += packing(args.trials, args.epochs)

    Console(width=150).print(table(rows))
    if args.out:
        command = command_line("benchmarks.gpu", argv)
        Path(args.out).write_text(markdown(rows, info, command, quick=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
