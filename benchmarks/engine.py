"""Benchmarks 1-4: the training engine against the usual way of doing the same work.

1. data path: device-resident batches by index vs a DataLoader over the same tensors (lenet300, digits);
2. mask cost: a masked training step vs the same step without a mask (one member, and a population);
3. population: 8 members trained together vs one after another (lenet300, digits);
4. a whole IMP run (5 levels, reinit control) vs the peer-style reference loop of `benchmarks/reference.py`.
Run through `python -m benchmarks.run --only 1,2,3,4`.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from benchmarks import reference
from benchmarks.common import Row, cpu_clock, overhead, speedup, threads
from trainables.config import Ticket
from trainables.lottery import Lottery
from trainables.pruning import masks as mk
from trainables.tasks.classification.task import Classification
from trainables.training import population
from trainables.training.loop import train_members
from trainables.training.members import Member
from trainables.training.population import Population
from trainables.training.steppers import OneByOne

DIGITS = {"data.name": "digits", "model.name": "lenet300", "train.device": "cpu", "train.batch_size": 64}

# Why a target can be missed here (measured on this project's 2-vCPU shared machine, 1 torch thread).
WHY_DATA = ("the lenet300 step itself ({step:.2f} ms of CPU per iteration, the same on both sides) dominates an "
            "iteration; our batches save the DataLoader's {saved:.2f} ms per batch (1b), which lifts an epoch by "
            "{ratio:.2f}x; 1.5x needs a step under {needed:.2f} ms (a faster core, or a GPU)")
WHY_MASK = ("masking is two elementwise products over the masked weights per step (~0.1 ms for 8 lenet300 "
            "members, ~2% of a 4.7 ms step); the rest is run-to-run noise of the same size on this shared machine")
WHY_POPULATION = ("lenet300 at batch 64 is compute-bound on one core: a member-step (forward and backward, ~17 MFLOP "
                  "of matrix products) takes {solo:.2f} ms one by one and {together:.2f} ms batched. Batching turns "
                  "8 members' products into batched matrix products, which run at ~58 GFLOP/s averaged over the "
                  "step's shapes (profiled; ~85 for the largest, and this core's fp32 peak, a 1024x1024 product, is "
                  "~98 GFLOP/s): ~0.29 ms per member-step for the products alone, already the whole budget of a 3x "
                  "speed-up. Batching does not shrink the FLOPs, and the loss, optimizer and masks remain "
                  "elementwise passes over 8x the data; what it removes is per-member framework overhead. On a GPU, "
                  "where one member leaves the device idle, the same path is the 20x lever (benchmarks/gpu.py)")
WHY_THREADS = ("a second thread splits each product, which helps the batched path's large products more than the "
               "one-by-one path's small ones, but the FLOPs of 3 stay the same: two cores only double the ceiling")
NOTE_THREADS = ("wall time; two torch threads on the 2 vCPUs (each trial of a sweep gets one thread per CPU it asks "
                "for); on a machine shared with other tenants an OpenMP region stalls whenever one of its threads is "
                "descheduled, which hurts the one-by-one path's many small operations more than the batched path's")
WHY_IMP = ("IMP with one reinit control trains 2 members per level, and on a CPU batching pays from 4 members "
           "(population.MIN_MEMBERS, see 3), so both sides train one member at a time and ours gains only the data "
           "path (1) and the reference's mask multiply on every forward pass; the step itself is the same "
           "compute-bound lenet300 step")


@contextlib.contextmanager
def path(mode: str) -> Iterator[None]:
    """Force the training path: "1" batched, "0" one by one, "auto" the default choice."""
    old = os.environ.get(population.ENV)
    os.environ[population.ENV] = mode
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(population.ENV, None)
        else:
            os.environ[population.ENV] = old


def clock() -> Callable[[], float]:
    """CPU time when torch runs one thread (immune to a shared machine's other tenants), else wall time."""
    return cpu_clock if torch.get_num_threads() == 1 else time.perf_counter


def _sparse_mask(model: torch.nn.Module, density: float, seed: int) -> mk.Mask:
    scores = {n: p.detach().abs() for n, p in mk.prunable(model).items()}
    return mk.random_like(mk.prune(scores, mk.ones(model), density, scope="global"),
                          torch.Generator().manual_seed(seed))


def data_path(reps: int) -> list[Row]:
    """1: lenet300 training iterations fed from our batches vs from a DataLoader; and the batches alone.

    The unit is one iteration (fetch a batch, train on it), alternated between the two sides; the
    DataLoader's per-epoch costs (a new iterator, its shuffle) land in whichever iteration starts an epoch.
    Each side trains its own copy of the same model. Times are per epoch (21 iterations on digits)."""
    lot = Lottery(Ticket.from_flat(DIGITS))
    task = lot.task
    assert isinstance(task, Classification)
    train, ipe = task.data.train, task.iters_per_epoch()
    loader = DataLoader(TensorDataset(train.x, train.y), batch_size=task.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    template = lot.new_model(0)

    def stepper() -> Callable[[torch.Tensor, torch.Tensor], None]:
        model = copy.deepcopy(template)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return step

    def ours(train_too: bool) -> Callable[[], None]:
        step, it = stepper(), [0]

        def run() -> None:
            it[0] += 1  # a new epoch every ipe calls, so our permutation is drawn as in training
            x, y = task.batch(it[0])
            if train_too:
                step(x, y)
        return run

    def theirs(train_too: bool) -> Callable[[], None]:
        step, batches = stepper(), [iter(loader)]

        def run() -> None:
            try:
                x, y = next(batches[0])
            except StopIteration:
                batches[0] = iter(loader)
                x, y = next(batches[0])
            if train_too:
                step(x, y)
        return run

    epoch = speedup("1", "data path: lenet300 training, per epoch (digits)", ("device batches", ours(True)),
                    ("DataLoader", theirs(True)), 1.5, reps, inner=ipe, scale=ipe, clock=clock())
    alone = speedup("1b", "data path: the batches of an epoch alone", ("device batches", ours(False)),
                    ("DataLoader", theirs(False)), 1.5, reps, inner=ipe, scale=ipe, clock=clock(),
                    note="the data path of 1 alone, no training")
    ms = 1e3 / ipe  # per-epoch seconds -> per-iteration milliseconds
    ours_batch, their_batch = alone.ours_value * ms, alone.theirs_value * ms
    step = epoch.ours_value * ms - ours_batch
    # (step + their_batch) / (step + ours_batch) >= 1.5  <=>  step <= 2 their_batch - 3 ours_batch
    epoch.why = WHY_DATA.format(step=step, saved=their_batch - ours_batch, ratio=epoch.ratio,
                                needed=2 * their_batch - 3 * ours_batch)
    return [epoch, alone]


def mask_cost(reps: int, members: int = 8) -> list[Row]:
    """2: training steps with a mask (density 0.2) vs the same steps without one, alternated step by step."""
    lot = Lottery(Ticket.from_flat(DIGITS))
    task, cfg, ipe = lot.task, lot.ticket.train, lot.task.iters_per_epoch()
    model = lot.new_model(0)
    mask = _sparse_mask(model, 0.2, 0)
    solo = {k: OneByOne([Member("ticket", 0, copy.deepcopy(model), m)], task, cfg)
            for k, m in (("on", mask), ("off", None))}
    models = [lot.new_model(i) for i in range(members)]
    pops = {k: Population([Member("m", i, copy.deepcopy(mod), _sparse_mask(mod, 0.2, i) if k == "on" else None)
                           for i, mod in enumerate(models)], task, cfg)
            for k in ("on", "off")}
    its = {k: [0] for k in ("solo-on", "solo-off", "pop-on", "pop-off")}

    def solo_step(key: str) -> Callable[[], None]:
        def run() -> None:
            its["solo-" + key][0] += 1
            solo[key].step(its["solo-" + key][0], cfg.lr)
        return run

    def pop_step(key: str) -> Callable[[], None]:
        def run() -> None:
            its["pop-" + key][0] += 1
            pops[key].step(its["pop-" + key][0], cfg.lr)
        return run

    return [overhead("2", "mask cost: masked vs unmasked step, 1 member (per epoch)", ("masked", solo_step("on")),
                     ("no mask", solo_step("off")), 1.05, reps, inner=ipe, scale=ipe, clock=clock(), why=WHY_MASK),
            overhead("2b", f"mask cost: masked vs unmasked step, {members} members batched (per epoch)",
                     ("masked", pop_step("on")), ("no mask", pop_step("off")), 1.05, reps, inner=ipe, scale=ipe,
                     clock=clock(), why=WHY_MASK)]


def population_speed(reps: int, members: int = 8, epochs: int = 1, thread_counts: tuple[int, ...] = (1,)
                     ) -> list[Row]:
    """3: `train_members` on 8 masked members (a level with controls), batched vs one after another."""
    lot = Lottery(Ticket.from_flat({**DIGITS, "train.epochs": epochs}))
    templates = [lot.new_model(i) for i in range(members)]
    masks = [_sparse_mask(m, 0.5, i) for i, m in enumerate(templates)]

    def run(mode: str) -> Callable[[], None]:
        def go() -> None:
            ms = [Member("m", i, copy.deepcopy(t), masks[i]) for i, t in enumerate(templates)]
            with path(mode):
                train_members(ms, lot.task, lot.ticket.train, start=0, stop=lot.total)
        return go

    rows: list[Row] = []
    for n in thread_counts:
        with threads(n):
            rows.append(speedup("3" if n == thread_counts[0] else f"3{'abc'[len(rows) - 1]}",
                                f"population: {members} members, {epochs} epoch(s), {n} thread(s)",
                                ("together", run("1")), ("one by one", run("0")), 3.0, reps, clock=clock(),
                                why=WHY_POPULATION if n == 1 else WHY_THREADS, note="" if n == 1 else NOTE_THREADS))
        steps = members * lot.total  # member-steps per timed run
        rows[-1].why = rows[-1].why.format(solo=rows[-1].theirs_value / steps * 1e3,
                                           together=rows[-1].ours_value / steps * 1e3)
    return rows


def imp_run(reps: int, epochs: int = 3, levels: int = 5) -> list[Row]:
    """4: a whole IMP run with a reinit control: ours (Lottery, default path) vs the reference loop."""
    ticket = Ticket.from_flat({**DIGITS, "train.epochs": epochs, "prune.levels": levels,
                               "prune.controls": "reinit"})
    tiny = ticket.replace(**{"train.epochs": 1, "prune.levels": 1})
    list(Lottery(tiny).run())  # warm both up once (imports, data, kernels): the timed runs are long
    reference.run_imp(tiny)

    def ours() -> None:
        with path("auto"):
            list(Lottery(ticket).run())

    return [speedup("4", f"IMP run: {levels} levels + reinit control, {epochs} epochs/level",
                    ("Lottery", ours), ("reference loop", lambda: reference.run_imp(ticket)), 3.0, reps,
                    warmup=False, clock=clock(), why=WHY_IMP,
                    note="reference: DataLoader, mask re-applied on every forward pass, one member at a time")]
