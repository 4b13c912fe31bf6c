"""The layout holds: no import cycle anywhere, trainables' floors only import down, no module reaches into
another's private names, every module stays small, and the registries are what the config accepts.

The import graph is read from the source with `ast`, so it sees what the interpreter may import later too:
imports inside functions and under `if TYPE_CHECKING:`. A node is a module of search/, trainables/ or
benchmarks/ (a package is its `__init__`); an edge goes to the module an import names: `from pkg import
name` is an edge to `pkg.name` when that is a module, else to `pkg`. Importing a submodule runs its parent
packages' `__init__` first, but that is not counted as importing them: a package's `__init__` may import
its own submodules (trainables/__init__.py loads every registry) without making a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import trainables
from trainables import config

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("search", "trainables", "benchmarks")
MAX_LINES = 300  # "about 300": a module longer than this is two concepts

# trainables' floors, lowest first: a module imports only modules of its own floor or lower (DESIGN.md 3)
FLOORS = [
    ("trainables.config", "trainables.typed", "trainables.paths", "trainables.seeds",
     "trainables.stats", "trainables.sections"),
    ("trainables.models",),
    ("trainables.tasks",),
    ("trainables.pruning",),
    ("trainables.training",),
    ("trainables.io",),
    ("trainables.lottery", "trainables.staged"),
    ("trainables.trial", "trainables.trainable", "trainables"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources(packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    return {module_name(p): p for pkg in packages for p in sorted((ROOT / pkg).rglob("*.py"))}


MODULES = sources()


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (relative imports resolved against `module`)."""
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports(module: str) -> Iterator[tuple[str, int, ast.AST]]:
    """(imported internal module, line, node) for every import in `module`, wherever it sits."""
    path = MODULES[module]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    yield alias.name, node.lineno, node
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, path, node)
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in MODULES:
                    yield target, node.lineno, node
                elif base in MODULES:
                    yield base, node.lineno, node


GRAPH = {m: sorted({t for t, _, _ in imports(m) if t != m}) for m in MODULES}


def cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """One cycle (as a path a -> ... -> a) per strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm; the graph is small enough for recursion
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_path_through(sorted(c), graph) for c in components]


def _path_through(component: list[str], graph: dict[str, list[str]]) -> list[str]:
    """A cycle inside the component, from its first module back to it (breadth-first, so a short one)."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in graph.get(v, []):
            if w == start:
                return [*paths[v], start]
            if w in members and w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    return component


def test_the_cycle_finder_finds_and_names_a_cycle() -> None:
    graph = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": []}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": ["b"], "b": [], "c": ["a"]}) == []


def test_the_graph_sees_imports_in_functions_and_under_type_checking() -> None:
    assert "search.tune.runner" in GRAPH["search.cli.sweep"]  # imported inside sweep_command
    assert "trainables.config" in GRAPH["trainables.tasks.base"]
    assert {"trainables.models.registry", "trainables.tasks.registry"} <= set(GRAPH["trainables"])


def test_no_import_cycle_anywhere() -> None:
    found = [" -> ".join(c) for c in cycles(GRAPH)]
    assert not found, "import cycles:\n" + "\n".join(found)


def floor_of(module: str) -> int:
    for i, floor in enumerate(FLOORS):
        if any(module == p or module.startswith(f"{p}.") for p in floor if p != "trainables") or module in floor:
            return i
    raise AssertionError(f"{module} sits on no floor of trainables: add it to FLOORS")


def test_trainables_imports_only_go_down_its_floors() -> None:
    up = [f"{m} (floor {floor_of(m)}) imports {t} (floor {floor_of(t)})"
          for m in MODULES if m.split(".")[0] == "trainables"
          for t in GRAPH[m] if t.split(".")[0] == "trainables" and floor_of(t) > floor_of(m)]
    assert not up, "imports going up a floor:\n" + "\n".join(up)


def _internal_module(name: str) -> bool:
    return name in MODULES


