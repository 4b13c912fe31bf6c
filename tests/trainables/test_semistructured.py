"""2:4 semi-structured export: which layers qualify, the one-line reason a machine cannot use the format, the
torch.export program reloaded by the standalone loader without this project (CPU), and on a GPU of compute
capability 8.0+ the semi-structured layers in use, within float16's tolerance of the masked network."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from trainables.config import Ticket
from trainables.io import semistructured as semi
from trainables.io import semistructured_loader as loader
from trainables.pruning import masks as mk
from trainables.pruning import structure as st
from trainables.tasks.registry import build_model

SHAPE = (1, 16, 16)  # 256 inputs: fc1 256x256 and fc2 128x256 qualify, the 10x128 output layer does not

RELOAD = """
import sys, torch
sys.path.insert(0, sys.argv[1])
import semistructured
net = semistructured.load(sys.argv[1], sys.argv[2], sparse=sys.argv[2] == "cuda")
x = torch.load(sys.argv[3], weights_only=True).to(sys.argv[2], torch.float16)
with torch.inference_mode():
    torch.save(net(x).float().cpu(), sys.argv[3] + ".out")
sparse = [n for n, p in net.named_parameters() if type(p).__name__.startswith("SparseSemiStructured")]
print(",".join(sparse))
assert not any(m.split(".")[0] in ("trainables", "search") for m in sys.modules)
"""


def ticket_24(density: float = 0.5) -> tuple[nn.Module, mk.Mask]:
    torch.manual_seed(0)
    model = build_model(Ticket.from_flat({"model.name": "mlp", "model.widths": "256,128"}), SHAPE, 10).eval()
    scores = {n: torch.rand(p.shape) for n, p in mk.prunable(model).items()}
    mask = st.prune(scores, mk.ones(model), density, scope="layer", output=mk.output_param(model), structure="2:4")
    mk.apply_(model, mask)
    return model, mask


def test_plan_takes_the_2_4_linear_layers_of_qualifying_shapes() -> None:
    model, mask = ticket_24()
    layers, dense = semi.plan(model, mask)
    assert layers == ["fc1.weight", "fc2.weight"]
    assert dense == {"fc3.weight": "10x128: rows must be a multiple of 32 and inputs of 64"}
    mask["fc1.weight"] = mask["fc1.weight"].clone()
    mask["fc1.weight"][0, :3] = True  # 3 of the first 4 inputs: not 2:4
    assert semi.plan(model, mask)[1]["fc1.weight"] == "its mask keeps more than 2 of some 4 consecutive inputs"
    conv = nn.Sequential(nn.Conv2d(64, 64, 1))
    assert semi.plan(conv, {"0.weight": torch.ones(64, 64, 1, 1, dtype=torch.bool)})[1]["0.weight"].startswith(
        "a Conv2d: the 2:4 kernels are matrix products")


def test_without_a_capable_gpu_the_export_says_why_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    model, mask = ticket_24()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    doc = semi.export(model, mask, tmp_path, SHAPE)
    assert doc == {"used": False, "why": "2:4 semi-structured format not used: no CUDA GPU is visible (model.pt "
                                         "keeps CSR layers)"}
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    assert semi.why_not() == "Tesla T4 has compute capability 7.5; PyTorch's 2:4 kernels need 8.0 or more"


def reload(folder: Path, device: str, x: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """The exported folder's network run by plain torch in another process: (outputs, semi-structured params)."""
    torch.save(x, folder / "x.pt")
    done = subprocess.run([sys.executable, "-c", RELOAD, str(folder), device, str(folder / "x.pt")],
                          capture_output=True, text=True, timeout=300, cwd=folder)
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.load(folder / "x.pt.out", weights_only=True), [n for n in done.stdout.strip().split(",") if n]


@pytest.mark.slow  # torch.export, then torch started again in another process: about 30 s on a shared core
def test_the_program_reloads_without_this_project_and_computes_the_masked_network(tmp_path: Path) -> None:
    """CPU: the float16 program, layers left dense; within semi.TOLERANCE of the float32 masked network."""
    model, mask = ticket_24()
    doc = semi.write(model, mask, tmp_path, SHAPE, device="cpu")
    assert doc["used"] and doc["layers"] == ["fc1.weight", "fc2.weight"]
    assert {p.name for p in tmp_path.iterdir()} == {loader.SPEC, loader.PROGRAM, loader.LOADER}
    x = torch.randn(3, *SHAPE)
    got, sparse = reload(tmp_path, "cpu", x)
    with torch.no_grad():
        expected = model(x)
    assert sparse == [] and got.shape == (3, 10)
    assert (got - expected).abs().max() <= semi.TOLERANCE * max(1.0, float(expected.abs().max()))


@pytest.mark.skipif(semi.why_not() is not None, reason=f"needs a CUDA GPU of compute capability 8.0+ "
                                                       f"({semi.why_not()})")
@pytest.mark.parametrize("batch", [1, 64])
def test_on_a_gpu_the_2_4_layers_are_semi_structured_and_match(tmp_path: Path, batch: int) -> None:
    """float16 semi-structured products against the float32 masked network: within 2e-2 x max(1, |output|)."""
    model, mask = ticket_24()
    doc = semi.export(model, mask, tmp_path, SHAPE)
    assert doc["used"] and doc["layers"] == ["fc1.weight", "fc2.weight"]
    x = torch.randn(batch, *SHAPE)
    got, sparse = reload(tmp_path, "cuda", x)
    with torch.no_grad():
        expected = model(x)
    assert sparse == ["fc1.weight", "fc2.weight"]
    assert (got - expected).abs().max() <= semi.TOLERANCE * max(1.0, float(expected.abs().max()))
