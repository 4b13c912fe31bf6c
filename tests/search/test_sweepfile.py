"""Sweep files: shipped files load, defaults resolve to absolute paths under runs/, --set fixes keys and
changes entries, --smoke caps the budget, every mistake is one line naming the entry, and a written
sweep reads back equal."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search.sweep.file import load_sweep, sweep_from_dict
from search.sweep.overrides import read_toml
from search.sweep.storage import dump_toml
from search.tune.study import param_space
from trainables.config import ConfigError
from trainables.trial import STAGE_STORE

SWEEPS = sorted((Path(__file__).parents[2] / "sweeps").glob("*.toml"))
SPACE = {"prune.method": ["imp", "init"],
         "prune.rewind_iter": {"type": "int", "low": 0, "high": 40, "step": 10,
                               "when": {"prune.method": "imp"}},
         "prune.iterations": {"type": "int", "low": 1, "high": 100, "log": True,
                              "when": {"prune.method": "init"}},
         "prune": {"rate": {"type": "float", "low": 0.1, "high": 0.6}}}  # nested form


def doc(**sections: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": "t", "base": {"train": {"epochs": 3}}, "space": copy.deepcopy(SPACE),
                           "objective": {"target_density": 0.1}}
    out.update(sections)
    return out


def keys(sweep: Any) -> list[str]:
    return [d.key for d in sweep.space]


def test_shipped_sweep_files_exist() -> None:
    assert {p.stem for p in SWEEPS} >= {"digits", "mnist1d", "cifar10_resnet20", "pareto"}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_shipped_sweep_loads_with_absolute_storage(path: Path, tmp_path: Path) -> None:
    sweep = load_sweep(path, cwd=tmp_path)
    assert sweep.name == path.stem and sweep.space
    assert sweep.ray_storage == str(tmp_path / "runs" / "ray")
    assert Path(sweep.base.data.root).is_absolute()
    assert sweep.max_t >= sweep.grace_period
    smoke = load_sweep(path, smoke=True, cwd=tmp_path)
    assert smoke.smoke and smoke.num_samples <= 4 and smoke.base.train.epochs <= 2


def test_digits_is_the_small_default_job() -> None:
    s = load_sweep(SWEEPS[[p.stem for p in SWEEPS].index("digits")])
    assert (s.num_samples, s.max_concurrent, s.cpu, s.gpu, s.scheduler, s.grace_period) == (12, 2, 1, 0, "asha", 6)
    assert s.base.train.epochs == 6 and s.target_density == 0.2
    assert keys(s) == ["prune.rate", "train.lr", "prune.rewind_iter", "prune.scorer"]


def test_defaults_resolve_under_an_absolute_runs_folder(tmp_path: Path) -> None:
    s = sweep_from_dict({"name": "x", "objective": {"target_density": 0.2}}, cwd=tmp_path)
    runs = tmp_path / "runs"
    assert s.root == str(runs)
    assert s.tracking_uri == f"sqlite:///{runs}/mlflow.db" and s.tracking_uri.startswith("sqlite:////")
    assert s.artifact_root == str(runs / "artifacts")
    assert s.optuna_storage == str(runs / "optuna" / "x.journal")
    assert (s.ray_storage, s.ray_address) == (str(runs / "ray"), "")
    assert s.base.data.root == str(tmp_path / "data")
    assert (s.objective, s.sampler, s.scheduler, s.num_samples, s.max_concurrent) == (
        "accuracy_at_density", "tpe", "asha", 16, 2)
    # the target goes into the ticket; levels stay unset, so each trial derives them from its own rate
    assert (s.base.prune.target_density, s.base.prune.levels) == (0.2, None)
    # max_t covers them whatever the model: the output layer at half of rate 0.2 needs 16 (0.9^16 = 0.185)
    assert s.max_t == (16 + 1) * s.base.train.epochs
    assert (s.metrics, s.modes) == (["val_score"], ["max"])


def test_relative_storage_and_ticket_paths_resolve_against_cwd(tmp_path: Path) -> None:
    storage = {"root": "out", "tracking_uri": "sqlite:///db/m.db", "optuna_storage": "studies/o.journal",
               "ray_storage": "s3://bucket/ray", "artifact_root": "art", "ray_address": "auto"}
    s = sweep_from_dict(doc(storage=storage, base={"data.root": "~/d", "prune.init_mask": "m/x.safetensors"}),
                        cwd=tmp_path)
    assert s.tracking_uri == f"sqlite:///{tmp_path}/db/m.db"
    assert s.optuna_storage == str(tmp_path / "studies" / "o.journal")
    assert (s.ray_storage, s.artifact_root, s.ray_address) == ("s3://bucket/ray", str(tmp_path / "art"), "auto")
    assert s.base.data.root == str(Path.home() / "d")
    assert s.base.prune.init_mask == str(tmp_path / "m" / "x.safetensors")
    kept = sweep_from_dict(doc(base={"prune.init_mask": "runs:/abc/mask.safetensors"},
                               storage={"tracking_uri": "http://head:5000",
                                        "optuna_storage": "postgresql://h/optuna"}), cwd=tmp_path)
    assert kept.base.prune.init_mask == "runs:/abc/mask.safetensors"
    assert (kept.tracking_uri, kept.optuna_storage) == ("http://head:5000", "postgresql://h/optuna")


def test_set_on_a_ticket_key_fixes_it_and_removes_it_from_the_space() -> None:
    s = sweep_from_dict(doc(), ["prune.rate=0.3", "base.prune.method=init", "model.widths=8,4"])
    assert (s.base.prune.rate, s.base.prune.method, s.base.model.widths) == (0.3, "init", (8, 4))
    assert keys(s) == ["prune.rewind_iter", "prune.iterations"]  # conditions now read the base value


def test_set_on_sweep_entries_retypes_strings(tmp_path: Path) -> None:
    s = sweep_from_dict(doc(), ["budget.num_samples=4", "scheduler.name=none", "search.sampler=random",
                                "storage.tracking_uri=http://h:5000", "objective.name=pareto",
                                "objective.target_density=0.2", "resources.gpu=0.25", "name=foo",
                                "search.seed=7", "budget.time_limit_s=60"], cwd=tmp_path)
    assert (s.num_samples, s.scheduler, s.sampler, s.tracking_uri) == (4, "none", "random", "http://h:5000")
    assert (s.objective, s.target_density, s.base.prune.target_density) == ("pareto", 0.2, 0.2)
    assert (s.gpu, s.name, s.seed, s.time_limit_s) == (0.25, "foo", 7, 60.0)
    assert s.optuna_storage == str(tmp_path / "runs" / "optuna" / "foo.journal")
    assert (s.metrics, s.modes) == (["val_score", "sparsity"], ["max", "max"])
    follows = sweep_from_dict(doc(), ["prune.target_density=0.05"])
    assert follows.target_density == follows.base.prune.target_density == 0.05


def test_smoke_caps_budget_epochs_levels_and_data() -> None:
    path = SWEEPS[[p.stem for p in SWEEPS].index("cifar10_resnet20")]
    s = load_sweep(path, smoke=True)
    assert (s.num_samples, s.max_concurrent, s.grace_period, s.smoke) == (4, 2, 1, True)
    assert (s.base.train.epochs, s.base.prune.levels, s.max_t) == (2, 2, 6.0)
    assert s.base.prune.target_density is None and s.target_density == 0.2  # the cap ends each trial
    d = s.base.data
    assert (d.name, d.input_shape, d.num_classes, d.size) == ("synthetic", "3x32x32", 10, 512)
    assert (s.gpu, s.ray_address) == (0.25, "auto")  # fitted to the cluster once it is known (search/capacity.py)


def test_smoke_clips_dims_over_capped_keys() -> None:
    space = {"prune.levels": {"type": "int", "low": 1, "high": 8},
             "train.epochs": {"type": "int", "low": 3, "high": 10},
             "prune.iterations": {"type": "int", "low": 1, "high": 100, "log": True},
             "train.batch_size": [32, 64]}
    s = sweep_from_dict(doc(space=space, objective={"name": "pareto"}), smoke=True)
    dims = {d.key: d for d in s.space}
    assert (dims["prune.levels"].low, dims["prune.levels"].high) == (1, 2)
    assert dims["prune.iterations"].high == 10
    assert "train.epochs" not in dims and s.base.train.epochs == 2  # one value left: fixed
    assert dims["train.batch_size"].choices == (32, 64)
    assert s.max_t == (2 + 1) * 2
    init = sweep_from_dict(doc(), smoke=True)  # init may be sampled: it keeps its target density
    assert init.base.prune.target_density == 0.1 and init.base.prune.levels == 2


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
@pytest.mark.parametrize("smoke", [False, True])
def test_to_toml_dict_round_trips_through_toml_text(path: Path, smoke: bool, tmp_path: Path) -> None:
    sweep = load_sweep(path, ["base.prune.controls=shuffle,reinit"], smoke=smoke, cwd=tmp_path)
    written = tmp_path / "resume.toml"
    written.write_text(dump_toml(sweep.to_toml_dict()))
    assert load_sweep(written, cwd=tmp_path / "elsewhere") == sweep


def test_dump_toml_writes_strings_tomllib_reads_back(tmp_path: Path) -> None:
    odd = ['quote " back \\ slash', "tab\tnew\nline", "del\x7f", "\u00e9t\u00e9 \U0001f600", "a.b"]
    doc = {"name": "x", "base": {s: s for s in odd}, "space": {"k": {"when": {"a.b": odd}}}}
    path = tmp_path / "odd.toml"
    path.write_text(dump_toml(doc), encoding="utf-8")
    assert read_toml(path) == doc


def test_toml_syntax_error_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[budget\nnum_samples = 3\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML") as e:
        load_sweep(bad)
    assert "\n" not in str(e.value)


def _without(section: str, field: str) -> dict[str, Any]:
    d = doc()
    del d[section][field]
    return d


BAD: list[tuple[dict[str, Any], list[str], str]] = [
    (doc(scheduler={"name": "hyperband"}), [],
     r"\[scheduler\] name: unknown value 'hyperband'; valid choices: asha, none"),
    (doc(space={"prune.rat": [0.1]}), [], r'\[space\] "prune.rat": unknown key .*; valid keys: data.name'),
    (doc(space={"prune.rate": {"type": "float", "low": 0.7, "high": 0.6}}), [],
     r'\[space\] "prune.rate": low 0.7 must be below high 0.6'),
    (doc(space={"prune.rate": {"type": "float", "low": 0.1, "high": 1.5}}), [],
     r'\[space\] "prune.rate": float range exceeds the key\'s valid range'),
    (doc(space={"prune.scorer": ["magnitude", "magnitud"]}), [], r"\"prune.scorer\": choice 'magnitud' is invalid"),
    (doc(space={"prune.rate": {"type": "float", "low": 0.1}}), [], r'"prune.rate": high: expected a finite number'),
    (doc(space={"prune.rate": {"type": "uniform"}}), [], r"type: unknown value 'uniform'; valid choices: float, int"),
    (doc(space={"prune.rate": {"low": 0.1, "high": 0.2}}), [], r'"prune.rate": missing type; valid choices'),
    (doc(space={"prune.rate": 0.3}), [], r'"prune.rate": expected \{type = ...\} or a list of choices'),
    (doc(space={"prune.rate": {"type": "float", "low": 0.1, "high": 0.2, "lg": True}}), [],
     r"unknown field 'lg' for type float; valid fields: type, low, high, log, step, when"),
    (doc(space={"train.epochs": {"type": "float", "low": 1, "high": 3}}), [], r"a float range needs a float key"),
    (doc(space={"train.lr": {"type": "float", "low": 0, "high": 0.1, "log": True}}), [], r"log range needs low > 0"),
    (doc(space={"prune.rewind_iter": {"type": "int", "low": 0, "high": 35, "step": 10}}), [],
     r"not a multiple of step 10"),
    (doc(space={"prune.rewind_iter": {"type": "int", "low": 0, "high": 30, "when": {"prune.metod": "imp"}}}), [],
     r'"prune.rewind_iter": when "prune.metod": unknown key'),
    (doc(space={"prune.rewind_iter": {"type": "int", "low": 0, "high": 30, "when": {"prune.method": "imb"}}}), [],
     r"when \"prune.method\": value 'imb' is invalid"),
    (doc(space={"prune.rewind_iter": {"type": "int", "low": 0, "high": 30, "when": {"prune.scorer": "snip"}},
                "prune.scorer": ["snip", "magnitude"]}), [], r'when "prune.scorer": must be a key fixed in \[base\]'),
    (doc(space={"prune.method": ["imp"], "prune.rewind_iter": {"type": "int", "low": 0, "high": 30,
                                                                "when": {"prune.method": "init"}}}), [],
     r"value 'init' is not among its choices"),
    (doc(space={"prune.target_density": {"type": "float", "low": 0.1, "high": 0.3}}), [],
     r'"prune.target_density": accuracy_at_density fixes it'),
    (doc(foo={}), [], r'unknown section "foo"; valid sections: name, smoke, base'),
    (doc(budget={"num_sample": 3}), [], r'\[budget\] unknown field "num_sample" \(did you mean .num_samples.\?\); '
                                        r"valid fields: num_samples, max_concurrent, time_limit_s"),
    (doc(budget=5), [], r"\[budget\] must be a table"),
    ({"objective": {"target_density": 0.1}}, [], r"name: missing"),
    (doc(name=5), [], r"name: cannot read 5 as text"),
    (doc(name="a b/c"), [], r"name: 'a b/c' must be 1-128 letters, digits"),
    (_without("objective", "target_density"), [], r"\[objective\] target_density: accuracy_at_density needs"),
    (doc(objective={"name": "pareto"}, search={"sampler": "gp"}), [],
     r"\[search\] sampler: unknown value 'gp' for objective pareto; valid choices: tpe, nsga2, random"),
    (doc(search={"sampler": "nsga2"}), [], r"sampler: unknown value 'nsga2' for one objective"),
    (doc(search={"sampler": "cmaes"}), [], r"sampler: unknown value 'cmaes'; valid choices: tpe, random, gp, nsga2"),
    (doc(budget={"num_samples": 0}), [], r"\[budget\] num_samples: 0 must be above 0"),
    (doc(budget={"max_concurrent": -1}), [], r"\[budget\] max_concurrent: -1 must be above 0"),
    (doc(budget={"time_limit_s": -5}), [], r"\[budget\] time_limit_s: -5.0 must be at least 0"),
    (doc(resources={"cpu": 0}), [], r"\[resources\] cpu: 0.0 must be above 0"),
    (doc(resources={"gpu": -0.5}), [], r"\[resources\] gpu: -0.5 must be at least 0"),
    (doc(resources={"gpu": 1.5}), [], r"\[resources\] gpu: 1.5 must be a whole number"),
    (doc(scheduler={"reduction_factor": 1}), [], r"reduction_factor: 1.0 must be above 1"),
    (doc(scheduler={"grace_period": 10, "max_t": 5}), [], r"grace_period 10 exceeds max_t 5"),
    (doc(objective={"target_density": 1.5}), [], r"target_density: 1.5 must be above 0.0 and at most 1.0"),
    (doc(base={"prune": {"rate": 1.5}}), [], r"\[base\] prune.rate: 1.5 is outside"),
    (doc(base={"prune.target_density": 0.3}), [], r"prune.target_density 0.3 disagrees with \[objective\]"),
    (doc(storage={"tracking_uri": "mlruns"}), [], r"\[storage\] tracking_uri: 'mlruns' is not a URI"),
    (doc(), ["budget.num_samples=many"], r"\[budget\] num_samples: cannot read 'many' as an integer"),
    (doc(), ["prune.rat=0.3"], r"--set: unknown key \"prune.rat\" \(did you mean 'prune.rate'\?\); valid keys"),
    (doc(), ["budget"], r"--set: expected key=value, got 'budget'"),
    (doc(), ["prune.rate=2"], r"\[base\] prune.rate: 2.0 is outside"),
    (doc(), ["base.train.lr=nan"], r"\[base\] train.lr: nan is not a finite number"),
    (doc(), ["resources.cpu=inf"], r"\[resources\] cpu: cannot read 'inf' as a finite number"),
    (doc(), ["scheduler.name=asha\nx"], r"--set 'scheduler.name': control character '\\n'"),
    (doc(storage={"ray_storage": "~\0x"}), [], r"\[storage\] ray_storage: .* contains a NUL character"),
]


@pytest.mark.parametrize(("bad", "sets", "match"), BAD, ids=[m[:40] for _, _, m in BAD])
def test_every_mistake_is_one_line_naming_the_entry(bad: dict[str, Any], sets: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=rf"^sweep: .*{match}") as e:
        sweep_from_dict(bad, sets)
    assert "\n" not in str(e.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text('name = "x"\n[scheduler]\nname = "hyperband"\n')
    with pytest.raises(ConfigError, match=r"^sweep file .*x\.toml: \[scheduler\] name: unknown value 'hyperband'"):
        load_sweep(path)


PLAUSIBLE = st.sampled_from(["", "0", "1", "0.3", "4", "-1", "none", "true", "imp", "init", "pareto", "random",
                             "1e-3", "8,4", "runs", "http://h:5000"])
JUNK = st.one_of(PLAUSIBLE, PLAUSIBLE.map(lambda s: float(s) if s.replace(".", "").isdigit() else s),
                 st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(),
                 st.text(max_size=8), st.lists(st.integers(-3, 3), max_size=3),
                 st.dictionaries(st.text(max_size=4), st.integers(-3, 3), max_size=2))
ENTRY = st.sampled_from([("name",), ("smoke",), ("base", "prune.rate"), ("base", "model"),
                         ("base", "model.widths"), ("space", "prune.rate"), ("space", "prune.method"),
                         ("space", "prune.rewind_iter", "when"), ("space", "prune.iterations", "low"),
                         ("objective", "name"), ("objective", "target_density"), ("search", "seed"),
                         ("scheduler", "grace_period"), ("scheduler", "max_t"), ("budget", "num_samples"),
                         ("resources", "gpu"), ("storage", "root"), ("storage", "tracking_uri"),
                         ("budget",), ("space",), ("junk",)])
SET_KEYS = st.sampled_from(["prune.rate", "prune.method", "base.train.epochs", "model.widths",
                                     "budget.num_samples", "search.sampler", "objective.target_density",
                            "resources.gpu", "scheduler.max_t", "name", "smoke", "storage.root"])
SET_KEY = st.one_of(SET_KEYS, SET_KEYS, SET_KEYS, st.text(max_size=6))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.lists(st.tuples(ENTRY, JUNK), max_size=3),
       sets=st.lists(st.tuples(SET_KEY, st.one_of(PLAUSIBLE, st.text(max_size=8))), max_size=2))
def test_junk_either_loads_or_raises_one_line_config_error(
        changes: list[tuple[tuple[str, ...], Any]], sets: list[tuple[str, str]]) -> None:
    d = doc()
    for path, value in changes:
        target = d
        for part in path[:-1]:
            target = target.setdefault(part, {}) if isinstance(target.get(part, {}), dict) else {}
        target[path[-1]] = value
    try:
        sweep_from_dict(d, [f"{k}={v}" for k, v in sets])
    except ConfigError as e:
        assert "\n" not in str(e) and str(e).startswith("sweep: ")


def test_the_stage_store_lives_under_the_root_unless_told_otherwise(tmp_path: Path) -> None:
    d = doc(storage={"root": str(tmp_path / "runs")})
    s = sweep_from_dict(d, cwd=tmp_path)
    assert s.stages == str(tmp_path / "runs" / "stages") and param_space(s)[STAGE_STORE] == s.stages
    assert sweep_from_dict(d, ["storage.stages=shared/st"], cwd=tmp_path).stages == str(tmp_path / "shared" / "st")
    off = sweep_from_dict(d, ["storage.stages=off"], cwd=tmp_path)
    assert off.stages == "off" and STAGE_STORE not in param_space(off)
    assert sweep_from_dict(off.to_toml_dict(), cwd=tmp_path).stages == "off"  # resume keeps it
    with pytest.raises(ConfigError, match=r"\[storage\] stages: 's3://b/st' is a URI; the stage store needs a folder"):
        sweep_from_dict(d, ["storage.stages=s3://b/st"], cwd=tmp_path)
