"""GPU benchmark: a 2:4 ticket's inference with PyTorch's semi-structured sparse kernels vs the same network dense.

    python3 -m benchmarks.semistructured                 # cuda:0, float16 (about a minute on an H200)
    python3 -m benchmarks.semistructured --device cpu    # dry run: builds and checks the 2:4 network, no timing

An MLP of `--layers` linear layers `--width` x `--width` (default 4 of 4096 x 4096, ReLU between: matrices the
size of a language model's, where 2:4 kernels pay; lenet300's 300-wide layers miss the shape constraints),
every layer pruned 2:4 by magnitude (trainables/pruning/structure.py). Ours: each weight as a
SparseSemiStructuredTensor, once through each of PyTorch's backends (cuSPARSELt, then CUTLASS; the exported
ticket's loader, trainables/io/semistructured_loader.py, takes cuSPARSELt where torch has it); a backend this GPU
or build refuses costs its rows only, with its reason. Theirs: the same masked weights dense. Both float16, batches 1,
64, 1024 and 8192, in the same process: blocks of forward passes (about 20 ms of the dense side each, CUDA
synchronised at the end of a block), the sides alternating, the median of per-block ratios. Each row's note
gives max |ours - theirs| relative to max |theirs| (float16 rounding of different summation orders). First, a
one-line check of the export path: a small 2:4 MLP written as `export --format sparse` writes it
(trainables/io/semistructured.py), loaded by the standalone loader, within tolerance of the masked network (on a
CPU dry run the program is loaded with its layers dense).

Imports torch, rich, benchmarks.common and trainables only (no Ray, MLflow or Optuna). Writes the table to
--out (default benchmarks/RESULTS_SEMISTRUCTURED.md) with the machine, date and command.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from benchmarks.common import Row, command_line, machine, markdown, paired, table
from trainables.io import semistructured as semi
from trainables.io import semistructured_loader as loader
from trainables.pruning.structure import nm_candidates

OUT = Path(__file__).with_name("RESULTS_SEMISTRUCTURED.md")
BLOCK_S = 0.02  # seconds of dense forward passes per timed block


def network(width: int, layers: int, device: torch.device, dtype: torch.dtype) -> nn.Sequential:
    """`layers` linear layers width x width, ReLU between, each weight 2:4 by magnitude (masked, dense)."""
    torch.manual_seed(0)
    mods: list[nn.Module] = []
    for i in range(layers):
        lin = nn.Linear(width, width)
        with torch.no_grad():
            keep = nm_candidates(lin.weight.abs(), torch.ones_like(lin.weight, dtype=torch.bool), 2, 4)
            lin.weight.mul_(keep)
        mods += [lin] + ([nn.ReLU()] if i < layers - 1 else [])
    return nn.Sequential(*mods).eval().to(device, dtype)


BACKENDS = ("cusparselt", "cutlass")  # the kernels behind a semi-structured F.linear


def sparsified(dense: nn.Sequential, backend: str) -> nn.Sequential:
    """A copy whose linear weights are semi-structured on `backend`'s kernels, 'cusparselt' or 'cutlass' (needs a
    CUDA GPU of compute capability 8.0+)."""
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    out = nn.Sequential(*[nn.Linear(m.in_features, m.out_features) if isinstance(m, nn.Linear) else m
                          for m in dense]).to(next(dense.parameters()).device, next(dense.parameters()).dtype)
    for new, old in zip(out, dense, strict=True):
        if isinstance(new, nn.Linear) and isinstance(old, nn.Linear):
            SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"
            weight = to_sparse_semi_structured(old.weight.detach().contiguous())
            new.weight = nn.Parameter(weight, requires_grad=False)
            new.bias = nn.Parameter(old.bias.detach().clone(), requires_grad=False)
    return out.eval()


def _block(net: nn.Module, x: torch.Tensor, calls: int) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            for _ in range(calls):
                net(x)
        torch.cuda.synchronize(x.device)
        return None
    return run


def rows(width: int, layers: int, batches: list[int], reps: int, device: torch.device) -> tuple[list[Row], str]:
    """Timed rows on a capable GPU; on any other device the checks alone and the reason for no rows."""
    reason = semi.why_not() if device.type == "cuda" else f"--device {device.type}: the 2:4 kernels run on CUDA only"
    dense = network(width, layers, device if reason is None else torch.device("cpu"), semi.DTYPE)
    plan, why_dense = semi.plan(dense, {f"{i}.weight": (m.weight != 0) for i, m in enumerate(dense)
                                        if isinstance(m, nn.Linear)})
    if why_dense:  # every layer qualifies by construction: a failure here is a bug in the checks
        raise SystemExit(f"layers that do not qualify: {why_dense}")
    if reason is not None:
        return [], f"{len(plan)} layers of {width}x{width} qualify for 2:4; GPU-only rows skipped: {reason}"
    out: list[Row] = []
    kinds = []
    for backend in BACKENDS:
        try:
            found, kind = _variant(dense, backend, layers, width, batches, reps, device)
            out += found
            kinds.append(f"{backend}: {kind}")
        except (RuntimeError, AttributeError, TypeError) as e:  # kernels missing in this build: one line, go on
            kinds.append(f"{backend}: failed ({str(e).strip().splitlines()[0][:160]})")
    return out, f"{'; '.join(kinds)} on {torch.cuda.get_device_name(device)}"


def _variant(dense: nn.Sequential, backend: str, layers: int, width: int, batches: list[int], reps: int,
             device: torch.device) -> tuple[list[Row], str]:
    ours = sparsified(dense, backend)
    kind = type(ours[0].weight).__name__
    out: list[Row] = []
    for batch in batches:
        x = torch.randn(batch, width, device=device, dtype=semi.DTYPE)
        with torch.inference_mode():
            expected, got = dense(x), ours(x)
        err = float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-6))
        one = _block(dense, x, 1)
        one()
        start = time.perf_counter()
        one()
        calls = max(1, round(BLOCK_S / max(time.perf_counter() - start, 1e-6)))
        a, b, ratio = paired(_block(ours, x, calls), _block(dense, x, calls), reps)
        out.append(Row(f"S{batch}-{backend}", f"2:4 inference: MLP {layers} x {width}x{width}, float16, "
                       f"batch {batch}, {backend}", "2:4 semi-structured", "dense", a / calls, b / calls,
                       ratio, "ratio", 0.0, note=f"{kind}; max |2:4 - dense| / max |dense| = {err:.1e}"))
    return out, kind


def export_check(device: torch.device) -> str:
    """The export path on this GPU, in one line: a 2:4 MLP 256-256-128-10 written as an exported ticket's
    semi-structured files, loaded by the standalone loader, compared with the float32 masked network."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    mask = {}
    for name, p in model.named_parameters():
        if name.endswith("weight"):
            mask[name] = nm_candidates(p.detach().abs(), torch.ones_like(p, dtype=torch.bool), 2, 4)
            p.data.mul_(mask[name])
    x = torch.randn(64, 256)
    with torch.no_grad():
        expected = model(x)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-semi-") as tmp:
            doc = semi.write(model, mask, tmp, (256,), device=str(device))
            net = loader.load(tmp, str(device), sparse=device.type == "cuda")
            with torch.inference_mode():
                got = net(x.to(device, semi.DTYPE)).float().cpu()
    except Exception as e:  # noqa: BLE001 - report any failure in one line; the timing rows still run
        return f"export check FAILED: {type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
    kinds = sorted({type(p).__name__ for n, p in net.named_parameters() if n in doc["layers"]})
    err = float((got - expected).abs().max())
    ok = err <= semi.TOLERANCE * max(1.0, float(expected.abs().max())) and (kinds != ["Parameter"]
                                                                              or device.type != "cuda")
    return (f"export check {'passed' if ok else 'FAILED'}: layers {', '.join(doc['layers'])} loaded as "
            f"{', '.join(kinds)}, {', '.join(doc['dense'])} dense-masked; max |2:4 float16 - float32 masked| = "
            f"{err:.1e} (tolerance {semi.TOLERANCE:g} x max(1, |output|))")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.semistructured", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run of the checks")
    parser.add_argument("--width", type=int, default=4096, help="inputs and outputs of each linear layer")
    parser.add_argument("--layers", type=int, default=4, help="linear layers")
    parser.add_argument("--batches", default="1,64,1024,8192", help="comma list of batch sizes")
    parser.add_argument("--reps", type=int, default=9, help="timed blocks per side and batch")
    parser.add_argument("--out", default=str(OUT), help="markdown file to write ('' = none)")
    args = parser.parse_args(argv)
    if args.width % semi.MIN_COLS:
        parser.error(f"--width: {args.width} is not a multiple of {semi.MIN_COLS} (the 2:4 kernels' shape rule)")
    device = torch.device(args.device)
    info = machine()
    found, message = rows(args.width, args.layers, [int(b) for b in args.batches.split(",") if b.strip()],
                          args.reps, device)
    console = Console(width=150)
    console.print(message)
    check = export_check(device if found else torch.device("cpu"))
    console.print(check)
    if not found:
        return 0
    found[0].note += f"; {check}"
    console.print(table(found))
    if args.out:
        command = command_line("benchmarks.semistructured", argv)
        Path(args.out).write_text(markdown(found, info, command, quick=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
