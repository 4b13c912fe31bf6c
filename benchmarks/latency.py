"""Benchmark 8: inference latency of an exported ticket against the dense network, on the CPU.

Both sides are what `ticket-search export --format` writes: TorchScript traced from the network (dense: the
unpruned model; ours: `compact`, pruned channels removed, for channel tickets; `sparse`, CSR layers, for
unstructured tickets), loaded back with `torch.jit.load`. lenet300 on 1x28x28 and VGG-11 on 3x32x32 (both
formats), ResNet-20 on 3x32x32 (compact: a residual group keeps the same channels in all its layers), weight
densities 0.5, 0.2 and 0.05 (a channel ticket at layer scope keeps that fraction of each layer's channels),
batch 1 and 64, one torch thread, CPU seconds of the process. Latency does not depend on the weights' values,
so the masks are drawn from random scores on freshly built networks; BatchNorm statistics and shifts are
randomised as after training, so a removed channel carries a constant that the compact network folds in (a
fixed map behind a padded convolution: one more addition there).

Targets (issue 13): a channel ticket keeping 25% of the channels at least 2.5x faster than dense (8a, 8b); a
5%-density CSR lenet300 faster than dense at batch 1 (8c). Run through `python -m benchmarks.run --only 8`.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import Row, cpu_clock, paired
from trainables.config import Ticket
from trainables.io.exported import convert, save_torchscript
from trainables.pruning import masks as mk
from trainables.pruning import structure as st
from trainables.tasks.registry import build_model

MODELS = {"lenet300": (1, 28, 28), "vgg11": (3, 32, 32), "resnet20": (3, 32, 32)}
GRID = {"lenet300": ("compact", "sparse"), "vgg11": ("compact", "sparse"), "resnet20": ("compact",)}
DENSITIES = (0.5, 0.2, 0.05)
BATCHES = (1, 64)
BLOCK_S = 0.05  # CPU seconds of dense calls per timed block
_DENSE: dict[str, torch.jit.ScriptModule] = {}  # the dense side of each model, traced once per run
WHY_CSR = ("the whole network takes {ours_us:.0f} us per call at batch {batch} as CSR against {dense_us:.0f} us "
           "dense: at batch 1 lenet300's arithmetic is small (fc1, 235k weights, is a 24 us dense matrix-vector "
           "product on this core, 15-25 us as a CSR product of its {nnz} kept weights in eager PyTorch), so "
           "TorchScript's per-operation cost and the transposes around each CSR product (sparse x dense needs the "
           "batch as columns) take what the 95% fewer multiply-adds save; from batch 64 the CSR form wins (8.12)")
WHY_COMPACT = ("the compact network does {flops:.0%} of the dense multiply-adds, but its {layers} layers keep "
               "their per-call framework cost ({ours_us:.0f} us in all at batch {batch}), which a small network's "
               "arithmetic does not hide")


@functools.lru_cache(maxsize=4)
def _network(name: str, structure: str, density: float) -> tuple[nn.Module, mk.Mask]:
    """A masked network (cached: rows of one model share its dense side; nothing here modifies it)."""
    torch.manual_seed(0)
    shape = MODELS[name]
    model = build_model(Ticket.from_flat({"model.name": name}), shape, 10).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.running_var is not None and m.running_mean is not None:
            m.running_var.uniform_(0.5, 2.0)
            m.running_mean.normal_(0, 0.1)
            m.bias.data.normal_(0, 0.1)
    scores = {n: torch.rand(p.shape) for n, p in mk.prunable(model).items()}
    mask = st.prune(scores, mk.ones(model), density, scope="layer", output=mk.output_param(model),
                    structure=st.of(structure, model))
    mk.apply_(model, mask)
    return model, mask


def _loaded(module: nn.Module, shape: tuple[int, ...], folder: Path, name: str) -> torch.jit.ScriptModule:
    path = save_torchscript(module, shape, folder / f"{name}.pt")
    return torch.jit.load(str(path))


def _macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Multiply-adds of one example through the network's convolutions and linear layers (weights nonzero or not)."""
    total = 0

    def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        w = m.weight if isinstance(m.weight, torch.Tensor) else None
        if w is not None:
            total += int(w.numel() * (out[0, 0].numel() if out.dim() == 4 else 1))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return total


def _time(ours: Callable[[], object], theirs: Callable[[], object], reps: int) -> tuple[float, float, float]:
    """Paired CPU times; each block holds about BLOCK_S of the dense side's calls (at least one)."""
    theirs()  # warm-up, then one timed call sizes the blocks
    start = cpu_clock()
    theirs()
    calls = max(1, round(BLOCK_S / max(cpu_clock() - start, 1e-6)))
    return paired(ours, theirs, reps, inner=calls, clock=cpu_clock)


def _row(number: str, name: str, fmt: str, density: float, batch: int, reps: int, folder: Path,
         target: float | None, ticket: str) -> Row:
    structure = "channel" if fmt == "compact" else "unstructured"
    dense_model, _ = _network(name, structure, 1.0)
    model, mask = _network(name, structure, density)
    shape = MODELS[name]
    dense = _DENSE.get(name) or _DENSE.setdefault(name, _loaded(dense_model, shape, folder, f"{name}-dense"))
    exported_module = convert(model, mask, fmt, shape)
    exported = _loaded(exported_module, shape, folder, f"{name}-{fmt}-{density}")
    x = torch.randn(batch, *shape)

    def run(m: torch.jit.ScriptModule) -> Callable[[], object]:
        def call() -> object:
            with torch.inference_mode():
                return m(x)
        return call

    ours_s, dense_s, ratio = _time(run(exported), run(dense), reps)
    why = ""
    if target is not None and ratio < target:
        if fmt == "sparse":
            why = WHY_CSR.format(ours_us=ours_s * 1e6, dense_us=dense_s * 1e6, batch=batch, density=density,
                                 nnz=mk.counts(mask)[0])
        else:
            layers = sum(isinstance(m, nn.Conv2d | nn.Linear) for m in exported_module.modules())
            why = WHY_COMPACT.format(flops=_macs(exported_module, shape) / _macs(dense_model, shape), layers=layers,
                                     ours_us=ours_s * 1e6, batch=batch)
    return Row(number, f"latency: {name} {ticket} {density:g}, batch {batch}", f"{fmt} TorchScript",
               "dense TorchScript", ours_s, dense_s, ratio, "speedup" if target is not None else "ratio",
               target or 0.0, why=why)


def latency(reps: int) -> list[Row]:
    """The targets first (8a-8c), then the whole grid (8.1 ...): models x formats x densities x batches."""
    rows: list[Row] = []
    _DENSE.clear()
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        folder = Path(tmp)
        rows.append(_row("8a", "vgg11", "compact", 0.25, 1, reps, folder, 2.5, "channel ticket, 25% of channels"))
        rows.append(_row("8b", "vgg11", "compact", 0.25, 64, reps, folder, 2.5, "channel ticket, 25% of channels"))
        rows.append(_row("8c", "lenet300", "sparse", 0.05, 1, reps, folder, 1.0, "CSR ticket, density"))
        i = 0
        for name, formats in GRID.items():
            for fmt in formats:
                ticket = "channel ticket, density" if fmt == "compact" else "CSR ticket, density"
                for density in DENSITIES:
                    for batch in BATCHES:
                        i += 1
                        rows.append(_row(f"8.{i}", name, fmt, density, batch, reps, folder, None, ticket))
    for r in rows:
        r.note = "" if r.number != "8a" else ("CPU seconds, one torch thread; TorchScript on both sides; masks from "
                                               "random scores (latency does not depend on weight values)")
    return rows
