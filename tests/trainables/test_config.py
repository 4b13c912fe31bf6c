"""The typed config: flat keys round-trip, strings re-typed, bad input named, ids stable."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from trainables.config import DEFAULTS, KEYS, ConfigError, Ticket


def test_flat_roundtrip_is_identity() -> None:
    t = Ticket.from_flat({"prune.rate": 0.5, "prune.controls": ("shuffle", "reinit"), "model.widths": (8, 4),
                          "prune.target_density": 0.1, "train.optimizer": "adam"})
    assert Ticket.from_flat(t.flat()) == t
    assert Ticket.from_flat(Ticket().flat()) == Ticket()


def test_strings_from_mlflow_are_retyped() -> None:
    as_strings = {k: str(v) for k, v in Ticket.from_flat({"prune.controls": "shuffle,random"}).flat().items()}
    as_strings["prune.controls"] = "shuffle,random"
    as_strings["model.widths"] = "300,100"
    t = Ticket.from_flat(as_strings)
    assert t.prune.controls == ("shuffle", "random")
    assert t.model.widths == (300, 100)
    assert t.prune.target_density is None
    assert t.data.download is False
    assert t.train.epochs == DEFAULTS["train.epochs"]


def test_every_public_key_of_the_design_exists() -> None:
    public = [
        "data.name", "data.root", "data.download", "data.val_fraction", "data.seed", "data.input_shape",
        "data.num_classes", "data.size", "model.name", "model.widths", "train.optimizer", "train.lr",
        "train.momentum", "train.weight_decay", "train.batch_size", "train.epochs", "train.lr_schedule",
        "train.warmup_iters", "train.seed", "train.device", "prune.method", "prune.scorer", "prune.scope",
        "prune.rate", "prune.levels", "prune.target_density", "prune.iterations", "prune.rewind_iter",
        "prune.output_rate", "prune.controls", "prune.replicates", "prune.early_bird", "prune.eb_epsilon",
        "prune.eb_window", "prune.init_mask",
    ]
    assert set(public) <= set(KEYS)
    assert all("/" not in k for k in KEYS)  # Ray splits keys on '/'


def test_defaults_describe_the_classic_experiment() -> None:
    t = Ticket()
    assert (t.data.name, t.model.name, t.train.optimizer) == ("digits", "lenet300", "sgd")
    assert (t.prune.method, t.prune.scorer, t.prune.scope) == ("imp", "magnitude", "global")
    assert (t.prune.rate, t.prune.rewind_iter, t.prune.output_rate) == (0.2, 0, 0.5)
    assert (t.prune.controls, t.prune.replicates) == ((), 1)


@pytest.mark.parametrize(("flat", "match"), [
    ({"prune.rat": 0.3}, r"unknown key 'prune.rat' \(did you mean 'prune.rate'\?\); valid keys: data.name"),
    ({"prune.rate": 1.0}, r"prune.rate: 1.0 is outside \(0, 1\)"),
    ({"prune.rate": 0}, r"prune.rate: 0.0 is outside"),
    ({"prune.target_density": 0}, r"prune.target_density: 0.0 is outside \(0, 1\]"),
    ({"prune.scorer": "l1"}, r"prune.scorer: unknown value 'l1'; valid choices: magnitude, random, snip"),
    ({"model.name": "resnet9"}, r"model.name: unknown value 'resnet9'; valid choices: .*tv:<torchvision name>"),
    ({"data.name": "imagenet"}, r"data.name: unknown value 'imagenet'; valid choices: digits"),
    ({"train.epochs": "ten"}, r"train.epochs: cannot read 'ten' as an integer"),
    ({"data.download": "maybe"}, r"data.download: cannot read 'maybe' as true/false"),
    ({"prune.controls": "shuffle,dropout"}, r"prune.controls: unknown value 'dropout'"),
    ({"prune.method": "init"}, r"prune.target_density: prune.method=init needs a target density"),
    ({"data.input_shape": "3xx2"}, r"data.input_shape: cannot read '3xx2'"),
])
def test_bad_values_name_the_field(flat: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Ticket.from_flat(flat)


def test_id_hashes_only_non_default_values() -> None:
    a = Ticket.from_flat({"prune.rate": 0.5})
    assert a.id == Ticket.from_flat({"prune.rate": "0.5", "prune.scorer": "magnitude"}).id
    assert a.id != Ticket().id
    assert len(a.id) == 10


def test_trainables_never_import_search_mlflow_or_optuna() -> None:
    root = Path(__file__).resolve().parents[2] / "trainables"
    forbidden = {"search", "mlflow", "optuna"}
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in forbidden, f"{path.name} imports {n}"


def test_where_data_lives_does_not_change_the_id() -> None:
    a = Ticket.from_flat({"prune.rate": 0.5, "data.root": "/a", "train.device": "cpu"})
    assert a.id == Ticket.from_flat({"prune.rate": 0.5, "data.root": "/elsewhere"}).id


@pytest.mark.parametrize("raw", ["nan", "1e400"])
def test_non_finite_and_huge_numbers_are_config_errors(raw: str) -> None:
    with pytest.raises(ConfigError, match="prune.rate"):
        Ticket.from_flat({"prune.rate": raw})


def test_readme_lists_every_key() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [k for k in KEYS if f"`{k}`" not in readme]
    assert not missing, f"README.md does not document {missing}"
