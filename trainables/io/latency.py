"""Measured inference latency of a trained ticket in its exported form: what the `latency_pareto` objective
trades against the validation score.

The form follows the structure: a `channel` ticket is compacted (trainables/io/compact.py), any other is run
with CSR layers (`sparse`); a network that form does not support (e.g. a concatenation, for compact) is timed as
exported `masked`. Latency: median CPU milliseconds of one batch-1 forward pass of the TorchScript-traced
network on the CPU, on one thread, after a warm-up call.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from trainables.config import ConfigError, Ticket
from trainables.io.exported import convert, save_torchscript
from trainables.io.packing import StateDict, unpack
from trainables.pruning.masks import Mask
from trainables.tasks.registry import build_model

CALLS = 20  # timed forward passes (the median is reported)


def export_format(ticket: Ticket) -> str:
    return "compact" if ticket.prune.structure == "channel" else "sparse"


def measure_latency(ticket: Ticket, input_shape: tuple[int, ...], outputs: int, weights: StateDict,
                    mask: Mask, *, calls: int = CALLS) -> float:
    """Median CPU milliseconds of a batch-1 forward pass of the exported trained ticket (NaN if untraceable)."""
    with torch.random.fork_rng(devices=[]):  # building a model draws from the global stream: leave it alone
        model = build_model(ticket, input_shape, outputs)
    model.load_state_dict(unpack(weights, mask))
    mask = {n: m.cpu() for n, m in mask.items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="ticket-latency-") as tmp:
            try:
                module = convert(model, mask, export_format(ticket), input_shape)
            except ConfigError:
                module = convert(model, mask, "masked", input_shape)
            try:
                traced = torch.jit.load(str(save_torchscript(module, input_shape, Path(tmp) / "model.pt")))
            except ConfigError:  # e.g. a language model (token input): no float trace
                return float("nan")
        x = torch.zeros(1, *input_shape)
        times = []
        with torch.inference_mode():
            traced(x)
            for _ in range(calls):
                start = time.process_time()
                traced(x)
                times.append(time.process_time() - start)
        return statistics.median(times) * 1e3
    finally:
        torch.set_num_threads(threads)