def test_nothing_imports_or_reaches_into_another_modules_private_names() -> None:
    """`from x import _name` and `x._name` (x a module of ours bound by an import), across all our code
    and the tests; dunders are not private."""
    found = []
    for path in [*MODULES.values(), *sorted((ROOT / "tests").rglob("*.py"))]:
        module = module_name(path)
        tree = ast.parse(path.read_text())
        aliases: dict[str, str] = {}  # local name -> our module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if _internal_module(alias.name):
                        aliases[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = _absolute(module, path, node) if node.level else node.module
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    if _internal_module(full):
                        aliases[alias.asname or alias.name] = full
                    elif _internal_module(base) and _private(alias.name) and base != module:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {base} import {alias.name}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr)
                    and node.value.id in aliases and aliases[node.value.id] != module):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {aliases[node.value.id]}.{node.attr}")
    assert not found, "private names used across modules:\n" + "\n".join(found)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_every_module_reads_on_a_few_screens() -> None:
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_every_module_says_what_it_owns() -> None:
    silent = [m for m, p in MODULES.items() if not ast.get_docstring(ast.parse(p.read_text()))]
    assert not silent, f"modules without a docstring: {silent}"


# -- registries are the config's valid names ----------------------------------------------------------------

def _registries() -> dict[str, list[str]]:
    """config key -> the names its registries hold, in registry order (patterns such as gym:<EnvId> apart)."""
    from trainables.models import registry as models
    from trainables.pruning import controls, scorers
    from trainables.tasks.classification import datasets
    from trainables.tasks.lm import corpus
    from trainables.tasks.rl import task as rl
    from trainables.training import device, optim

    return {"data.name": [*datasets.SOURCES, *corpus.CORPORA], "model.name": list(models.BUILDERS),
            "prune.scorer": list(scorers.SCORERS), "prune.controls": list(controls.CONTROLS),
            "train.optimizer": list(optim.OPTIMIZERS), "train.lr_schedule": list(optim.SCHEDULES),
            "train.device": list(device.DEVICES), "data.tokens": list(corpus.TOKENS),
            "rl.algorithm": list(rl.ALGORITHMS)}


PATTERNS = {"data.name": ["gym:<EnvId>"], "model.name": ["tv:<torchvision name>"]}


def _companions(key: str, name: str) -> dict[str, str]:
    """Keys a value needs beside it to make a valid ticket: a corpus and a language model go together."""
    from trainables.models import lm
    from trainables.tasks.lm import corpus

    if key == "data.name" and name in corpus.CORPORA:
        return {"model.name": next(iter(lm.BUILDERS))}
    if key == "model.name" and name in lm.BUILDERS:
        return {"data.name": next(iter(corpus.CORPORA))}
    return {}


@pytest.mark.parametrize(("key", "names"), sorted(_registries().items()))
def test_each_registry_is_exactly_what_the_config_accepts(key: str, names: list[str]) -> None:
    assert list(config.choices(key)) == [*names, *PATTERNS.get(key, [])]
    for name in names:
        ticket = config.Ticket.from_flat({key: name, **_companions(key, name)})
        assert ticket.flat()[key] in (name, (name,))  # prune.controls is a list: one control
    with pytest.raises(config.ConfigError, match=rf"{key}: unknown value 'nope'; valid choices: "):
        config.Ticket.from_flat({key: "nope"})


def test_the_task_families_own_every_dataset() -> None:
    from trainables.tasks.registry import FAMILIES

    names = [n for family in FAMILIES.values() for n in family.names]
    assert names == _registries()["data.name"]
    assert all(any(f.owns(n) for f in FAMILIES.values()) for n in config.choices("data.name"))


def test_the_classification_datasets_are_the_family_names() -> None:
    from trainables.tasks.classification import datasets
    from trainables.tasks.classification.family import FAMILY

    assert FAMILY.names == tuple(datasets.SOURCES)
    assert set(datasets.VISION) <= set(datasets.SOURCES)


def test_importing_the_package_loads_every_registry() -> None:
    assert {r.__name__ for r in trainables.REGISTRIES} == {
        "trainables.models.registry", "trainables.tasks.registry", "trainables.pruning.scorers",
        "trainables.pruning.controls", "trainables.training.optim", "trainables.training.device"}


def test_objectives_name_only_registered_samplers() -> None:
    from search.sweep import objectives
    from search.tune.algorithms import SAMPLERS

    for name, objective in objectives.OBJECTIVES.items():
        assert set(objective.samplers) <= set(SAMPLERS), name
        assert len(objective.metrics) == len(objective.modes), name
    assert objectives.DEFAULT in objectives.OBJECTIVES
